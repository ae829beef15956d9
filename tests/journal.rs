//! Journal ingest end to end: real journal files written by systemd's own
//! `systemd-journal-remote` from export-format text these tests generate,
//! the real gateway binary following them with the real `journalctl
//! --directory`, and `tidewell log dump` to read back what is on disk.
//! Nothing here touches the host's journal.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{wait_for, wait_until, Gateway, Launch};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT_A: &str = "0123456789abcdef0123456789abcdef";
const BOOT_B: &str = "fedcba9876543210fedcba9876543210";
/// 2023-11-14, in µs: the fixtures' clock.
const T0_US: u64 = 1_700_000_000_000_000;

/// One journal entry of a fixture, as export-format fields.
#[derive(Clone)]
struct Entry(Vec<(String, Vec<u8>)>);

impl Entry {
    /// Entry `n`: message `msg-<n>`, of `unit`, at `T0 + n ms` realtime and
    /// `1 s + n ms` monotonic of boot A, priority 6.
    fn new(n: u64, unit: &str) -> Entry {
        Entry(vec![
            (
                "__REALTIME_TIMESTAMP".into(),
                (T0_US + n * 1000).to_string().into_bytes(),
            ),
            (
                "__MONOTONIC_TIMESTAMP".into(),
                (1_000_000 + n * 1000).to_string().into_bytes(),
            ),
            ("_BOOT_ID".into(), BOOT_A.into()),
            ("MESSAGE".into(), format!("msg-{n:06}").into_bytes()),
            ("PRIORITY".into(), b"6".to_vec()),
            (
                "SYSLOG_IDENTIFIER".into(),
                unit.trim_end_matches(".service").into(),
            ),
            ("_SYSTEMD_UNIT".into(), unit.into()),
            ("_HOSTNAME".into(), b"cabinet-7".to_vec()),
        ])
    }

