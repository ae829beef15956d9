//! Shared by the replication tests: a real Kafka-API broker (tansu, one per
//! test, on a free port, SQLite storage in a temp dir), MQTT publishers, and
//! two independent readers of what arrived upstream (rdkafka from Rust, and
//! the confluent-kafka Python package).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let out = Command::new(tansu())
            .args(args)
            .args(["--broker", &format!("tcp://{}", self.bootstrap())])
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
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

/// One record as read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upstream {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Upstream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// (local topic, local partition, local offset) from the tidewell headers.
    pub fn origin(&self) -> (String, u32, u64) {
        (
            self.header("tidewell.topic").unwrap().to_string(),
            self.header("tidewell.partition").unwrap().parse().unwrap(),
            self.header("tidewell.offset").unwrap().parse().unwrap(),
        )
    }
}

/// Every record of `topic` (all `partitions`), with rdkafka.
pub fn consume_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Upstream> {
    consume_all_with(bootstrap, topic, partitions, &[])
}

/// As [`consume_all`], with extra client settings (security).
pub fn consume_all_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Vec<Upstream> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "replicate-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::BTreeSet::new();
    for p in 0..partitions {
        // A busy broker can miss one metadata deadline: retry a few.
        let (low, high) = (0..6)
            .find_map(|_| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .ok()
            })
            .unwrap_or_else(|| panic!("no watermarks for {topic}/{p} within 60 s"));
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            open.insert(p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    // An idle deadline: a long read that keeps moving is not cut short.
    const IDLE: Duration = Duration::from_secs(120);
    let mut deadline = Instant::now() + IDLE;
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "consuming {topic}: nothing for {IDLE:?} ({} records read)",
            out.len()
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            // librdkafka reconnects by itself: a dropped connection is news,
            // not the end of the read.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
            ))) => {}
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(m)) => {
                deadline = Instant::now() + IDLE;
                out.push(Upstream {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
        }
    }
    out
}

const PY_CONSUMER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, TopicPartition, KafkaError
bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({'bootstrap.servers': bootstrap, 'group.id': 'replicate-test-py',
              'enable.auto.commit': False, 'enable.partition.eof': True})
parts = []
def watermarks(p):
    for attempt in range(6):
        try:
            return c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        except Exception as e:  # a busy broker can miss one deadline
            err = e
    sys.exit('no watermarks for %s/%d: %s' % (topic, p, err))
for p in range(partitions):
    lo, hi = watermarks(p)
    if hi > lo:
        parts.append(TopicPartition(topic, p, lo))
c.assign(parts)
open_parts = {tp.partition for tp in parts}
count = 0
deadline = time.time() + 120
while open_parts:
    m = c.poll(1)
    if m is None:
        if time.time() > deadline:
            sys.exit('nothing for 120 s after %d records, open partitions %s' % (count, open_parts))
        continue
    count += 1
    deadline = time.time() + 120
    if m.error():
        if m.error().code() == KafkaError._PARTITION_EOF:
            open_parts.discard(m.partition())
            continue
        sys.exit(str(m.error()))
    h = {k: (v or b'').decode('utf-8', 'replace') for k, v in (m.headers() or [])}
    print(json.dumps({'partition': m.partition(), 'offset': m.offset(),
                      'key': (m.key() or b'').decode('utf-8', 'replace'),
                      'value': m.value().decode('utf-8', 'replace'), 'headers': h}))
"#;

/// Every record of `topic` as JSON values, read by confluent-kafka (Python),
/// sorted by (partition, offset): the consumer interleaves partitions in
/// whatever order its fetches return.
pub fn consume_all_python(
    dir: &Path,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<serde_json::Value> {
    let script = dir.join("consume.py");
    std::fs::write(&script, PY_CONSUMER).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([bootstrap, topic, &partitions.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "confluent-kafka consumer failed (pip install confluent-kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    records
}

/// Publishes `devices/<device>/temp` with payloads `<device>:<seq>` for every
/// seq, QoS 1, and returns once every one is acknowledged.
pub fn publish(port: u16, device: &str, seqs: std::ops::Range<usize>) {
    let mut options = MqttOptions::new(device, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut connection) = Client::new(options, 256);
    let total = seqs.len();
    let topic = format!("devices/{device}/temp");
    let device = device.to_string();
    let sender = std::thread::spawn(move || {
        for seq in seqs {
            client
                .publish(&topic, QoS::AtLeastOnce, false, format!("{device}:{seq}"))
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == total {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("mqtt publish: {e}"),
        }
    }
    let _ = sender.join().unwrap().disconnect();
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// The running gateway's replication status file, once written.
pub fn status(data_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read(data_dir.join("replicate.status.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether every partition in the status is replicated up to its log end
/// and the log holds at least `min_records` in total.
pub fn drained(data_dir: &Path, min_records: u64) -> bool {
    let Some(s) = status(data_dir) else {
        return false;
    };
    let parts = s["partitions"].as_array().cloned().unwrap_or_default();
    let end: u64 = parts
        .iter()
        .map(|p| p["log_end"].as_u64().unwrap_or(0))
        .sum();
    end >= min_records
        && parts
            .iter()
            .all(|p| p["replicated"].as_u64() == p["log_end"].as_u64())
}

/// Per key, the sequence numbers in upstream order; and the number of
/// records whose (local topic, partition, offset) was seen before.
pub fn by_key(records: &[Upstream]) -> (BTreeMap<String, Vec<usize>>, usize) {
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in &sorted {
        if !seen.insert(r.origin()) {
            duplicates += 1;
            continue; // keys list first occurrences; duplicates are counted
        }
        let value = String::from_utf8_lossy(&r.value).to_string();
        let (device, seq) = value.split_once(':').unwrap();
        keys.entry(device.to_string())
            .or_default()
            .push(seq.parse().unwrap());
    }
    (keys, duplicates)
}
