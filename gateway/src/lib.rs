//! Tidewell: an edge ingestion gateway.
//!
//! Data flows one way through these stages:
//!
//! - [`log`]: the power-loss-safe segment log every ingest path appends to
//!   and the replicator reads from. It depends on nothing above it.
//! - [`mqtt`]: the MQTT 3.1.1/5 listener; a PUBACK means the record is on disk.
//! - [`config`]: the TOML configuration and the embedded defaults.
//! - [`cli`]: the `tidewell` command line (`run`, `log verify`, `log dump`, `bench`).
//! - [`bench`]: benchmarks that compare Tidewell with its peers side by side.

pub mod bench;
pub mod cli;
pub mod config;
pub mod log;
pub mod mqtt;
pub mod serial;
