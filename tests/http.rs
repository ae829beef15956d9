//! The observability endpoint of the real binary: health, readiness,
//! Prometheus metrics (checked by promtool), JSON status, `tidewell status`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tidewell");

struct Gateway {
    child: Child,
    /// Empty when the endpoint is off.
    http: String,
    mqtt: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Gateway {
    start_with_http(dir, "127.0.0.1:0")
}

fn start_with_http(dir: &std::path::Path, http: &str) -> Gateway {
    let config = dir.join("tidewell.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[topics.ingest]\nretention_bytes = 100000000\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"{http}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ready line");
        if line.starts_with("tidewell: ready") {
            break line;
        }
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    Gateway {
        http: field("http="),
        mqtt: field("mqtt="),
        child,
    }
}

/// (status code, body) of a raw HTTP request.
fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn publish(mqtt: &str, topic: &str, count: usize) {
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    for i in 0..count {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-q",
                "1",
                "-i",
                "dev1",
                "-t",
                topic,
                "-m",
                &format!("reading {i}"),
            ])
            .status()
            .expect("mosquitto_pub (mosquitto-clients)");
        assert!(status.success());
    }
}

#[test]
fn health_readiness_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path());
    assert_eq!(
        request(&gw.http, "GET", "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(
        request(&gw.http, "GET", "/readyz"),
        (200, "ready\n".to_string())
    );
    assert_eq!(request(&gw.http, "GET", "/nope").0, 404);
    assert_eq!(request(&gw.http, "POST", "/metrics").0, 405);
    let mut stream = TcpStream::connect(&gw.http).unwrap();
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
    publish(&gw.mqtt, "devices/dev1/telemetry", 5);
    let (code, body) = request(&gw.http, "GET", "/metrics");
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
    publish(&gw.mqtt, "devices/dev1/telemetry", 3);
    let (code, body) = request(&gw.http, "GET", "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ready"], true);
    let partition = &status["log"]["topics"][0]["partitions"][0];
    assert_eq!(partition["end_offset"], 3);
    assert_eq!(
        partition["backlog_records"], 3,
        "nothing replicated: all of it is backlog"
    );
    let out = Command::new(BIN)
        .args(["status", "--http", &gw.http])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("ingest/0") && table.contains("ready"),
        "{table}"
    );
}

#[test]
fn status_names_the_address_when_no_gateway_answers() {
    let out = Command::new(BIN)
        .args(["status", "--http", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn a_taken_http_port_leaves_the_endpoint_off_and_ingest_running() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = start_with_http(dir.path(), &taken.local_addr().unwrap().to_string());
    assert!(gw.http.is_empty(), "no endpoint in the ready line");
    publish(&gw.mqtt, "devices/dev1/telemetry", 1);
}
