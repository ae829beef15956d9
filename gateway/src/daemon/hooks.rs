//! Fault injection for the tests and the fault campaign, only in builds
//! with the `test-hooks` feature: `TIDEWELL_FAULT_EIO=write:N|fsync:N`
//! gives the log a disk whose segment writes or fsyncs fail from the Nth on.

use std::sync::Arc;

use crate::log::faulty::{FaultPlan, FaultyStorage};
use crate::log::{OsStorage, Storage};

/// The faulty disk `TIDEWELL_FAULT_EIO` asks for, if it asks.
pub fn faulty_storage() -> Result<Option<Arc<dyn Storage>>, String> {
    let Ok(spec) = std::env::var("TIDEWELL_FAULT_EIO") else {
        return Ok(None);
    };
    let plan = FaultPlan::parse(&spec)
        .ok_or_else(|| format!("TIDEWELL_FAULT_EIO={spec:?}: expected write:N or fsync:N"))?;
    tracing::warn!(
        "fault injection on: segment {:?}s fail with EIO from the {}th",
        plan.op,
        plan.from
    );
    Ok(Some(Arc::new(FaultyStorage {
        inner: Arc::new(OsStorage),
        plan: Arc::new(plan),
    })))
}
