//! The `tidewell` binary's log commands and `run` on embedded defaults,
//! driven as a user would.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::{text, Launch};
use tidewell::log::{Log, LogConfig, OsStorage, Partition, Record, TopicConfig};

/// `tidewell ARGS` in `cwd`.
fn tidewell(args: &[&str], cwd: &Path) -> Output {
    harness::tidewell(args, Some(cwd))
}

/// A log with two topics: `sensors` (2 partitions, small segments) and `raw` (binary payloads).
fn make_log(dir: &Path) -> Vec<Record> {
    let sensors = TopicConfig {
        partitions: 2,
        max_segment_bytes: 4096,
        ..TopicConfig::default()
    };
    let config = LogConfig::new(dir)
        .with_topic("sensors", sensors)
        .with_topic("raw", TopicConfig::default());
    let log = Log::open(Arc::new(OsStorage), config).expect("log opens");
    let mut records = Vec::new();
    for i in 0..200u32 {
        let record = Record {
            timestamp_ms: 1_764_000_000_000 + i64::from(i),
            key: Some(Bytes::from(format!("device-{}", i % 4))),
            value: Bytes::from(format!(
                "{{\"seq\":{i},\"temp\":21.5,\"pad\":\"{}\"}}",
                "x".repeat(40)
            )),
            headers: vec![(
                "mqtt.topic".into(),
                Bytes::from(format!("devices/{}/telemetry", i % 4)),
            )],
        };
        log.append("sensors", Partition(i % 2), vec![record.clone()])
            .unwrap()
            .wait()
            .unwrap();
        records.push(record);
    }
    let binary = Record {
        timestamp_ms: 5,
        key: None,
        value: Bytes::from_static(&[0xff, 0x00, 0xfe]),
        headers: vec![],
    };
    log.append("raw", Partition(0), vec![binary])
        .unwrap()
        .wait()
        .unwrap();
    log.close();
    records
}

fn dump_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn log_files(dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(topic).join(partition.to_string()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn help_and_version_work() {
    let dir = tempfile::tempdir().unwrap();
    let version = tidewell(&["--version"], dir.path());
    assert!(version.status.success());
    assert!(
        text(&version).0.starts_with("tidewell "),
        "{:?}",
        text(&version)
    );
    let help = tidewell(&["--help"], dir.path());
    assert!(help.status.success());
    for command in ["run", "log", "bench"] {
        assert!(text(&help).0.contains(command), "help lists {command}");
    }
}

#[test]
fn dump_prints_every_record_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let records = make_log(dir.path());
    let out = tidewell(
        &[
            "log",
            "dump",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--topic",
            "sensors",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let lines = dump_lines(&text(&out).0);
    assert_eq!(lines.len(), records.len());
    for partition in 0..2u64 {
        let offsets: Vec<u64> = lines
            .iter()
            .filter(|l| l["partition"] == partition)
            .map(|l| l["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "dense, in order");
    }
    let first = &lines[0];
    assert_eq!(first["topic"], "sensors");
    assert_eq!(first["timestamp_ms"], 1_764_000_000_000i64);
    assert_eq!(first["key"], "device-0");
    assert_eq!(
        first["payload"],
        std::str::from_utf8(&records[0].value).unwrap()
    );
    assert_eq!(first["headers"][0]["name"], "mqtt.topic");
    assert_eq!(first["headers"][0]["value"], "devices/0/telemetry");
}

#[test]
fn dump_filters_by_partition_and_offset_and_base64s_binary_payloads() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path());
    let data = dir.path().to_str().unwrap();
    let out = tidewell(
        &[
            "log",
            "dump",
            "--data-dir",
            data,
            "--topic",
            "sensors",
            "--partition",
            "1",
            "--from",
            "95",
        ],
        dir.path(),
    );
    let lines = dump_lines(&text(&out).0);
    let offsets: Vec<u64> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![95, 96, 97, 98, 99]);
    assert!(lines.iter().all(|l| l["partition"] == 1));

    let out = tidewell(
        &["log", "dump", "--data-dir", data, "--topic", "raw"],
        dir.path(),
    );
    let lines = dump_lines(&text(&out).0);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload_base64"], "/wD+");
    assert!(lines[0].get("payload").is_none());
    assert_eq!(lines[0]["key"], serde_json::Value::Null);
}

#[test]
fn verify_passes_a_healthy_log_and_names_the_damage_in_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path());
    let data = dir.path().to_str().unwrap();
    let healthy = tidewell(&["log", "verify", "--data-dir", data], dir.path());
    assert!(healthy.status.success(), "{:?}", text(&healthy));
    assert!(text(&healthy).0.contains("verify: OK"));

    let older = log_files(dir.path(), "sensors", 0).remove(0);
    let mut bytes = std::fs::read(&older).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&older, &bytes).unwrap();

    let damaged = tidewell(&["log", "verify", "--data-dir", data], dir.path());
    assert_eq!(damaged.status.code(), Some(1));
    let (stdout, _) = text(&damaged);
    assert!(
        stdout.contains("DAMAGE") && stdout.contains(older.file_name().unwrap().to_str().unwrap()),
        "{stdout}"
    );
    assert!(stdout.contains("verify: DAMAGED"));

    // dump still prints everything around the damage, reports it, and fails.
    let dump = tidewell(
        &[
            "log",
            "dump",
            "--data-dir",
            data,
            "--topic",
            "sensors",
            "--partition",
            "0",
        ],
        dir.path(),
    );
    assert_eq!(dump.status.code(), Some(1));
    let (stdout, stderr) = text(&dump);
    assert_eq!(
        dump_lines(&stdout).len(),
        99,
        "only the damaged record is missing"
    );
    assert!(stderr.contains("damaged batch"), "{stderr}");
}

