//! The journalctl child: its command line, reading its output, and starting
//! it again with backoff when it exits or cannot be started.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::cursor::Cursor;
use super::export::{Entry, ExportParser};
use super::pipeline::{Pipeline, PipelineError};
use super::{JournalConfig, JournalStats, StartAt};
use crate::log::Log;

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: the next retry starts short.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// Parsed chunks queued between the reader and the appender: the bound on
/// read-ahead (each chunk is what one read of the pipe completed).
const CHUNKS_QUEUED: usize = 4;
const READ_BYTES: usize = 64 << 10;

/// Runs journalctl for as long as the source runs.
pub async fn run(
    config: JournalConfig,
    log: Arc<Log>,
    stats: Arc<JournalStats>,
    resume: Option<Cursor>,
) {
    let mut pipeline = Pipeline::new(&config, log, stats.clone(), resume);
    let mut delay = FIRST_RETRY;
    loop {
        let started = Instant::now();
        let why = match spawn(&config, pipeline.resume_cursor()) {
            Ok(child) => {
                stats.update(|s| s.phase = "following");
                follow(child, &config, &mut pipeline).await
            }
            Err(e) => format!("cannot start {}: {e}", config.journalctl.display()),
        };
        if let Some(fatal) = pipeline.fatal() {
            tracing::error!("journal: stopped: {fatal}");
            stats.update(|s| (s.phase, s.last_error) = ("stopped", Some(fatal)));
            return;
        }
        tracing::warn!("journal: {why}; starting journalctl again in {delay:?}");
        stats.journalctl_restarts.fetch_add(1, Ordering::Relaxed);
        stats.update(|s| (s.phase, s.last_error) = ("restarting", Some(why)));
        if started.elapsed() >= HEALTHY_RUN {
            delay = FIRST_RETRY;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// journalctl's arguments for `config`, resuming at `resume` (inclusive:
/// see the module comment of `journal` for why not `--after-cursor`).
pub fn args(config: &JournalConfig, resume: Option<&Cursor>) -> Vec<String> {
    let mut args: Vec<String> = ["-o", "export", "--follow", "--no-pager", "--quiet"]
        .map(String::from)
        .into();
    if let Some(dir) = &config.directory {
        args.push(format!("--directory={}", dir.display()));
    }
    // journalctl 252's --follow implies --boot (the newest boot) unless
    // --merge is given: resuming at a previous boot's cursor would skip the
    // rest of that boot (its shutdown, everything while the gateway was down).
    args.push(
        if config.current_boot_only {
            "--boot"
        } else {
            "--merge"
        }
        .into(),
    );
    if let Some(p) = config.max_priority {
        args.push(format!("--priority=0..{p}"));
    }
    args.push(format!(
        "--output-fields={}",
        output_fields(config).join(",")
    ));
    match (resume, config.start_at) {
        // --follow alone shows only the last 10 entries from there on
        // (journalctl's implied --lines=10): a restart more than 10 entries
        // behind would skip the rest. --no-tail shows all of them.
        (Some(c), _) => {
            args.push(format!("--cursor={}", c.text));
            args.push("--no-tail".into());
        }
        (None, StartAt::Head) => args.push("--no-tail".into()),
        (None, StartAt::Now) => args.push("--lines=0".into()),
    }
    // Matches on one field are OR-ed, on different fields AND-ed.
    args.extend(config.units.iter().map(|u| format!("_SYSTEMD_UNIT={u}")));
    args.extend(
        config
            .identifiers
            .iter()
            .map(|i| format!("SYSLOG_IDENTIFIER={i}")),
    );
    args
}

/// The fields journalctl prints (its `__` fields always come too).
pub fn output_fields(config: &JournalConfig) -> Vec<String> {
    let mut fields: Vec<String> = ["MESSAGE", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER"]
        .map(String::from)
        .into();
    for f in &config.fields {
        if !fields.contains(f) {
            fields.push(f.clone());
        }
    }
    fields
}

fn spawn(config: &JournalConfig, resume: Option<&Cursor>) -> std::io::Result<Child> {
    let args = args(config, resume);
    tracing::info!(journalctl = %config.journalctl.display(), ?args, "journal: starting journalctl");
    Command::new(&config.journalctl)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Feeds the child's entries through the pipeline until either ends;
/// returns why (the child is killed when it is dropped here).
async fn follow(mut child: Child, config: &JournalConfig, pipeline: &mut Pipeline) -> String {
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return "journalctl has no pipes".into();
    };
    let last_stderr = Arc::new(std::sync::Mutex::new(None::<String>));
    let stderr_task = tokio::spawn(watch_stderr(stderr, last_stderr.clone()));
    let (tx, mut rx) = mpsc::channel(CHUNKS_QUEUED);
    let parser = ExportParser::new(config.max_field_bytes, super::pipeline::wanted(config));
    let reader = tokio::spawn(read_entries(stdout, parser, tx));
    let _abort =
        crate::ingest::serial::AbortOnDrop(vec![reader.abort_handle(), stderr_task.abort_handle()]);
    pipeline.restarted();
    while let Some(mut entries) = rx.recv().await {
        // Whatever queued while the last append was made goes into the next.
        while let Ok(more) = rx.try_recv() {
            entries.extend(more);
        }
        if let Err(PipelineError::Fatal(why) | PipelineError::Rewind(why)) =
            pipeline.handle(entries).await
        {
            return why;
        }
    }
    let read = match reader.await {
        Ok(Ok(())) => "journalctl closed its output".to_string(),
        Ok(Err(e)) => format!("journalctl's output is unreadable: {e}"),
        Err(e) => format!("journal reader failed: {e}"),
    };
    let exit = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => format!("journalctl exited ({status})"),
        _ => "journalctl did not exit".to_string(),
    };
    let _ = stderr_task.await;
    let said = last_stderr
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .map_or_else(String::new, |l| format!(": {l}"));
    format!("{exit}, {read}{said}")
}

#[derive(Debug, thiserror::Error)]
enum ReadFailure {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Format(#[from] super::export::ExportError),
}

async fn read_entries(
    stdout: impl AsyncRead + Unpin,
    mut parser: ExportParser,
    tx: mpsc::Sender<Vec<Entry>>,
) -> Result<(), ReadFailure> {
    let mut stdout = stdout;
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut entries = Vec::new();
        parser.push(&buf[..n], &mut entries)?;
        if !entries.is_empty() && tx.send(entries).await.is_err() {
            return Ok(());
        }
    }
}

async fn watch_stderr(stderr: impl AsyncRead + Unpin, last: Arc<std::sync::Mutex<Option<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!("journalctl: {line}");
        *last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(line);
    }
}
