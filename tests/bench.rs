//! Every `tidewell bench` command of the README runs, in a tiny form, so
//! none of them can rot unnoticed (`bench replicate` once failed before it
//! started and nothing noticed). The figures are not checked, only that the
//! command exits 0 and prints them; `fanout` and `catchup` also check the
//! counts a tiny run must reach.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;
use std::process::Command;

use harness::BIN;

/// Runs `tidewell bench ARGS --dir DIR` and returns what it printed.
fn bench(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("TIDEWELL_LOG", "warn")
        .output()
        .expect("run tidewell bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tidewell bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn printed(out: &str, words: &[&str]) {
    for word in words {
        assert!(out.contains(word), "no {word:?} in:\n{out}");
    }
}

#[test]
fn bench_log_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "log",
            "--records",
            "2000",
            "--producers",
            "4",
            "--raw-seconds",
            "0.2",
        ],
    );
    printed(&out, &["records/s", "sqlite"]);
    let out = bench(
        dir.path(),
        &[
            "log",
            "--records",
            "2000",
            "--compression",
            "lz4",
            "--no-sqlite",
            "--raw-seconds",
            "0.2",
        ],
    );
    printed(&out, &["records/s"]);
}

#[test]
fn bench_open_runs() {
    let dir = tempfile::tempdir().unwrap();
    printed(&bench(dir.path(), &["open", "--mib", "4"]), &["ms"]);
}

#[test]
fn bench_mqtt_runs_against_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["mqtt", "--clients", "4", "--messages", "50"]);
    printed(&out, &["tidewell", "mosquitto", "x; p99"]);
}

#[test]
fn bench_connect_runs_against_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &["connect", "--devices", "20", "--accounts", "4"],
    );
    printed(
        &out,
        &[
            "storm: 20 devices",
            "idle: 20 devices add",
            "tidewell/mosquitto",
        ],
    );
}

#[test]
fn bench_serial_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &["serial", "--bauds", "115200", "--seconds", "1"],
    );
    printed(&out, &["115200"]);
}

#[test]
fn bench_modbus_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "modbus",
            "--bauds",
            "19200",
            "--seconds",
            "1",
            "--idle-seconds",
            "1",
        ],
    );
    printed(&out, &["19200 baud", "polls/s line limit", "% of one core"]);
}

#[test]
fn bench_replicate_runs_against_tansu_and_confluent_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["replicate", "--records", "2000"]);
    printed(&out, &["records/s", "confluent-kafka"]);
}

#[test]
fn bench_journal_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["journal", "--entries", "3000"]);
    printed(&out, &["entries/s", "journalctl -o export", "peak RSS"]);
}

#[test]
fn bench_http_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["http", "--requests", "400", "--clients", "4"]);
    printed(
        &out,
        &["tidewell http", "p99", "tidewell log", "http / log"],
    );
}

#[test]
fn bench_wire_runs_against_tansu_and_confluent_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "wire",
            "--devices",
            "4",
            "--backlog",
            "400",
            "--live-rate",
            "50",
            "--live-seconds",
            "2",
        ],
    );
    printed(
        &out,
        &[
            "confluent-kafka, no headers",
            "tidewell, compact",
            "B/record",
            "linger.ms = 1000",
        ],
    );
}

#[test]
fn bench_bridge_runs_against_mosquitto_sub() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &["bridge", "--messages", "500", "--rounds", "1"],
    );
    printed(
        &out,
        &["tidewell bridge", "mosquitto_sub", "bridge / mosquitto_sub"],
    );
}

/// The line of `out` that starts with `head` and names `broker`.
fn line<'a>(out: &'a str, head: &str, broker: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(head) && l.contains(broker))
        .unwrap_or_else(|| panic!("no line {head:?} ... {broker:?} in:\n{out}"))
}

#[test]
fn bench_fanout_runs_against_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "fanout",
            "--subscribers",
            "4",
            "--publishers",
            "4",
            "--messages",
            "50",
        ],
    );
    printed(&out, &["tidewell/mosquitto delivered/s", "p99"]);
    // 50 messages to each of 4 subscribers, and 4 x 50 to one: far fewer
    // than either broker's queues hold, so every message arrives.
    for shape in ["1 -> 4 ", "4 -> 1 "] {
        for broker in ["tidewell (fsync always)", "mosquitto 2 (memory)"] {
            let figures = line(&out, shape, broker);
            assert!(figures.contains(" 200/200 delivered"), "{figures}");
        }
    }
}

#[test]
fn bench_catchup_runs_against_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "catchup",
            "--messages",
            "1500",
            "--publishers",
            "2",
            "--idle-ms",
            "1000",
        ],
    );
    // Mosquitto's defaults keep 1,000 queued QoS 1 messages per client.
    let mosquitto = line(&out, "mosquitto 2 (defaults)", "");
    assert!(mosquitto.contains("caught up 1000/1500"), "{mosquitto}");
    // Tidewell refuses clean_session = 0 (CONNACK 0x03) until persistent
    // sessions land; then it must deliver every message.
    let tidewell = line(&out, "tidewell (fsync always)", "");
    assert!(
        tidewell.contains("caught up 1500/1500") || tidewell.contains("refused: "),
        "{tidewell}"
    );
}
