//! Entries to records: skip what the log already has, detect gaps, filter,
//! rate-limit, and append in batches with each entry's cursor.
//!
//! Rate-limited and excluded entries are not appended, so they carry no
//! cursor into the log: an excluded or dropped entry newer than the last
//! appended one is read (and judged) again after a restart; one older than
//! an appended entry is gone for good. A rate-limited drop is therefore a
//! deliberate exception to "exactly once", and it is counted.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cursor::{Cursor, H_CURSOR};
use super::export::{Entry, Wanted};
use super::{JournalConfig, JournalStats};
use crate::log::{now_ms, AppendError, Log, Partition, Record};

pub const H_REALTIME: &str = "journal.realtime_us";
pub const H_MONOTONIC: &str = "journal.monotonic_us";
pub const H_TRUNCATED: &str = "journal.truncated";
pub const H_GAP: &str = "journal.gap";

/// Payload bytes per append, at most (well under the log's limit).
const APPEND_BYTES: usize = 1 << 20;
/// How long an append refused for a full topic waits before it tries again.
const FULL_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Fatal(String),
    /// An append was refused after it was queued (the topic is full under
    /// `reject_new`): read again from the newest durable entry.
    #[error("{0}")]
    Rewind(String),
}

/// Which fields the parser keeps for `config`.
pub fn wanted(config: &JournalConfig) -> Wanted {
    let mut names: HashSet<String> = super::follow::output_fields(config).into_iter().collect();
    for special in ["__CURSOR", "__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP"] {
        names.insert(special.into());
    }
    Box::new(move |name| names.contains(name))
}

pub struct Pipeline {
    topic: String,
    log: Arc<Log>,
    stats: Arc<JournalStats>,
    /// Header fields kept, in config order.
    fields: Vec<String>,
    exclude_units: HashSet<String>,
    bucket: Option<TokenBucket>,
    /// The newest entry handed to the log (queued or durable).
    last: Option<Cursor>,
    /// The next entry is the first journalctl printed since its start.
    first: bool,
    /// A gap to record in the next appended record.
    gap: Option<String>,
    /// The newest entry known durable.
    durable: Option<Cursor>,
    fatal: Option<String>,
}

impl Pipeline {
    pub fn new(
        config: &JournalConfig,
        log: Arc<Log>,
        stats: Arc<JournalStats>,
        resume: Option<Cursor>,
    ) -> Pipeline {
        let bucket = (config.rate_limit_per_s > 0)
            .then(|| TokenBucket::new(config.rate_limit_per_s, config.rate_limit_burst));
        Pipeline {
            topic: config.topic.clone(),
            log,
            stats,
            fields: config.fields.clone(),
            exclude_units: config.exclude_units.iter().cloned().collect(),
            bucket,
            last: resume.clone(),
            first: true,
            gap: None,
            durable: resume,
            fatal: None,
        }
    }

    pub fn resume_cursor(&self) -> Option<&Cursor> {
        self.last.as_ref()
    }

    /// journalctl was started again (at [`Pipeline::resume_cursor`]).
    pub fn restarted(&mut self) {
        self.first = true;
    }