#[test]
fn verify_and_dump_refuse_a_missing_directory_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = tidewell(&["log", "verify", "--data-dir", "no-such-dir"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("no-such-dir: no such directory"),
        "{:?}",
        text(&out)
    );
    let out = tidewell(
        &[
            "log",
            "dump",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--topic",
            "nope",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no topic \"nope\""));
}

/// `tidewell run` with no config, in its own network when run as root
/// (the defaults' fixed ports may be taken on this machine).
#[test]
fn run_on_embedded_defaults_creates_the_log_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Launch::embedded_defaults(dir.path())
        .own_network_if_root()
        .ready_within(Duration::from_secs(20))
        .start();
    assert!(dir
        .path()
        .join("tidewell-data/ingest/0/00000000000000000000.log")
        .exists());
    let status = gateway.stop();
    assert!(status.success(), "exit status {status:?}");
    let verify = tidewell(
        &["log", "verify", "--data-dir", "tidewell-data"],
        dir.path(),
    );
    assert!(verify.status.success(), "{:?}", text(&verify));
}

/// The first log line the gateway writes on stderr with `envs` set, and
/// without the harness's `TIDEWELL_LOG` and `NO_COLOR`: the default level
/// and leaving colours out when stderr is no terminal are the gateway's own.
fn first_log_line(envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[mqtt]\nenabled = false\n[http]\nenabled = false\n",
        harness::data_dir_line(dir.path())
    );
    let gateway = Launch::config(dir.path(), &config)
        .env_remove("TIDEWELL_LOG")
        .env_remove("NO_COLOR")
        .envs(envs)
        .spawn();
    gateway.first_stderr_line()
}

#[test]
fn log_lines_are_json_when_asked_and_have_no_timestamp_under_the_journal() {
    let json: serde_json::Value =
        serde_json::from_str(&first_log_line(&[("TIDEWELL_LOG_FORMAT", "json")]))
            .expect("a JSON log line");
    assert_eq!(json["level"], "INFO");
    assert!(
        json["timestamp"].is_string() && json["fields"]["message"].is_string(),
        "{json}"
    );
    let plain = first_log_line(&[("JOURNAL_STREAM", "8:12345")]);
    assert!(
        plain.starts_with(" INFO") || plain.starts_with("INFO"),
        "no timestamp, no colour: {plain:?}"
    );
}
