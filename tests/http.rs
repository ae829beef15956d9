//! The observability endpoint of the real binary: health, readiness,
//! Prometheus metrics (checked by promtool), JSON status, `tidewell status`.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use harness::mosquitto::publish;
use harness::{tidewell, Gateway};

fn start(dir: &std::path::Path) -> Gateway {
    start_with_http(dir, "127.0.0.1:0")
}

fn start_with_http(dir: &std::path::Path, http: &str) -> Gateway {
    let config = format!(
        "{}[topics.ingest]\nretention_bytes = 100000000\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"{http}\"\n",
        harness::data_dir_line(dir)
    );
    Gateway::start(dir, &config)
}

#[test]
fn health_readiness_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    assert_eq!(gw.request("GET", "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(gw.request("GET", "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(gw.request("GET", "/nope").0, 404);
    assert_eq!(gw.request("POST", "/metrics").0, 405);
    let mut stream = TcpStream::connect(gw.http().unwrap()).unwrap();
    stream.write_all(&[b'x'; 10_000]).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "an oversize request is refused: {response:?}"
    );
}

#[test]
fn metrics_pass_promtool_and_count_what_was_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    publish(gw.mqtt(), "devices/dev1/telemetry", 5);
    let (code, body) = gw.request("GET", "/metrics");
    assert_eq!(code, 200);
    for expected in [
        "tidewell_topic_records_appended_total{topic=\"ingest\"} 5",
        "tidewell_partition_end_offset{topic=\"ingest\",partition=\"0\"} 5",
        "tidewell_topic_quota_bytes{topic=\"ingest\"} 100000000",
        "tidewell_mqtt_publishes_appended_total 5",
        "tidewell_ingest_records_total{source=\"mqtt\"} 5",
        "tidewell_ingest_bytes_total{source=\"mqtt\"} 45",
        "tidewell_log_fsync_duration_seconds_count",
        "tidewell_ready 1",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool: {complaints}"
    );
}

#[test]
fn status_is_json_and_the_cli_prints_it_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    publish(gw.mqtt(), "devices/dev1/telemetry", 3);
    let (code, body) = gw.request("GET", "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ready"], true);
    let partition = &status["log"]["topics"][0]["partitions"][0];
    assert_eq!(partition["end_offset"], 3);
    assert_eq!(
        partition["backlog_records"], 3,
        "nothing replicated: all of it is backlog"
    );
    let http = gw.http().unwrap().to_string();
    let out = tidewell(&["status", "--http", &http], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("ingest/0") && table.contains("ready"),
        "{table}"
    );
}

#[test]
fn status_names_the_address_when_no_gateway_answers() {
    let out = tidewell(&["status", "--http", "127.0.0.1:1"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn a_taken_http_port_leaves_the_endpoint_off_and_ingest_running() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = start_with_http(dir.path(), &taken.local_addr().unwrap().to_string());
    assert!(gw.http().is_none(), "no endpoint in the ready line");
    publish(gw.mqtt(), "devices/dev1/telemetry", 1);
}
