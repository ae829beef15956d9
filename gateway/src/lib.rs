//! Tidewell: an edge ingestion gateway.
//!
//! Data flows one way through these stages:
//!
//! - [`ingest`]: the sources, one folder each ([`ingest::mqtt`], the MQTT
//!   3.1.1/5 listener; [`ingest::serial`], serial ports). A source
//!   acknowledges only what the log has made durable.
//! - [`log`]: the power-loss-safe segment log every source appends to and
//!   the replicator reads from. It depends on nothing above it.
//! - [`replicate`]: mirrors every local partition, in order, to a Kafka
//!   cluster (idempotent producer, cursor in the log's checkpoints).
//!
//! Around them: [`config`] (the TOML file, its checks, the embedded
//! defaults), [`observe`] (a registry of every stage's metrics and status,
//! served as `/metrics`, `/healthz`, `/readyz`, `/status`), [`daemon`] (the
//! lifecycle: start, readiness, the systemd watchdog, signals, stop),
//! [`net`] (accepting connections under overload), [`cli`] (the `tidewell`
//! command line, which only parses arguments and calls in) and [`bench`]
//! (benchmarks that compare Tidewell with its peers side by side).

pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod log;
pub mod net;
pub mod observe;
pub mod replicate;
#[cfg(feature = "sim")]
pub mod sim;
