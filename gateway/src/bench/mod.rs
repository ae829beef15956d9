//! Benchmarks: each measures Tidewell and the peer named in its issue side by
//! side in one run, on this machine, and prints ratios.

pub mod connect;
pub mod log;
#[cfg(feature = "bench-mqtt")]
pub mod mqtt;
pub mod open;
pub mod replicate;
#[cfg(feature = "sim")]
pub mod serial;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use anyhow::Context;

/// Reads tidewell's stderr up to its `ready` line; keeps draining it after.
pub fn wait_ready(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("tidewell: ready ").and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix("mqtt="))
            }) {
                let _ = tx.send(addr.to_string());
            } else if !line.starts_with("tidewell: ready") {
                eprintln!("{line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("tidewell did not print its ready line")?;
    Ok(addr.parse()?)
}

#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Mosquitto 2 with its defaults (no persistence, anonymous loopback
/// clients) on a free loopback port, once it listens.
pub fn start_mosquitto() -> anyhow::Result<(Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            stop(&mut child);
            anyhow::bail!("mosquitto did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}
