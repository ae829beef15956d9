//! Journal ingest: the systemd journal, every entry exactly once.
//!
//! A `journalctl -o export --follow` child process reads the journal (no C
//! dependency on libsystemd, and the export format carries binary fields
//! exactly); its output is parsed with a bounded parser ([`export`]) and
//! each entry becomes one record of the journal topic's single partition,
//! with the entry's cursor in a `journal.cursor` header of the same append.
//! At start the newest cursor found in the log is the resume point
//! ([`cursor::resume_point`]): a kill or power cut before an append is
//! durable re-reads the entry, one after it never repeats it.
//!
//! journalctl is started with `--cursor=<stored>` (inclusive) rather than
//! `--after-cursor`: systemd before 255 skips the first entry after seeking
//! whether or not it is the cursor's entry (systemd#30288, fixed by
//! systemd#30336), which loses the first matching entry when filters are on
//! or the first entry of a new boot (systemd#38912). Here the stored entry
//! comes back first and is recognised by its seqnum id and seqnum, and
//! every entry the log already covers is skipped ([`pipeline`]). When the
//! first entry is not the stored one, the journal no longer has it
//! (vacuumed or rotated away): the gap is counted, logged and recorded in a
//! `journal.gap` header of the next record.

pub mod config;
pub mod cursor;
pub mod export;
mod follow;
mod observe;
mod pipeline;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

pub use config::{JournalConfig, StartAt};

use crate::ingest::{Context, Running, Source, Starting};

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub entries_read: AtomicU64,
    pub entries_appended: AtomicU64,
    /// Bytes of the records counted in `entries_appended`.
    pub bytes_appended: AtomicU64,
    /// Entries read again that the log already holds (one per resume).
    pub duplicates_skipped: AtomicU64,
    pub excluded: AtomicU64,
    pub rate_limited: AtomicU64,
    pub truncated_fields: AtomicU64,
    pub gaps: AtomicU64,
    /// Entries known lost in gaps (a gap across journals is counted in
    /// `gaps` but its size is unknown).
    pub gap_entries: AtomicU64,
    pub journalctl_restarts: AtomicU64,
    /// Appends that waited for room (the writer behind, or the topic full
    /// under `reject_new`).
    pub append_waits: AtomicU64,
    pub append_failures: AtomicU64,
    pub state: Mutex<State>,
}

/// What `/status` says of the reader.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub phase: &'static str,
    pub last_error: Option<String>,
    /// The cursor of the newest durable entry.
    pub durable_cursor: Option<String>,
}

impl JournalStats {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn snapshot(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct JournalSource(JournalConfig);

impl JournalConfig {
    pub fn source(&self) -> Option<Box<dyn Source>> {
        self.enabled
            .then(|| Box::new(JournalSource(self.clone())) as Box<dyn Source>)
    }
}

/// The running reader; dropping it kills journalctl.
struct JournalHandle {
    _task: crate::ingest::serial::AbortOnDrop,
}

impl Running for JournalHandle {}

impl Source for JournalSource {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let stats = Arc::new(JournalStats::default());
            ctx.registry.register(stats.clone());
            let resume = cursor::resume_point(&ctx.log, &self.0.topic);
            match &resume {
                Some(c) => {
                    tracing::info!(cursor = %c.text, "journal: resuming at the newest cursor in the log");
                }
                None => {
                    tracing::info!(start_at = ?self.0.start_at, "journal: no cursor in the log yet");
                }
            }
            stats.update(|s| s.durable_cursor = resume.as_ref().map(|c| c.text.clone()));
            let task = tokio::spawn(follow::run(self.0, ctx.log, stats, resume));
            Ok(Box::new(JournalHandle {
                _task: crate::ingest::serial::AbortOnDrop(vec![task.abort_handle()]),
            }) as Box<dyn Running>)
        })
    }
}

/// journalctl's arguments for `config` reading `directory` from its start
/// (`tidewell bench journal` times exactly these).
pub fn follow_args(config: &JournalConfig, directory: &std::path::Path) -> Vec<String> {
    let mut config = config.clone();
    config.directory = Some(directory.to_path_buf());
    follow::args(&config, None)
}
