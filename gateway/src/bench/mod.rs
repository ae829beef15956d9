//! Benchmarks: each measures Tidewell and the peer named in its issue side by
//! side in one run, on this machine, and prints ratios.

pub mod bridge;
pub mod connect;
pub mod http;
pub mod journal;
pub mod log;
pub mod modbus;
#[cfg(feature = "bench-mqtt")]
pub mod mqtt;
pub mod open;
pub mod proxy;
pub mod replicate;
#[cfg(feature = "sim")]
pub mod serial;
#[cfg(feature = "bench-mqtt")]
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use anyhow::Context;

/// Starts `tidewell run --config CONFIG` (this binary) and waits, at most
/// 30 s, for its `ready` line; returns the child and its MQTT address (none
/// when MQTT is off). Its stderr is drained after that.
pub fn start_gateway(config: &std::path::Path) -> anyhow::Result<(Child, Option<SocketAddr>)> {
    let (child, ready) = start_gateway_ready(config)?;
    Ok((child, ready.addr("mqtt")?))
}

/// The gateway's `ready` line: `tidewell: ready mqtt=ADDR http=ADDR ...`.
pub struct Ready(String);

impl Ready {
    /// The address named `name` (`mqtt`, `http`, ...), if the line has one.
    pub fn addr(&self, name: &str) -> anyhow::Result<Option<SocketAddr>> {
        let prefix = format!("{name}=");
        Ok(self
            .0
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .map(str::parse)
            .transpose()?)
    }
}

/// As [`start_gateway`], returning the whole ready line.
pub fn start_gateway_ready(config: &std::path::Path) -> anyhow::Result<(Child, Ready)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(config)
        .env("TIDEWELL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting tidewell")?;
    match wait_ready(&mut child) {
        Ok(line) => Ok((child, Ready(line))),
        Err(e) => {
            stop(&mut child);
            Err(e)
        }
    }
}

/// Reads the child's stderr up to its `ready` line (other lines are passed
/// on) and returns it.
fn wait_ready(child: &mut Child) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("tidewell: ready") {
                let _ = tx.send(line);
            } else {
                eprintln!("{line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("tidewell did not print its ready line")
}

/// `GET path` on the gateway's loopback HTTP port, as JSON.
pub fn http_get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = crate::observe::get(&addr.to_string(), path)?;
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}

#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A socat pseudo-terminal pair in `dir`: the gateway's end (`ttyGW`) and
/// the device's end (`ttyDEV`), both there when this returns.
pub fn pty_pair(
    dir: &std::path::Path,
) -> anyhow::Result<(KillOnDrop, std::path::PathBuf, std::path::PathBuf)> {
    let (gw_end, dev_end) = (dir.join("ttyGW"), dir.join("ttyDEV"));
    let socat = KillOnDrop(
        std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", gw_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", dev_end.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting socat (apt-get install socat)")?,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(gw_end.exists() && dev_end.exists()) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("socat made no pseudo-terminals in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20)); // socat has no ready signal
    }
    Ok((socat, gw_end, dev_end))
}

/// User plus system CPU time of a process so far (`/proc/PID/stat`).
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(11) + field(12)) / per_second)
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
