//! Simulators that play devices, for the tests and `tidewell bench serial`
//! (the `sim` feature; the device build leaves them out).

pub mod serial;
