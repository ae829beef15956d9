//! Benchmarks: each measures Tidewell and the peer named in its issue side by
//! side in one run, on this machine, and prints ratios.

pub mod log;
#[cfg(feature = "bench-mqtt")]
pub mod mqtt;
pub mod open;
pub mod replicate;
pub mod serial;
