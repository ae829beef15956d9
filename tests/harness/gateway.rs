//! `tidewell run` as the tests start it: a [`Launch`] says how, a
//! [`Gateway`] is the running process. Killed (SIGKILL) when dropped, so a
//! failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{wait_until, write_config, BIN, READY};

/// How long a start may take before the test fails with the gateway's stderr.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a clean stop on SIGTERM may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Runs the rest of the command line with a loopback of its own (see
/// [`Launch::own_network_if_root`]).
const OWN_NETWORK: [&str; 5] = [
    "unshare",
    "--net",
    "sh",
    "-c",
    "ip link set lo up && exec \"$0\" \"$@\"",
];

#[derive(Clone, Debug)]
enum Config {
    /// Written to `<dir>/tidewell.toml` at each start.
    Text(String),
    /// A file the test wrote itself.
    File(PathBuf),
    /// No `--config`: the embedded defaults, relative to the working directory.
    Embedded,
}

/// How to start a gateway. Cloneable: [`Gateway::restart`] starts the same
/// one again.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The gateway's working directory, where a config text is written.
    dir: PathBuf,
    config: Config,
    /// Variables set (`Some`) or removed (`None`) in the gateway's environment.
    env: Vec<(String, Option<String>)>,
    /// A command line the gateway runs inside (`ip netns exec NS`).
    prefix: Vec<String>,
    /// RLIMIT_NOFILE, soft and hard, so the gateway cannot raise it.
    nofile: Option<u64>,
    /// How long [`Launch::start`] waits for the ready line, and
    /// [`Launch::run_to_exit`] for the exit.
    ready_within: Duration,
}

impl Launch {
    /// `tidewell run --config <dir>/tidewell.toml`, with `text` written there.
    pub fn config(dir: &Path, text: &str) -> Launch {
        Launch::new(dir, Config::Text(text.to_string()))
    }

    /// `tidewell run --config <path>`, in `dir`.
    pub fn config_file(dir: &Path, path: &Path) -> Launch {
        Launch::new(dir, Config::File(path.to_path_buf()))
    }

    /// `tidewell run` without a config, in `dir`: the embedded defaults.
    pub fn embedded_defaults(dir: &Path) -> Launch {
        Launch::new(dir, Config::Embedded)
    }

    /// Logs at `info`, without colours (`TIDEWELL_LOG=info`, `NO_COLOR=1`)
    /// unless the test changes that.
    fn new(dir: &Path, config: Config) -> Launch {
        Launch {
            dir: dir.to_path_buf(),
            config,
            env: Vec::new(),
            prefix: Vec::new(),
            nofile: None,
            ready_within: READY_TIMEOUT,
        }
        .env("TIDEWELL_LOG", "info")
        .env("NO_COLOR", "1")
    }

    pub fn env(self, key: &str, value: &str) -> Launch {
        self.set_env(key, Some(value))
    }

    pub fn envs(self, vars: &[(&str, &str)]) -> Launch {
        vars.iter().fold(self, |l, (k, v)| l.env(k, v))
    }

    /// Leaves `key` out of the gateway's environment (also one of the
    /// harness's defaults, or one the test runner has).
    pub fn env_remove(self, key: &str) -> Launch {
        self.set_env(key, None)
    }

