//! `tidewell bench journal`: entries a second from a journal directory into
//! durable records, side by side with the raw rate of `journalctl` reading
//! the same directory to /dev/null (the source cannot be faster than its
//! reader), and the gateway's peak RSS.
//!
//! The directory is written once by `systemd-journal-remote` from export
//! text generated here. The journal topic uses `fsync = { interval_ms =
//! 1000 }`, the policy the sample config gives logs (a power cut loses at
//! most the last second, which the journal itself still holds: the cursor
//! makes the gateway read it again).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::ingest::journal::export::write_entry;
use crate::ingest::journal::JournalConfig;

#[derive(Args, Debug, Clone)]
pub struct JournalBenchArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Journal entries to generate and read.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
}

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

pub fn run(args: &JournalBenchArgs) -> anyhow::Result<()> {
    let root = args.dir.join(format!("journal-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = measure(&root, args.entries);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(root: &Path, entries: u64) -> anyhow::Result<()> {
    let journal = root.join("journal");
    std::fs::create_dir_all(&journal)?;
    let started = Instant::now();
    generate(&journal.join("bench.journal"), entries)?;
    println!(
        "bench journal: wrote {entries} entries with systemd-journal-remote in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = bench_config();
    let mut source_args = crate::ingest::journal::follow_args(&config, &journal);
    source_args.retain(|a| a != "--follow");
    let raw = raw_rate(&source_args, entries)?;
    let mut json_args = source_args.clone();
    json_args[1] = "json".into();
    let json = raw_rate(&json_args, entries)?;
    let (rate, rss_kib) = gateway_rate(root, &journal, entries)?;
    println!(
        "bench journal: journalctl -o export (the source's own arguments) {raw:.0} entries/s, -o json {json:.0} entries/s to /dev/null"
    );
    println!(
        "bench journal: gateway {rate:.0} entries/s durable = {:.1}% of journalctl -o export's raw rate ({:.1}% of -o json's); gateway peak RSS {:.1} MiB (journal topic fsync interval_ms = 1000)",
        100.0 * rate / raw,
        100.0 * rate / json,
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

fn bench_config() -> JournalConfig {
    JournalConfig {
        enabled: true,
        rate_limit_per_s: 0,
        ..JournalConfig::default()
    }
}

/// Entries like a Pi's: a unit, an identifier, a ~90-byte message.
fn generate(file: &Path, entries: u64) -> anyhow::Result<()> {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting systemd-journal-remote (apt-get install systemd-journal-remote)")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut buf = Vec::with_capacity(1 << 20);
    let units = [
        "sshd.service",
        "pump.service",
        "modem.service",
        "cron.service",
    ];
    for n in 0..entries {
        let unit = units[(n % 4) as usize];
        let realtime = (1_700_000_000_000_000 + n * 1000).to_string();
        let monotonic = (1_000_000 + n * 1000).to_string();
        let message = format!(
            "entry {n}: pressure 1.{:03} bar, flow nominal, valve 3 open, link up",
            n % 1000
        );
        let fields: [(&str, &[u8]); 9] = [
            ("__REALTIME_TIMESTAMP", realtime.as_bytes()),
            ("__MONOTONIC_TIMESTAMP", monotonic.as_bytes()),
            ("_BOOT_ID", b"0123456789abcdef0123456789abcdef"),
            ("MESSAGE", message.as_bytes()),
            ("PRIORITY", b"6"),
            (
                "SYSLOG_IDENTIFIER",
                unit.trim_end_matches(".service").as_bytes(),
            ),
            ("_SYSTEMD_UNIT", unit.as_bytes()),
            ("_HOSTNAME", b"cabinet-7"),
            ("_PID", b"812"),
        ];
        write_entry(&mut buf, &fields);
        if buf.len() >= 1 << 20 {
            stdin.write_all(&buf)?;
            buf.clear();
        }
    }
    stdin.write_all(&buf)?;
    drop(stdin);
    if !child.wait()?.success() {
        bail!("systemd-journal-remote failed");
    }
    Ok(())
}

/// Entries a second of `journalctl ARGS > /dev/null`.
fn raw_rate(args: &[String], entries: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("journalctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running journalctl")?;
    if !status.success() {
        bail!("journalctl {args:?} failed: {status}");
    }
    Ok(entries as f64 / started.elapsed().as_secs_f64())
}

/// Entries a second from the gateway's start to the last entry durable, and
/// its peak RSS in KiB.
fn gateway_rate(root: &Path, journal: &Path, entries: u64) -> anyhow::Result<(f64, u64)> {
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = root.join("tidewell.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"{http}\"\n[topics.journal]\nfsync = {{ interval_ms = 1000 }}\n[journal]\nenabled = true\ndirectory = {:?}\nrate_limit_per_s = 0\n",
            root.join("data"),
            journal
        ),
    )?;
    let started = Instant::now();
    let (mut child, _) = super::start_gateway(&config)?;
    let addr = http.to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let appended = crate::observe::get(&addr, "/metrics")
            .ok()
            .and_then(|m| metric(&m, "tidewell_journal_entries_appended_total"))
            .unwrap_or(0.0);
        if appended >= entries as f64 {
            break Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "only {appended} of {entries} entries within 600 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss = super::peak_rss_kib(child.id()).unwrap_or(0);
    super::stop(&mut child);
    Ok((entries as f64 / done?.as_secs_f64(), rss))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}
