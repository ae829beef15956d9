//! The systemd unit as systemd's own tools see it, and the notify/watchdog
//! protocol spoken by the real binary to a real `NOTIFY_SOCKET`.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Launch, BIN};

fn unit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/tidewell.service")
}

/// The unit with its ExecStart pointing at the binary under test, since
/// `systemd-analyze verify` checks that the command exists.
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_source())
        .unwrap()
        .replace("/usr/local/bin/tidewell", BIN);
    let path = dir.join("tidewell.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tidewell.service"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{stderr}");
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(unit_source())
        .output()
        .expect("systemd-analyze (Debian systemd)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tidewell.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{stdout}");
}

#[test]
fn ready_and_watchdog_arrive_on_the_notify_socket_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let data = harness::data_dir(dir.path());
    let config = format!(
        "{}[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        harness::data_dir_line(dir.path())
    );
    // Readiness here is the notify socket's, not the ready line's.
    let mut gateway = Launch::config(dir.path(), &config)
        .env("NOTIFY_SOCKET", socket_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    let mut seen: Vec<String> = Vec::new();
    let receive_until = |what: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.iter().any(|m| m.lines().any(|l| l == what)) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s; got {seen:?}"
            );
            let mut buf = [0u8; 256];
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    receive_until("READY=1", &mut seen);
    assert!(
        data.join("ingest/0/00000000000000000000.log").exists(),
        "READY=1 comes after the log is open"
    );
    receive_until("WATCHDOG=1", &mut seen);
    gateway.terminate();
    receive_until("STOPPING=1", &mut seen);
    let status = gateway.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