    fn set_env(mut self, key: &str, value: Option<&str>) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.map(str::to_string)));
        self
    }

    /// Runs the gateway as the last argument of `prefix`, e.g.
    /// `["ip", "netns", "exec", NS]`. The prefix must exec the gateway (not
    /// fork it), so that signals reach it.
    pub fn inside(mut self, prefix: &[&str]) -> Launch {
        self.prefix = prefix.iter().map(|s| String::from(*s)).collect();
        self
    }

    /// The embedded defaults bind fixed loopback ports (1883, 9464), which a
    /// broker installed on the machine (Debian starts mosquitto on 1883) may
    /// hold: as root the run gets a network namespace of its own, with only a
    /// loopback, so the test measures Tidewell alone. Elsewhere unchanged.
    pub fn own_network_if_root(self) -> Launch {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let isolated = root
            && Command::new("unshare")
                .args(["--net", "true"])
                .status()
                .is_ok_and(|s| s.success());
        if isolated {
            self.inside(&OWN_NETWORK)
        } else {
            self
        }
    }

    /// Starts the gateway under a descriptor limit of `nofile`.
    pub fn nofile(mut self, nofile: u64) -> Launch {
        self.nofile = Some(nofile);
        self
    }

    /// How long to wait for the ready line (30 s unless set).
    pub fn ready_within(mut self, limit: Duration) -> Launch {
        self.ready_within = limit;
        self
    }

    /// Starts the gateway and waits for its ready line; fails the test with
    /// the gateway's stderr if it does not come in time.
    pub fn start(self) -> Gateway {
        let mut gateway = self.spawn();
        gateway.wait_ready();
        gateway
    }

    /// Starts the gateway without waiting for anything.
    pub fn spawn(self) -> Gateway {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program()));
        let stderr = Stderr::default();
        let (ready_tx, ready) = mpsc::channel();
        let reader = stderr.collect(child.stderr.take().unwrap(), ready_tx);
        Gateway {
            child,
            launch: self,
            addrs: BTreeMap::new(),
            stderr,
            ready,
            reader: Some(reader),
        }
    }

    /// Runs the gateway until it exits by itself (a config it refuses);
    /// fails the test if it still runs after the ready timeout.
    pub fn run_to_exit(self) -> Exited {
        let limit = self.ready_within;
        let mut gateway = self.spawn();
        let status = gateway.wait_exit(limit);
        if let Some(reader) = gateway.reader.take() {
            let _ = reader.join(); // the pipe is at its end: the process is gone
        }
        Exited {
            status,
            stderr: gateway.stderr_text(),
        }
    }

    fn program(&self) -> &str {
        self.prefix.first().map_or(BIN, String::as_str)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(self.program());
        command.args(self.prefix.iter().skip(1));
        if !self.prefix.is_empty() {
            command.arg(BIN);
        }
        command.arg("run");
        match &self.config {
            Config::Text(text) => {
                command.arg("--config").arg(write_config(&self.dir, text));
            }
            Config::File(path) => {
                command.arg("--config").arg(path);
            }
            Config::Embedded => {}
        }
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(n) = self.nofile {
            limit_descriptors(&mut command, n);
        }
        command
    }

    /// Where the gateway keeps its log: the config's `data_dir` (relative
    /// to the working directory), or the embedded default.
    fn data_dir(&self) -> PathBuf {
        let text = match &self.config {
            Config::Text(text) => text.clone(),
            Config::File(path) => std::fs::read_to_string(path).unwrap(),
            Config::Embedded => String::new(),
        };
        let table: toml::Table = text.parse().expect("the config is TOML");
        let dir = table
            .get("data_dir")
            .and_then(|d| d.as_str())
            .unwrap_or("tidewell-data");
        self.dir.join(dir)
    }
}

#[allow(unsafe_code)]
fn limit_descriptors(command: &mut Command, nofile: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: setrlimit is async-signal-safe; it runs in the forked child
    // before exec and touches nothing else.
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

/// A run that ended by itself.
pub struct Exited {
    pub status: ExitStatus,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Every line a gateway wrote on stderr so far; a clone reads the same
/// lines (and outlives the gateway, for failure messages).
#[derive(Clone, Default)]
pub struct Stderr(Arc<Mutex<Vec<String>>>);

impl Stderr {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Keeps every line of `pipe`; sends the ready line on `ready` as well.
    fn collect(&self, pipe: ChildStderr, ready: mpsc::Sender<String>) -> JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let is_ready = line.starts_with(READY);
                lines.lock().unwrap().push(line.clone());
                if is_ready {
                    let _ = ready.send(line);
                }
            }
        })
    }
}

/// A running `tidewell run`. SIGKILLed on drop.
pub struct Gateway {
    child: Child,
    launch: Launch,
    /// From the ready line, by name: `mqtt`, `mqtts`, `http`, and whatever
    /// else a source binds.
    addrs: BTreeMap<String, SocketAddr>,
    stderr: Stderr,
    /// The ready line, once the stderr reader sees it.
    ready: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl Gateway {
    /// `tidewell run` with `config` (written to `<dir>/tidewell.toml`),
    /// waited for until ready.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        Launch::config(dir, config).start()
    }

