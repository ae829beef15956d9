//! The one way integration tests start and inspect the real `tidewell`
//! binary. Every test file includes it with
//! `#[path = "harness/mod.rs"] mod harness;`; the replication tests add
//! `#[path = "harness/kafka.rs"] mod kafka;` (the rdkafka and confluent-kafka
//! readers of what arrived upstream, and the replicator's status file).
//!
//! | module | what it gives |
//! | --- | --- |
//! | [`gateway`] | [`Launch`] (config text or file, or the embedded defaults; environment; a command to run inside, such as `ip netns exec NS`; a descriptor limit) and [`Gateway`], the running process: its addresses from the ready line, its stderr, `/metrics` and `/status`, its log, SIGTERM and SIGKILL, restart |
//! | [`tansu`] | a Kafka-API broker per test, and a TLS front for it |
//! | [`mosquitto`] | the Debian MQTT clients |
//! | [`broker`] | a Mosquitto 2 broker with persistence, stopped and started at will |
//! | [`mqtt`] | a rumqttc publisher |
//! | here | the CLI (`tidewell ARGS`, `log dump`, `log verify`, `mqtt hash-password`), a raw HTTP client, [`wait_until`], temp and data directories, test certificates |
// Each test file uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod gateway;
pub mod mosquitto;
pub mod mqtt;
pub mod pty;
pub mod tansu;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use gateway::{Exited, Gateway, Launch, Stderr};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidewell");
/// The start of the line the gateway prints once it serves, followed by
/// `name=address` for every bound listener (`mqtt=`, `mqtts=`, `http=`, ...).
pub const READY: &str = "tidewell: ready";

/// Waits for `condition` with a deadline; fails the test naming `what`.
pub fn wait_for(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, condition),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `condition` until it holds or `timeout` passes; says whether it
/// held. The conditions are other processes' state (a file, a socket, a
/// log line), so this polls: every 10 ms at first, backing off to 50 ms.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    condition()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The data directory the tests' configs use: `<dir>/data`.
pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The `data_dir` line of a config, TOML-quoted.
pub fn data_dir_line(dir: &Path) -> String {
    format!("data_dir = {:?}\n", data_dir(dir).to_str().unwrap())
}

/// Writes `text` to `<dir>/tidewell.toml` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tidewell.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to its end, failing the test with its output unless it exits
/// with one of `ok`.
pub fn run(cmd: &mut Command, ok: &[i32]) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        ok.contains(&code),
        "{cmd:?} exited with {code}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tidewell ARGS`, run to its end in `cwd` (the test's own when `None`).
pub fn tidewell(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command.output().expect("the binary runs")
}

/// stdout and stderr of `output`, as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tidewell log dump` of `data_dir`, one JSON value per record; the dump
/// must succeed.
pub fn dump(data_dir: &Path) -> Vec<serde_json::Value> {
    dump_text(data_dir)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `tidewell log dump` of `data_dir` as printed: one JSON object a line.
pub fn dump_text(data_dir: &Path) -> String {
    let out = log_command("dump", data_dir);
    assert!(
        out.status.success(),
        "log dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What `tidewell log dump` prints of a log a running gateway is still
/// appending to: every line that parses, whatever the dump exits with.
pub fn dump_live(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = log_command("dump", data_dir);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// `tidewell log verify --json` of `data_dir`: its report (exit 0 when
/// healthy, 1 when damaged; anything else fails the test).
pub fn verify_json(data_dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["log", "verify", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "log verify exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn log_command(command: &str, data_dir: &Path) -> Output {
    Command::new(BIN)
        .args(["log", command, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap()
}

/// The value of header `name` of a dumped record.
pub fn header<'a>(record: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    record["headers"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)?["value"]
        .as_str()
}

/// An argon2 hash made by `tidewell mqtt hash-password`.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["mqtt", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// (status code, body) of a raw HTTP/1.1 request to `addr`; panics when
/// nothing answers.
pub fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    try_request(addr, method, path).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

/// The body of a 200 answer to `GET path`, or what went wrong (the status
/// line, or the connection error) otherwise.
pub fn get(addr: &str, path: &str) -> Result<String, String> {
    match try_request(addr, "GET", path) {
        Ok((200, body)) => Ok(body),
        Ok((code, _)) => Err(format!("{addr}{path} answered {code}")),
        Err(e) => Err(format!("{addr}{path}: {e}")),
    }
}

fn try_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A CA, a server certificate for 127.0.0.1, and a client certificate, as
/// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key` in `dir`.
pub fn make_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tidewell test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, purpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(vec!["sensor-1".into()], ExtendedKeyUsagePurpose::ClientAuth);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
}
