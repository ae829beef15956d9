//! Shared by the MQTT integration tests: runs the real `tidewell` binary on
//! a port it picks itself (port 0, read back from its `ready` line) and
//! reads its log back with `tidewell log dump`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidewell");

/// A running gateway. Killed (SIGKILL) on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// Every line the gateway wrote on stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `tidewell run --config <dir>/tidewell.toml` with `config` and
    /// waits (with a deadline) for its `ready` line.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        Gateway::start_with_env(dir, config, &[])
    }

    /// As [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(dir, config, env, None)
    }

    /// As [`Gateway::start`], under a descriptor limit of `nofile` (soft and
    /// hard, so the gateway cannot raise it).
    pub fn start_with_nofile(dir: &Path, config: &str, nofile: u64) -> Gateway {
        Gateway::spawn(dir, config, &[], Some(nofile))
    }

    fn spawn(dir: &Path, config: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Gateway {
        use std::os::unix::process::CommandExt;
        let path = dir.join("tidewell.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .env("TIDEWELL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; it runs in the forked
            // child before exec and touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("spawn tidewell");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.starts_with("tidewell: ready") {
                    let _ = ready_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let ready = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not become ready:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(|a| a.parse::<SocketAddr>().unwrap())
        };
        Gateway {
            child,
            addr: field("mqtt=").expect("mqtt address in the ready line"),
            tls_addr: field("mqtts="),
            http_addr: field("http="),
            stderr,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGKILL: no clean shutdown, no final sync.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not stop on SIGTERM");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The sum of the `/metrics` samples whose line starts with `name`
    /// (a family name, or a name with its labels); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let http = self.http_addr.expect("http address").to_string();
        let text = tidewell::observe::get(&http, "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tidewell log dump` of `data_dir`, one JSON value per record.
pub fn dump(data_dir: &Path) -> Vec<serde_json::Value> {
    dump_text(data_dir)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `tidewell log dump` of `data_dir` as printed: one JSON object a line.
pub fn dump_text(data_dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["log", "dump", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "log dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

/// Fails clearly when the Debian mosquitto clients are missing (CI installs
/// them: `apt-get install -y mosquitto-clients mosquitto`).
pub fn require_mosquitto_clients() {
    let found = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "mosquitto_pub not found: apt-get install -y mosquitto-clients"
    );
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The `data_dir` line of a config, TOML-quoted.
pub fn data_dir_line(dir: &Path) -> String {
    format!("data_dir = {:?}\n", data_dir(dir).to_str().unwrap())
}

/// A CA, a server certificate for 127.0.0.1, and a client certificate.
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
