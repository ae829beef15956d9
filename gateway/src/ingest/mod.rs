//! Sources: each turns something outside the gateway (MQTT clients, serial
//! lines, ...) into records in the log. One folder per source.
//!
//! # What a source gets
//!
//! - The log's append handle, an `Arc<`[`Log`](crate::log::Log)`>`. [`Log::append`](crate::log::Log::append) queues
//!   records and returns an [`AppendTicket`](crate::log::AppendTicket) at once; the ticket resolves
//!   once the records are durable under the topic's fsync policy. When the
//!   writer is behind, [`Log::try_append`](crate::log::Log::try_append) hands the records back with
//!   `Overloaded`, and [`Log::capacity`](crate::log::Log::capacity) resolves once there is room again.
//!   [`Log::read`](crate::log::Log::read) and
//!   [`Log::offsets`](crate::log::Log::offsets) let a source rebuild its duplicate
//!   detection from the log's tail at start (serial ingest does).
//! - A tokio runtime to run on; it is started with the gateway and the
//!   source's tasks end with it.
//!
//! # What a source promises
//!
//! - Acknowledge (a PUBACK, a device Ack) only after its ticket resolved
//!   `Ok`; on an error refuse with a reason and count it, never drop silently.
//! - Bounded memory: in-flight appends per peer are capped, and every cost a
//!   peer can multiply (connections, password checks, buffers) has a bound.
//! - Never block the runtime on the disk: await tickets, do not `wait()`.
//! - Stop intake when its handle is dropped; what is already queued is
//!   written and synced by the log as it closes.
//! - Count what it does in a stats struct it hands back, which `/metrics`
//!   and `/status` render.

pub mod mqtt;
pub mod serial;
