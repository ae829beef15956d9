//! The wall clock as the log sees it, and whether it can be trusted.
//!
//! A Raspberry Pi has no real-time clock: it boots at the time it last
//! saved (or at 1970) and jumps when NTP synchronises. Records stamped
//! before that carry wrong times, and age retention judged by them would
//! delete data the moment the clock jumps forward (or keep data stamped in
//! the future for ever after a jump back). So, with `[log] clock = "ntp"`:
//!
//! - **Marking**: while the kernel reports the clock unsynchronised
//!   (`adjtimex`: `STA_UNSYNC`, as chrony, ntpd and systemd-timesyncd clear
//!   it), every record appended gets the header `tidewell.clock` =
//!   `unsynced`. Consumers (`log dump`, and upstream, where record headers
//!   are forwarded) tell such records by that header: their timestamp is
//!   the gateway's guess, not a time.
//! - **Age retention pauses** while the clock is untrusted (quotas still
//!   apply, so the disk stays bounded).
//! - **Age floors**: the first unsynced append of a run persists the
//!   partition's offset in its checkpoint (`untrusted_from`). When the clock
//!   becomes trusted, that range up to the partition's end gets a floor: the
//!   wall time of that moment. A segment inside such a range ages from the
//!   floor (its own stamps are ignored); one that straddles it ages from the
//!   later of its newest stamp and the floor. Data stamped before the jump is
//!   therefore kept `retention_ms` after the clock was trusted: never
//!   deleted because of the jump, never kept for ever. Floors below the
//!   partition's start are forgotten.
//!
//! `clock = "system"` (the default) trusts the clock always: for machines
//! with an RTC, or without any NTP daemon (whose kernel never reports sync).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The header marking a record stamped while the clock was untrusted.
pub const UNSYNCED_HEADER: &str = "tidewell.clock";
pub const UNSYNCED_VALUE: &[u8] = b"unsynced";

/// When the wall clock counts as right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockTrust {
    /// Always (an RTC, or no NTP daemon at all).
    #[default]
    System,
    /// Once the kernel reports it synchronised by NTP.
    Ntp,
}

/// The seam: the operating system's clock, or a test's.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
    fn trusted(&self) -> bool;
}

pub struct SystemClock(pub ClockTrust);

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        super::now_ms()
    }

    fn trusted(&self) -> bool {
        match self.0 {
            ClockTrust::System => true,
            ClockTrust::Ntp => kernel_synchronized(),
        }
    }
}

/// `adjtimex` read-only: synchronised unless it reports `TIME_ERROR` or
/// `STA_UNSYNC`.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
fn kernel_synchronized() -> bool {
    // SAFETY: a zeroed timex with modes = 0 only reads the kernel's state
    // into the struct we own.
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    state != libc::TIME_ERROR && state >= 0 && status & libc::STA_UNSYNC == 0
}

/// A clock the test sets.
#[derive(Default)]
pub struct TestClock {
    pub now_ms: std::sync::atomic::AtomicI64,
    pub trusted: std::sync::atomic::AtomicBool,
}

impl TestClock {
    pub fn new(now_ms: i64, trusted: bool) -> Arc<TestClock> {
        Arc::new(TestClock {
            now_ms: now_ms.into(),
            trusted: trusted.into(),
        })
    }

    pub fn set(&self, now_ms: i64, trusted: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        self.now_ms.store(now_ms, SeqCst);
        self.trusted.store(trusted, SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn trusted(&self) -> bool {
        self.trusted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Floors remembered per partition at most; older ones merge into the next.
const MAX_FLOORS: usize = 64;

/// Records `[from, to)` as stamped before the clock was trusted at `at_ms`.
pub fn push_floor(floors: &mut Vec<(u64, u64, i64)>, from: u64, to: u64, at_ms: i64) {
    if from < to {
        floors.push((from, to, at_ms));
    }
    if floors.len() > MAX_FLOORS {
        let (f0, _, _) = floors.remove(0);
        floors[0].0 = floors[0].0.min(f0);
    }
}

/// The time a segment `[base, end)` with newest stamp `max_ts` ages from.
pub fn age_from(floors: &[(u64, u64, i64)], base: u64, end: u64, max_ts: i64) -> i64 {
    let mut ts = max_ts;
    for &(from, to, at) in floors {
        if base >= from && end <= to {
            return at;
        }
        if base < to && end > from {
            ts = ts.max(at);
        }
    }
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_inside_a_floor_ages_from_it_and_one_straddling_from_the_later() {
        let floors = vec![(10, 20, 5_000)];
        assert_eq!(
            age_from(&floors, 10, 20, 99_999),
            5_000,
            "its stamps are ignored"
        );
        assert_eq!(age_from(&floors, 15, 30, 100), 5_000);
        assert_eq!(age_from(&floors, 15, 30, 9_000), 9_000);
        assert_eq!(age_from(&floors, 20, 30, 100), 100, "outside");
    }

    #[test]
    fn floors_stay_bounded() {
        let mut floors = Vec::new();
        for i in 0..200 {
            push_floor(&mut floors, i * 10, i * 10 + 5, i as i64);
        }
        assert_eq!(floors.len(), MAX_FLOORS);
        assert_eq!(floors[0].0, 0, "merged into the next, not lost");
    }
}
