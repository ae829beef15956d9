//! Serial ingest end to end: the real gateway binary on one end of a
//! pseudo-terminal pair made by socat, the device simulator
//! (`tidewell sim serial`, driving firmware-proto's `DeviceSession`) on the
//! other, and `tidewell log dump` to read back what is on disk.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::pty::Cable;
use harness::{wait_for, Gateway, BIN};

/// The gateway reading `port` as `format`, MQTT off (so its ready line
/// names no `mqtt=`).
fn start_gateway(dir: &Path, port: &Path, format: &str) -> Gateway {
    let config = format!(
        "{data}[mqtt]\nenabled = false\n[[serial.ports]]\npath = \"{port}\"\nbaud = 115200\nformat = \"{format}\"\n",
        data = harness::data_dir_line(dir),
        port = port.display(),
    );
    Gateway::start(dir, &config)
}

/// Starts the device simulator; its JSON report comes on stdout at the end.
fn device(port: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["sim", "serial", "--port"])
        .arg(port)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn report(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "simulator failed: {text}");
    serde_json::from_str(text.trim()).expect("JSON report")
}

/// The `int` values of `device`'s readings in the log, in log order.
fn logged_values(gateway: &Gateway, device: &str) -> Vec<i64> {
    gateway
        .dump()
        .into_iter()
        .filter(|r| r["key"] == device)
        .filter_map(|r| {
            serde_json::from_str::<serde_json::Value>(r["payload"].as_str()?).ok()?["int"].as_i64()
        })
        .collect()
}

fn assert_exactly_once_in_order(values: &[i64], count: i64) {
    let expected: Vec<i64> = (0..count).collect();
    if values != expected {
        let dupes = values.len() as i64 - count;
        let first_bad = values.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "{} readings logged for {count} sent ({dupes:+}); first difference at {first_bad:?}",
            values.len()
        );
    }
}

#[test]
fn readings_arrive_in_the_log_in_order_and_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::plug(dir.path());
    let gateway = start_gateway(dir.path(), &cable.gateway_end, "frames");
    let sim = device(
        &cable.device_end,
        &[
            "--count",
            "2000",
            "--rate",
            "0",
            "--batch",
            "16",
            "--baud",
            "3000000",
            "--device-id",
            "dev-a",
        ],
    );
    let report = report(sim);
    assert_eq!(report["readings_acked"], 2000);
    assert_exactly_once_in_order(&logged_values(&gateway, "dev-a"), 2000);
}

#[test]
fn line_noise_and_lost_bytes_never_append_damage_nor_lose_acknowledged_readings() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::plug(dir.path());
    let gateway = start_gateway(dir.path(), &cable.gateway_end, "frames");
    let args = [
        "--count",
        "1500",
        "--rate",
        "0",
        "--baud",
        "3000000",
        "--noise",
        "0.05",
        "--drop",
        "0.05",
        "--retransmit-ms",
        "200",
        "--device-id",
        "noisy",
    ];
    let report = report(device(&cable.device_end, &args));
    assert!(
        report["frames_corrupted"].as_u64().unwrap() > 0
            && report["bytes_dropped"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_exactly_once_in_order(&logged_values(&gateway, "noisy"), 1500);
}

#[test]
fn after_a_gateway_kill_unacknowledged_readings_are_resent_and_appended_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::plug(dir.path());
    let gateway = start_gateway(dir.path(), &cable.gateway_end, "frames");
    // After 400 acknowledged readings the device stops hearing the gateway
    // for 4 s: its queue fills with batches that are in the log but never
    // acknowledged, exactly what a kill between fsync and Ack leaves behind.
    let args = [
        "--count",
        "3000",
        "--rate",
        "600",
        "--batch",
        "4",
        "--baud",
        "3000000",
        "--retransmit-ms",
        "300",
        "--device-id",
        "dev-k",
        "--deaf-after",
        "400",
        "--deaf-ms",
        "4000",
    ];
    let sim = device(&cable.device_end, &args);
    wait_for(
        "unacknowledged batches in the log",
        Duration::from_secs(30),
        || logged_values(&gateway, "dev-k").len() >= 600,
    );
    let gateway = gateway.restart();
    let report = report(sim);
    assert_eq!(report["readings_acked"], 3000);
    assert_exactly_once_in_order(&logged_values(&gateway, "dev-k"), 3000);
}

#[test]
fn an_unplugged_port_is_picked_up_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::plug(dir.path());
    let gateway = start_gateway(dir.path(), &cable.gateway_end, "frames");
    let sim = device(
        &cable.device_end,
        &[
            "--count",
            "2000",
            // 8 s of readings: the unplug lands well before the last one.
            "--rate",
            "250",
            "--batch",
            "4",
            "--baud",
            "3000000",
            "--retransmit-ms",
            "300",
            "--device-id",
            "dev-u",
        ],
    );
    wait_for(
        "readings before the unplug",
        Duration::from_secs(30),
        || logged_values(&gateway, "dev-u").len() >= 400,
    );
    cable.unplug();
    let before = logged_values(&gateway, "dev-u").len();
    let _cable = Cable::plug(dir.path());
    let report = report(sim);
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    let values = logged_values(&gateway, "dev-u");
    assert!(values.len() > before, "ingest resumed after the replug");
    assert_exactly_once_in_order(&values, 2000);
}

#[test]
fn a_lines_port_appends_one_record_per_text_line() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::plug(dir.path());
    let gateway = start_gateway(dir.path(), &cable.gateway_end, "lines");
    let mut tty = std::fs::OpenOptions::new()
        .write(true)
        .open(&cable.device_end)
        .unwrap();
    tty.write_all(b"$GPGGA,123519,4807.038,N\r\n21.5,48.2\n\n")
        .unwrap();
    tty.flush().unwrap();
    let payloads = || -> Vec<String> {
        gateway
            .dump()
            .iter()
            .map(|r| r["payload"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_for("two lines in the log", Duration::from_secs(20), || {
        payloads().len() >= 2
    });
    assert_eq!(
        payloads(),
        vec![
            "$GPGGA,123519,4807.038,N".to_string(),
            "21.5,48.2".to_string()
        ]
    );
}