    fn set(mut self, name: &str, value: &[u8]) -> Entry {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.into(), value.to_vec()));
        self
    }

    /// Export format: `NAME=text`, or the length-prefixed binary form.
    fn export(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.0 {
            out.extend_from_slice(name.as_bytes());
            if value.iter().any(|&b| b < 0x20) {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            } else {
                out.push(b'=');
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
}

/// Appends `entries` to the journal file `file` (created if new) with
/// systemd-journal-remote, which writes journald's own file format.
fn write_journal(file: &Path, entries: &[Entry]) {
    let mut text = Vec::new();
    for e in entries {
        e.export(&mut text);
    }
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-journal-remote (tests/run installs it)");
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Journal files are written through mmap, which inotify does not see:
    // a running journald follows each change with an ftruncate to the same
    // size (journal_file_post_change) so that `journalctl --follow` wakes.
    // journal-remote exits without a last one; do what journald does.
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(f.metadata().unwrap().len()).unwrap();
}

fn range(from: u64, to: u64, unit: &str) -> Vec<Entry> {
    (from..to).map(|n| Entry::new(n, unit)).collect()
}

fn journal_dir(dir: &Path) -> PathBuf {
    let path = dir.join("journal");
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// A gateway following the journal files in `journal`, no rate limit
/// unless `extra` (more `[journal]` keys) sets one.
fn launch(dir: &Path, journal: &Path, extra: &str) -> Launch {
    let config = format!(
        "{data}[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[topics.journal]\n[journal]\nenabled = true\ndirectory = {journal:?}\n{limit}{extra}\n",
        data = harness::data_dir_line(dir),
        limit = if extra.contains("rate_limit") { "" } else { "rate_limit_per_s = 0\n" },
    );
    Launch::config(dir, &config)
}

/// The journal topic's records in log order.
fn records(data_dir: &Path) -> Vec<serde_json::Value> {
    harness::dump_live(data_dir)
        .into_iter()
        .filter(|r| r["topic"] == "journal")
        .collect()
}

fn messages(data_dir: &Path) -> Vec<String> {
    records(data_dir)
        .iter()
        .map(|r| r["payload"].as_str().unwrap_or("<binary>").to_string())
        .collect()
}

fn names(from: u64, to: u64) -> Vec<String> {
    (from..to).map(|n| format!("msg-{n:06}")).collect()
}

fn wait_messages(gateway: &Gateway, count: usize) {
    let data = gateway.data_dir();
    let arrived = wait_until(Duration::from_secs(60), || records(&data).len() >= count);
    let have = messages(&data);
    assert!(
        arrived,
        "{} of {count} journal records within 60 s; the last: {:?}\n/status: {}\n{}",
        have.len(),
        have.last(),
        gateway.status()["journal"],
        gateway.stderr_text()
    );
}

#[test]
fn each_entry_becomes_a_record_with_its_cursor_fields_and_both_timestamps() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    write_journal(&journal.join("a.journal"), &range(0, 3, "sshd.service"));
    let gateway = launch(dir.path(), &journal, "").start();
    wait_messages(&gateway, 3);
    let all = records(&gateway.data_dir());
    assert_eq!(all.len(), 3);
    let first = &all[0];
    assert_eq!(first["payload"], "msg-000000");
    assert_eq!(first["key"], "sshd.service");
    assert_eq!(first["timestamp_ms"], (T0_US / 1000) as i64);
    let header = |name: &str| harness::header(first, name).map(str::to_string);
    assert!(header("journal.cursor").unwrap().starts_with("s="));
    assert_eq!(header("journal.realtime_us").unwrap(), T0_US.to_string());
    assert_eq!(header("journal.monotonic_us").unwrap(), "1000000");
    for (name, value) in [
        ("_SYSTEMD_UNIT", "sshd.service"),
        ("SYSLOG_IDENTIFIER", "sshd"),
        ("PRIORITY", "6"),
        ("_BOOT_ID", BOOT_A),
        ("_HOSTNAME", "cabinet-7"),
    ] {
        assert_eq!(header(name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(
        gateway.metric("tidewell_journal_entries_appended_total"),
        3.0
    );
    assert_eq!(gateway.status()["journal"]["state"], "following");
}

#[test]
fn binary_fields_and_very_long_messages_arrive_whole_and_overlong_ones_are_cut_and_flagged() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let binary = b"\x00\x01raw\nbytes\xff".to_vec();
    let long = "L".repeat(200 << 10);
    let overlong = "O".repeat(300 << 10);
    write_journal(
        &journal.join("a.journal"),
        &[
            Entry::new(0, "cam.service").set("BLOB", &binary),
            Entry::new(1, "cam.service").set("MESSAGE", long.as_bytes()),
            Entry::new(2, "cam.service").set("MESSAGE", overlong.as_bytes()),
            Entry::new(3, "cam.service").set("MESSAGE", b"multi\nline\x07message"),
        ],
    );
    let gateway = launch(
        dir.path(),
        &journal,
        "fields = [\"_SYSTEMD_UNIT\", \"BLOB\"]",
    )
    .start();
    wait_messages(&gateway, 4);
    let all = records(&gateway.data_dir());
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let blob = all[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "BLOB")
        .unwrap();
    assert_eq!(
        blob["value_base64"],
        b64(&binary),
        "binary field byte for byte"
    );
    assert_eq!(all[1]["payload"].as_str().unwrap().len(), 200 << 10);
    assert_eq!(harness::header(&all[1], "journal.truncated"), None);
    assert_eq!(all[2]["payload"].as_str().unwrap().len(), 256 << 10);
    assert_eq!(
        harness::header(&all[2], "journal.truncated"),
        Some("MESSAGE")
    );
    assert_eq!(all[3]["payload"], "multi\nline\u{7}message");
    assert_eq!(
        gateway.metric("tidewell_journal_truncated_fields_total"),
        1.0
    );
}

#[test]
fn filters_keep_only_the_units_identifiers_priorities_and_boot_asked_for() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "");
    let now = |e: Entry| e.set("_BOOT_ID", boot.as_bytes());
    write_journal(
        &journal.join("a.journal"),
        &[
            now(Entry::new(0, "a.service").set("PRIORITY", b"3")),
            now(Entry::new(1, "a.service")),
            Entry::new(2, "a.service").set("PRIORITY", b"2"),
            now(Entry::new(3, "b.service").set("PRIORITY", b"1")),
            now(Entry::new(4, "c.service").set("PRIORITY", b"0")),
            now(Entry::new(5, "a.service").set("PRIORITY", b"4")),
        ],
    );
    let filters = "units = [\"a.service\", \"b.service\"]\nexclude_units = [\"b.service\"]\nmax_priority = 4\ncurrent_boot_only = true";
    let gateway = launch(dir.path(), &journal, filters).start();
    wait_messages(&gateway, 2);
    // Entry 5 is the last one: once it is in, everything before was judged.
    wait_for("entry 5", Duration::from_secs(30), || {
        messages(&gateway.data_dir()).contains(&"msg-000005".to_string())
    });
    assert_eq!(messages(&gateway.data_dir()), ["msg-000000", "msg-000005"]);
    assert_eq!(gateway.metric("tidewell_journal_excluded_total"), 1.0);
    drop(gateway);

    let other = harness::temp_dir();
    let gateway = launch(other.path(), &journal, "identifiers = [\"c\"]").start();
    wait_messages(&gateway, 1);
    assert_eq!(messages(&gateway.data_dir()), ["msg-000004"]);
}

/// A restart far behind the journal: everything written while the gateway
/// was down arrives, not only the last ten entries (`journalctl --follow`
/// alone implies `--lines=10` from the cursor on).
#[test]
fn a_restart_hundreds_of_entries_behind_reads_every_one_of_them() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let file = journal.join("a.journal");
    write_journal(&file, &range(0, 20, "pump.service"));
    let gateway = launch(dir.path(), &journal, "").start();
    wait_messages(&gateway, 20);
    gateway.stop();
    write_journal(&file, &range(20, 320, "pump.service"));
    let gateway = launch(dir.path(), &journal, "").start();
    wait_messages(&gateway, 320);
    assert_eq!(messages(&gateway.data_dir()), names(0, 320));
}

#[test]
fn sigkill_at_random_points_while_entries_stream_leaves_every_entry_exactly_once_in_journal_order()
{
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let file = journal.join("stream.journal");
    const CHUNK: u64 = 150;
    const CHUNKS: u64 = 16;
    write_journal(&file, &range(0, CHUNK, "pump.service"));
    let total = (CHUNK * CHUNKS) as usize;
    // The feeder stays at most two chunks ahead of the log, so the kills
    // land while entries stream in.
    let feeder = {
        let (file, data) = (file.clone(), harness::data_dir(dir.path()));
        std::thread::spawn(move || {
            for c in 1..CHUNKS {
                let behind = ((c - 1) * CHUNK) as usize;
                wait_until(Duration::from_secs(60), || records(&data).len() >= behind);
                write_journal(&file, &range(c * CHUNK, (c + 1) * CHUNK, "pump.service"));
            }
        })
    };
    let seed = fastrand::u64(..);
    eprintln!("kill points from seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut gateway = launch(dir.path(), &journal, "").start();
    let mut kills = 0;
    while records(&gateway.data_dir()).len() < total - CHUNK as usize {
        let target = records(&gateway.data_dir()).len() + rng.usize(1..250);
        let data = gateway.data_dir();
        wait_until(Duration::from_secs(10), || records(&data).len() >= target);
        gateway = gateway.restart();
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kills");
    feeder.join().unwrap();
    wait_messages(&gateway, total);
    gateway = gateway.restart();
    wait_messages(&gateway, total);
    assert_eq!(
        messages(&gateway.data_dir()),
        names(0, CHUNK * CHUNKS),
        "every entry once, in journal order, after kills (seed {seed})"
    );
}

#[test]
fn a_vacuumed_cursor_resumes_at_the_oldest_entry_left_and_the_gap_is_counted_and_recorded() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    write_journal(&journal.join("a.journal"), &range(0, 10, "app.service"));
    let launched = launch(dir.path(), &journal, "");
    let gateway = launched.clone().start();
    wait_messages(&gateway, 10);
    assert_eq!(gateway.stop().code(), Some(0));
    // Later entries go to a newer file; the oldest file is vacuumed away,
    // and with it the entry the stored cursor names.
    write_journal(&journal.join("b.journal"), &range(10, 20, "app.service"));
    std::fs::remove_file(journal.join("a.journal")).unwrap();
    let gateway = launched.start();
    wait_messages(&gateway, 20);
    assert_eq!(messages(&gateway.data_dir()), names(0, 20));
    assert_eq!(gateway.metric("tidewell_journal_gaps_total"), 1.0);
    assert_eq!(gateway.status()["journal"]["gaps"], 1);
    let resumed = &records(&gateway.data_dir())[10];
    let gap = harness::header(resumed, "journal.gap").expect("a journal.gap header");
    assert!(gap.contains("lost"), "{gap}");
    assert!(gateway.stderr_contains("the entry at the stored cursor is gone"));
}

#[test]
fn a_reboot_while_the_gateway_was_down_loses_neither_the_old_boots_tail_nor_the_new_boots_first_entries(
) {
    // systemd 252: `--follow` implies `--boot` (the newest boot), so a
    // resume at a previous boot's cursor starts at the new boot; and
    // `--after-cursor` skips the first entry after the seek whether or not
    // it is the cursor's when a filter is on (systemd#30288). Here the
    // stored entry is followed by entries the filter rejects, more of the
    // old boot written while the gateway was down, then a new boot.
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let file = journal.join("system.journal");
    let mut first_boot = range(0, 5, "app.service");
    first_boot.extend(range(5, 7, "noise.service"));
    write_journal(&file, &first_boot);
    let launched = launch(dir.path(), &journal, "units = [\"app.service\"]");
    let gateway = launched.clone().start();
    wait_messages(&gateway, 5);
    gateway.kill();
    let mut later = range(7, 9, "app.service");
    later.extend((9..13).map(|n| {
        Entry::new(n, "app.service")
            .set("_BOOT_ID", BOOT_B.as_bytes())
            .set("__MONOTONIC_TIMESTAMP", (n * 10).to_string().as_bytes())
    }));
    write_journal(&file, &later);
    let gateway = launched.start();
    wait_messages(&gateway, 11);
    let mut want = names(0, 5);
    want.extend(names(7, 13));
    assert_eq!(messages(&gateway.data_dir()), want);
    assert_eq!(gateway.metric("tidewell_journal_gaps_total"), 0.0);
    assert_eq!(
        gateway.metric("tidewell_journal_duplicates_skipped_total"),
        1.0
    );
}

#[test]
fn a_clock_that_jumped_back_so_the_cursor_lies_in_the_future_neither_skips_nor_repeats() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    let file = journal.join("system.journal");
    write_journal(&file, &range(0, 5, "app.service"));
    let launched = launch(dir.path(), &journal, "");
    let gateway = launched.clone().start();
    wait_messages(&gateway, 5);
    gateway.kill();
    // No RTC: the clock now reads a day earlier than the stored cursor's t=.
    let earlier: Vec<Entry> = range(5, 10, "app.service")
        .into_iter()
        .map(|e| {
            let day_us = 86_400_000_000u64;
            let t = T0_US - day_us + 5_000_000;
            e.set("__REALTIME_TIMESTAMP", t.to_string().as_bytes())
        })
        .collect();
    write_journal(&file, &earlier);
    let gateway = launched.start();
    wait_messages(&gateway, 10);
    assert_eq!(messages(&gateway.data_dir()), names(0, 10));
    let restarted = gateway.restart();
    wait_for(
        "the journal to be followed",
        Duration::from_secs(20),
        || restarted.status()["journal"]["state"] == "following",
    );
    assert_eq!(messages(&restarted.data_dir()), names(0, 10));
}

#[test]
fn a_missing_or_exiting_journalctl_is_restarted_with_backoff_and_shown_in_status() {
    for (journalctl, says) in [
        ("/nonexistent/journalctl", "cannot start"),
        ("/bin/false", "exited"),
    ] {
        let dir = harness::temp_dir();
        let journal = journal_dir(dir.path());
        let gateway = launch(
            dir.path(),
            &journal,
            &format!("journalctl = {journalctl:?}"),
        )
        .start();
        wait_for("two restarts", Duration::from_secs(20), || {
            gateway.status()["journal"]["journalctl_restarts"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        });
        let status = gateway.status()["journal"].clone();
        assert_eq!(status["state"], "restarting", "{status}");
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{journalctl}: {status}");
        assert_eq!(gateway.get("/healthz").map(|_| ()), Ok(()));
    }
}

#[test]
fn a_log_storm_is_rate_limited_with_a_counted_drop_into_its_own_topic() {
    let dir = harness::temp_dir();
    let journal = journal_dir(dir.path());
    write_journal(&journal.join("a.journal"), &range(0, 200, "storm.service"));
    let gateway = launch(
        dir.path(),
        &journal,
        "rate_limit_per_s = 1\nrate_limit_burst = 20",
    )
    .start();
    wait_for("the storm to be judged", Duration::from_secs(30), || {
        gateway.metric("tidewell_journal_entries_read_total") >= 200.0
    });
    let kept = messages(&gateway.data_dir()).len() as f64;
    let dropped = gateway.metric("tidewell_journal_rate_limited_total");
    assert!((20.0..=25.0).contains(&kept), "kept {kept}");
    assert_eq!(kept + dropped, 200.0);
    assert_eq!(gateway.status()["journal"]["rate_limited"], dropped as u64);
}

#[test]
fn config_check_requires_the_journal_topic_with_one_partition() {
    let dir = harness::temp_dir();
    for (topics, says) in [
        ("", "no topic \"journal\""),
        ("[topics.journal]\npartitions = 3\n", "needs 1"),
    ] {
        let path = harness::write_config(
            dir.path(),
            &format!("data_dir = \"d\"\n{topics}[journal]\nenabled = true\n"),
        );
        let out = harness::tidewell(
            &["config", "check", "--config", path.to_str().unwrap()],
            None,
        );
        let (stdout, stderr) = harness::text(&out);
        assert!(!out.status.success());
        assert!(
            stdout.contains("journal.topic") && stdout.contains(says),
            "{stdout}{stderr}"
        );
    }
}
