//! Tidewell: an edge ingestion gateway.
//!
//! Data flows one way through these stages:
//!
//! - [`log`]: the power-loss-safe segment log every ingest path appends to
//!   and the replicator reads from. It depends on nothing above it.
//! - [`mqtt`]: the MQTT 3.1.1/5 listener; a PUBACK means the record is on disk.
//! - [`replicate`]: mirrors every local partition, in order, to a Kafka
//!   cluster (idempotent producer, cursor in the log's checkpoints).
//! - [`config`]: the TOML configuration and the embedded defaults.
//! - [`cli`]: the `tidewell` command line (`run`, `log verify`, `log dump`, `bench`).
//! - [`bench`]: benchmarks that compare Tidewell with its peers side by side.

pub mod bench;
pub mod cli;
pub mod config;
pub mod config_check;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod log;
pub mod mqtt;
pub mod net;
pub mod replicate;
pub mod serial;
pub mod systemd;