    fn wait_ready(&mut self) {
        match self.ready.recv_timeout(self.launch.ready_within) {
            Ok(line) => self.addrs = parse_ready_line(&line),
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "gateway did not become ready ({}):\n{}",
                    match e {
                        mpsc::RecvTimeoutError::Timeout =>
                            format!("no ready line within {:?}", self.launch.ready_within),
                        mpsc::RecvTimeoutError::Disconnected => "it exited".to_string(),
                    },
                    self.stderr_text()
                );
            }
        }
    }

    /// The MQTT listener's address; the ready line must name it.
    pub fn mqtt(&self) -> SocketAddr {
        self.addr("mqtt").expect("mqtt address in the ready line")
    }

    /// The MQTT listener's port.
    pub fn port(&self) -> u16 {
        self.mqtt().port()
    }

    /// The MQTT-over-TLS listener's address, if it listens.
    pub fn mqtts(&self) -> Option<SocketAddr> {
        self.addr("mqtts")
    }

    /// The HTTP endpoint's address, if it listens.
    pub fn http(&self) -> Option<SocketAddr> {
        self.addr("http")
    }

    /// The address the ready line gives for `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (a clean stop) without waiting; nothing if it has
    /// exited already.
    #[allow(unsafe_code)]
    pub fn terminate(&mut self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped
        // yet (try_wait just found it running), so it is not recycled.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the gateway to exit; fails the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut status = None;
        let child = &mut self.child;
        wait_until(limit, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| {
            panic!(
                "the gateway did not exit within {limit:?}:\n{}",
                self.stderr_text()
            )
        })
    }

    /// SIGTERM, and a clean exit within 20 s; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        self.wait_exit(STOP_TIMEOUT)
    }

    /// SIGKILL: no clean shutdown, no final sync.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then the same launch again, waited for until ready.
    pub fn restart(mut self) -> Gateway {
        self.kill_now();
        self.launch.clone().start()
    }

    /// A handle on the stderr lines, which stays readable after the gateway is gone.
    pub fn stderr(&self) -> Stderr {
        self.stderr.clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.contains(needle)
    }

    /// The first line the gateway writes on stderr (waited for).
    pub fn first_stderr_line(&self) -> String {
        let limit = self.launch.ready_within;
        let written = wait_until(limit, || !self.stderr.lines().is_empty());
        assert!(written, "nothing on stderr within {limit:?}");
        self.stderr.lines().remove(0)
    }

    fn http_text(&self) -> String {
        self.http()
            .expect("http address in the ready line")
            .to_string()
    }

    /// (status code, body) of `METHOD path` on the HTTP endpoint.
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        super::request(&self.http_text(), method, path)
    }

    /// The body of a 200 answer to `GET path`, or what went wrong. A
    /// gateway started [`Launch::inside`] a namespace is asked from there.
    pub fn get(&self, path: &str) -> Result<String, String> {
        if self.launch.prefix.is_empty() {
            return super::get(&self.http_text(), path);
        }
        let url = format!("http://{}{path}", self.http_text());
        let fetch = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())";
        let out = Command::new(&self.launch.prefix[0])
            .args(&self.launch.prefix[1..])
            .args(["python3", "-c", fetch, &url])
            .output()
            .map_err(|e| format!("{url}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{url}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The sum of the `/metrics` samples whose line starts with `name`
    /// (a family name, or a name with its labels); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// `/status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let body = self.get("/status").unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
    }

    /// The gateway's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.launch.data_dir()
    }

    /// The records in its log so far (read while it appends, see
    /// [`super::dump_live`]).
    pub fn dump(&self) -> Vec<serde_json::Value> {
        super::dump_live(&self.data_dir())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// `name=address` for every word of the ready line after its start.
fn parse_ready_line(line: &str) -> BTreeMap<String, SocketAddr> {
    line.trim_start_matches(READY)
        .split_whitespace()
        .map(|word| {
            let (name, addr) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("{word:?} in the ready line is not name=address"));
            let addr = addr
                .parse()
                .unwrap_or_else(|e| panic!("{word:?} in the ready line: {e}"));
            (name.to_string(), addr)
        })
        .collect()
}
