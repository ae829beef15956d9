//! A real Kafka-API broker for the replication tests: tansu, one per test,
//! on a free port, SQLite storage in the test's directory; and socat as a
//! TLS front for it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, run, wait_until};

/// A tansu broker. Killed on drop; its SQLite file stays in `dir`.
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub dir: PathBuf,
    /// SASL (SCRAM) required of every client.
    pub authentication: bool,
    /// The port advertised to clients when a TLS front sits before it.
    pub advertised_port: Option<u16>,
    child: Option<Child>,
}

fn tansu() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = format!("{home}/.cargo/bin/tansu");
    if Path::new(&cargo_bin).exists() {
        cargo_bin
    } else {
        "tansu".into()
    }
}

impl Broker {
    /// Starts tansu in `dir` (its working directory: no `.env` there).
    pub fn start(dir: &Path) -> Broker {
        Broker::start_on(dir, "127.0.0.1")
    }

    /// Starts tansu listening on `host` (an address of this machine).
    pub fn start_on(dir: &Path, host: &str) -> Broker {
        let mut broker = Broker {
            host: host.to_string(),
            port: free_port(),
            dir: dir.to_path_buf(),
            authentication: false,
            advertised_port: None,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://{}", self.bootstrap());
        let advertised = format!(
            "tcp://{}:{}",
            self.host,
            self.advertised_port.unwrap_or(self.port)
        );
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .current_dir(&self.dir)
            .env_remove("CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu not found: cargo install tansu@0.6.0 --locked --features libsql");
        self.child = Some(child);
        let addr: SocketAddr = self.bootstrap().parse().unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "tansu did not listen on {addr}");
        self.index_headers();
    }

    /// tansu 0.6's SQLite schema has no index on record headers, and its
    /// fetch looks each record's headers up with a scan of that table: with
    /// 10,000 records of 8 headers a fetch took over librdkafka's 60 s
    /// request timeout and confluent-kafka's reader never got a record
    /// (with the index: about a second). The schema exists once it listens.
    fn index_headers(&self) {
        let script = "import sqlite3, sys\n\
                      db = sqlite3.connect(sys.argv[1], timeout=30)\n\
                      db.execute('create index if not exists header_topition_offset on header(topition, offset_id)')\n\
                      db.commit()\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(self.dir.join("tansu.db"))
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "indexing tansu's headers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker (the outage); `restart` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// tansu 0.6.0's SQLite storage task can panic under load ("more or
    /// less than one row", `tansu-storage` lite.rs:503); the process stays
    /// up but answers every request with an error until restarted.
    pub fn has_panicked(&self) -> bool {
        std::fs::read_to_string(self.dir.join("tansu.log"))
            .is_ok_and(|text| text.contains("panicked"))
    }

    /// Restarts the broker if its storage task panicked; says whether it did.
    pub fn revive(&mut self) -> bool {
        if !self.is_running() || !self.has_panicked() {
            return false;
        }
        let _ = std::fs::copy(
            self.dir.join("tansu.log"),
            self.dir
                .join(format!("tansu.panicked.{}.log", fastrand::u32(..))),
        );
        self.stop();
        self.restart();
        true
    }

    /// The end of the broker's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let first_errors: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains("panicked") || l.contains("ERROR"))
            .take(5)
            .copied()
            .collect();
        format!(
            "first errors:\n{}\n...\n{}",
            first_errors.join("\n"),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let partitions = partitions.to_string();
        self.cli(&["topic", "create", name, "--partitions", &partitions]);
    }

    /// Runs a `tansu` admin command against this broker; it must succeed.
    fn cli(&self, args: &[&str]) {
        run(
            Command::new(tansu())
                .args(args)
                .args(["--broker", &format!("tcp://{}", self.bootstrap())])
                .current_dir(&self.dir),
            &[0],
        );
    }
}

impl Broker {
    /// A SCRAM-SHA-512 user (stored by the broker; takes effect once
    /// authentication is on).
    pub fn create_user(&self, name: &str, password: &str) {
        self.cli(&["user", "create", name, password, "--mechanism", "scram512"]);
    }

    /// Restarts the broker requiring SASL, advertising `advertised_port`
    /// (a TLS front's) to clients.
    pub fn require_authentication(&mut self, advertised_port: u16) {
        self.stop();
        self.authentication = true;
        self.advertised_port = Some(advertised_port);
        self.restart();
    }
}

/// TLS in front of a broker (tansu 0.6.0's `--cert` and `--key` cannot be
/// given together): socat terminates TLS with `cert`/`key` on `port` and
/// forwards to the broker. Killed on drop.
pub struct TlsFront {
    pub port: u16,
    child: Child,
}

impl TlsFront {
    pub fn start(port: u16, cert: &Path, key: &Path, broker: &Broker) -> TlsFront {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.display(),
            key.display()
        );
        let child = Command::new("socat")
            .arg(listen)
            .arg(format!("TCP:{}", broker.bootstrap()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (apt-get install socat)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "socat did not listen on {addr}");
        TlsFront { port, child }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
