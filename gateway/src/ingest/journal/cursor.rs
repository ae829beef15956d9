//! Journal cursors, and the resume point found in the log.
//!
//! A cursor reads `s=<seqnum_id>;i=<seqnum hex>;b=<boot_id>;m=<monotonic
//! hex>;t=<realtime hex>;x=<xor hash hex>`. Within one sequence-number id
//! (one journald instance's files, across rotation and reboots) the seqnum
//! orders entries strictly, so identity and order are judged by `s` and
//! `i` alone: never by the realtime `t`, which a clock that jumped back (no
//! RTC) makes meaningless.

use crate::log::{Log, Offset, Partition, Record};

/// The header each journal record carries its entry's cursor in.
pub const H_CURSOR: &str = "journal.cursor";
/// Records read back, at most, to find the newest one with a cursor.
const RESUME_SCAN_RECORDS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub text: String,
    pub seqnum_id: String,
    pub seqnum: u64,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut seqnum_id = None;
        let mut seqnum = None;
        for part in text.split(';') {
            if let Some(s) = part.strip_prefix("s=") {
                seqnum_id = Some(s.to_string());
            } else if let Some(i) = part.strip_prefix("i=") {
                seqnum = u64::from_str_radix(i, 16).ok();
            }
        }
        Some(Cursor {
            text: text.to_string(),
            seqnum_id: seqnum_id.filter(|s| !s.is_empty())?,
            seqnum: seqnum?,
        })
    }

    /// The same entry (the journal's own test compares these too).
    pub fn same_entry(&self, other: &Cursor) -> bool {
        self.seqnum_id == other.seqnum_id && self.seqnum == other.seqnum
    }

    /// `other` is this entry or an older one of the same journal.
    pub fn covers(&self, other: &Cursor) -> bool {
        self.seqnum_id == other.seqnum_id && other.seqnum <= self.seqnum
    }
}

/// The cursor of the newest record of `topic`'s partition 0 that has one:
/// the resume point. Records without one (another writer) are passed over.
pub fn resume_point(log: &Log, topic: &str) -> Option<Cursor> {
    let (start, end) = log.offsets(topic, Partition(0))?;
    let mut upper = end;
    while upper > start && end.0 - upper.0 < RESUME_SCAN_RECORDS {
        let from = Offset(upper.0.saturating_sub(256).max(start.0));
        if let Some(newest) = newest_cursor(log, topic, from, upper) {
            return Some(newest);
        }
        upper = from;
    }
    None
}

/// The newest cursor among the records in `from..upper`, read whole.
fn newest_cursor(log: &Log, topic: &str, from: Offset, upper: Offset) -> Option<Cursor> {
    let mut next = from;
    let mut newest = None;
    while next < upper {
        let records = match log.read(topic, Partition(0), next, 1 << 20) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(topic, offset = %next, "journal: cannot read the log tail for the resume cursor: {e}");
                return newest;
            }
        };
        let Some(last) = records.last() else { break };
        next = Offset(last.offset.0 + 1);
        let found = records
            .iter()
            .filter(|r| r.offset < upper)
            .filter_map(|r| record_cursor(&r.record))
            .last();
        newest = found.or(newest);
    }
    newest
}

pub fn record_cursor(record: &Record) -> Option<Cursor> {
    let (_, value) = record.headers.iter().find(|(n, _)| n == H_CURSOR)?;
    Cursor::parse(std::str::from_utf8(value).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_identified_by_seqnum_id_and_seqnum_not_time() {
        let a = Cursor::parse("s=abc;i=1f;b=x;m=3e8;t=60a24181e4000;x=98").unwrap();
        let b = Cursor::parse("s=abc;i=1f;b=y;m=0;t=0;x=0").unwrap();
        assert_eq!(a.seqnum, 0x1f);
        assert!(a.same_entry(&b) && a.covers(&b));
        let newer = Cursor::parse("s=abc;i=20").unwrap();
        assert!(!a.covers(&newer) && newer.covers(&a));
        assert!(!Cursor::parse("s=other;i=1").unwrap().covers(&a));
        assert_eq!(Cursor::parse("garbage"), None);
        assert_eq!(Cursor::parse("s=;i=1"), None);
    }
}