    /// Why the source cannot go on (the log refuses writes), if so.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.clone()
    }

    pub async fn handle(&mut self, entries: Vec<Entry>) -> Result<(), PipelineError> {
        let read = entries.len() as u64;
        self.stats.entries_read.fetch_add(read, Ordering::Relaxed);
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for entry in entries {
            let Some(record) = self.admit(entry) else {
                continue;
            };
            batch_bytes += record.payload_len();
            batch.push(record);
            if batch_bytes >= APPEND_BYTES {
                self.append(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.append(batch).await?;
        }
        Ok(())
    }

    /// The entry's record, unless it is skipped (already in the log,
    /// excluded, rate-limited or without a cursor).
    fn admit(&mut self, entry: Entry) -> Option<Record> {
        let cursor = entry.text("__CURSOR").and_then(Cursor::parse)?;
        let first = std::mem::replace(&mut self.first, false);
        if let Some(last) = self.last.take() {
            let covered = last.covers(&cursor);
            if !covered && first {
                self.note_gap(&last, &cursor);
            }
            self.last = Some(last);
            if covered {
                self.stats
                    .duplicates_skipped
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let unit = entry.text("_SYSTEMD_UNIT").unwrap_or_default();
        if self.exclude_units.contains(unit) {
            self.stats.excluded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(bucket) = &mut self.bucket {
            if !bucket.take(Instant::now()) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let record = self.record_of(entry, &cursor);
        self.last = Some(cursor);
        Some(record)
    }

    /// journalctl was started at the stored cursor but did not print that
    /// entry first: the journal no longer has it.
    fn note_gap(&mut self, last: &Cursor, first: &Cursor) {
        let lost = gap_size(last, first);
        if lost == Some(0) {
            return; // the stored entry went, but nothing after it did
        }
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .gap_entries
            .fetch_add(lost.unwrap_or(0), Ordering::Relaxed);
        let size = lost.map_or_else(
            || "an unknown number of entries (another journal file sequence)".to_string(),
            |n| format!("{n} entries"),
        );
        tracing::warn!(stored = %last.text, resumed = %first.text, "journal: the entry at the stored cursor is gone (vacuumed or rotated): resuming at the oldest entry still there, {size} lost");
        self.gap = Some(format!("after {}: {size} lost", last.text));
    }

    fn record_of(&mut self, mut entry: Entry, cursor: &Cursor) -> Record {
        let number = |name: &str| entry.text(name).and_then(|t| t.parse::<i64>().ok());
        let realtime_us = number("__REALTIME_TIMESTAMP");
        let monotonic_us = number("__MONOTONIC_TIMESTAMP");
        let key = entry
            .get("_SYSTEMD_UNIT")
            .or_else(|| entry.get("SYSLOG_IDENTIFIER"))
            .map(Bytes::copy_from_slice);
        let mut headers = vec![(H_CURSOR.to_string(), Bytes::from(cursor.text.clone()))];
        if let Some(us) = realtime_us {
            headers.push((H_REALTIME.into(), Bytes::from(us.to_string())));
        }
        if let Some(us) = monotonic_us {
            headers.push((H_MONOTONIC.into(), Bytes::from(us.to_string())));
        }
        if !entry.truncated.is_empty() {
            let n = entry.truncated.len() as u64;
            self.stats.truncated_fields.fetch_add(n, Ordering::Relaxed);
            headers.push((H_TRUNCATED.into(), Bytes::from(entry.truncated.join(","))));
        }
        if let Some(gap) = self.gap.take() {
            headers.push((H_GAP.into(), Bytes::from(gap)));
        }
        let mut message = Vec::new();
        for (name, value) in std::mem::take(&mut entry.fields) {
            if name == "MESSAGE" && message.is_empty() {
                message = value;
            } else if self.fields.contains(&name) {
                headers.push((name, Bytes::from(value)));
            }
        }
        Record {
            timestamp_ms: realtime_us.map_or_else(now_ms, |us| us / 1000),
            key,
            value: Bytes::from(message),
            headers,
        }
    }

    async fn append(&mut self, mut records: Vec<Record>) -> Result<(), PipelineError> {
        let count = records.len() as u64;
        let bytes: u64 = records.iter().map(|r| r.payload_len() as u64).sum();
        let newest = records.last().and_then(super::cursor::record_cursor);
        let ticket = loop {
            match self.log.try_append(&self.topic, Partition(0), records) {
                Ok(ticket) => break ticket,
                Err((AppendError::Overloaded, back)) => {
                    self.stats.append_waits.fetch_add(1, Ordering::Relaxed);
                    records = back;
                    self.log.capacity().await;
                }
                Err((AppendError::QuotaExceeded { .. }, back)) => {
                    self.stats.append_waits.fetch_add(1, Ordering::Relaxed);
                    records = back;
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err((e, _)) => {
                    self.stats.append_failures.fetch_add(1, Ordering::Relaxed);
                    let why = format!("the log refused an append: {e}");
                    self.fatal = Some(why.clone());
                    return Err(PipelineError::Fatal(why));
                }
            }
        };
        self.settle(ticket.await, newest, count, bytes)
    }

    /// Counts a resolved append; on a refusal the entries since the newest
    /// durable one are read again (journalctl restarts there).
    fn settle(
        &mut self,
        result: crate::log::ticket::AppendResult,
        newest: Option<Cursor>,
        count: u64,
        bytes: u64,
    ) -> Result<(), PipelineError> {
        match result {
            Ok(_) => {
                self.stats
                    .entries_appended
                    .fetch_add(count, Ordering::Relaxed);
                self.stats
                    .bytes_appended
                    .fetch_add(bytes, Ordering::Relaxed);
                let cursor = newest.as_ref().map(|c| c.text.clone());
                self.durable = newest.or(self.durable.take());
                self.stats.update(|s| s.durable_cursor = cursor);
                Ok(())
            }
            Err(AppendError::QuotaExceeded { topic, .. }) => {
                self.stats.append_waits.fetch_add(1, Ordering::Relaxed);
                self.last = self.durable.clone();
                Err(PipelineError::Rewind(format!(
                    "topic {topic:?} is full (reject_new): waiting, then reading again from the newest durable entry"
                )))
            }
            Err(e) => {
                self.stats.append_failures.fetch_add(1, Ordering::Relaxed);
                let why = format!("an append failed: {e}");
                self.fatal = Some(why.clone());
                Err(PipelineError::Fatal(why))
            }
        }
    }
}

/// Entries lost between the stored entry and the first one journalctl gave
/// instead: known only within one seqnum id (`first` is newer: not covered).
pub fn gap_size(last: &Cursor, first: &Cursor) -> Option<u64> {
    (last.seqnum_id == first.seqnum_id).then(|| first.seqnum.saturating_sub(last.seqnum + 1))
}

/// `rate` tokens a second, at most `burst` saved up.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_sized_within_one_seqnum_id_only() {
        let c = |t: &str| Cursor::parse(t).unwrap();
        assert_eq!(gap_size(&c("s=a;i=10"), &c("s=a;i=15")), Some(4));
        assert_eq!(gap_size(&c("s=a;i=10"), &c("s=a;i=11")), Some(0));
        assert_eq!(gap_size(&c("s=a;i=10"), &c("s=b;i=1")), None);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3);
    }
}
