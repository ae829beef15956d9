//! `tidewell bench replicate`: fill a local log with N records (default one
//! million of 100 bytes), then time a `tidewell run` process draining it to
//! a Kafka-API broker; in the same run, time confluent-kafka's producer
//! (Python, same idempotence, acks, batching and compression settings)
//! sending the same records, read from a file, to the same broker.
//!
//! The broker is tansu on a free port with SQLite storage (started here), or
//! any cluster given with `--bootstrap` (then create the topics
//! `bench.tidewell`, `bench.reference` and `bench.reference-headers` with
//! `--partitions` partitions). The reference runs twice: plain records, and
//! records with the same four `tidewell.*` headers Tidewell adds (tansu
//! stores headers at a cost per header, so only the second is like for like).
//! Tidewell's time runs from process start to the last acknowledgement
//! (persisted cursor), so it includes start-up, the session and the remote
//! tail read; its records also carry the four `tidewell.*` headers. Peak RSS
//! of the draining process is read from /proc (VmHWM).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;

use crate::log::partition::{PartitionMeta, META_FILE};
use crate::log::{
    checkpoint, FsyncPolicy, Log, LogConfig, OsStorage, Partition, Record, TopicConfig,
};
use crate::replicate::client::producer_settings;
use crate::replicate::config::UpstreamCompression;
use crate::replicate::UpstreamConfig;

use super::KillOnDrop;

#[derive(Args, Debug, Clone)]
pub struct ReplicateBenchArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// none, lz4 or zstd (both producers).
    #[arg(long, default_value = "lz4")]
    pub compression: String,
    /// An existing cluster instead of a tansu started here.
    #[arg(long)]
    pub bootstrap: Option<String>,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The tansu binary to start (one built with `--features libsql,dynostore`
    /// for `--storage-engine memory://tansu/`).
    #[arg(long, default_value = "tansu")]
    pub tansu: String,
    /// Tansu's storage: SQLite (the default) or `memory://tansu/`, which
    /// takes records faster than either producer sends them.
    #[arg(long, default_value = "sqlite://tansu.db")]
    pub storage_engine: String,
}

/// How to start a tansu broker.
pub(super) struct Tansu<'a> {
    pub binary: &'a str,
    pub storage_engine: &'a str,
}

impl Tansu<'static> {
    pub const SQLITE: Tansu<'static> = Tansu {
        binary: "tansu",
        storage_engine: "sqlite://tansu.db",
    };
}

const LOCAL_TOPIC: &str = "bench";
const OURS: &str = "bench.tidewell";
const REFERENCE: &str = "bench.reference";
const REFERENCE_HEADERS: &str = "bench.reference-headers";

pub fn run(args: &ReplicateBenchArgs) -> anyhow::Result<()> {
    let root = std::path::absolute(args.dir.join(format!("replicate-{}", std::process::id())))?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(args: &ReplicateBenchArgs, root: &Path) -> anyhow::Result<()> {
    let compression: UpstreamCompression =
        serde_json::from_value(serde_json::json!(args.compression))
            .context("--compression: none, lz4 or zstd")?;
    let mut broker = None;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => {
            let topics = [OURS, REFERENCE, REFERENCE_HEADERS].map(String::from);
            let tansu = Tansu {
                binary: &args.tansu,
                storage_engine: &args.storage_engine,
            };
            let (child, addr) = start_tansu(&tansu, root, args.partitions, &topics, None)?;
            broker = Some(child);
            addr.to_string()
        }
    };
    let started = Instant::now();
    fill(root, args)?;
    println!(
        "bench replicate: {} records of {} bytes in {} partition(s), log filled in {:.1} s; broker {bootstrap}",
        args.records,
        args.value_bytes,
        args.partitions,
        started.elapsed().as_secs_f64()
    );
    let upstream = UpstreamConfig {
        bootstrap_servers: bootstrap.clone(),
        compression,
        ..UpstreamConfig::default()
    };
    let (ours, rss_kib) = drain(root, args, &bootstrap, &upstream)?;
    let plain = reference(root, args, &bootstrap, &upstream, REFERENCE, false)?;
    let headed = reference(root, args, &bootstrap, &upstream, REFERENCE_HEADERS, true)?;
    let rate = |s: f64| args.records as f64 / s;
    println!("tidewell drain (4 tidewell.* headers/record): {ours:>7.2} s {:>9.0} records/s  peak RSS {:.1} MiB", rate(ours), rss_kib as f64 / 1024.0);
    println!("confluent-kafka, plain records:               {plain:>7.2} s {:>9.0} records/s  ratio {:.2}x", rate(plain), plain / ours);
    println!("confluent-kafka, same 4 headers/record:       {headed:>7.2} s {:>9.0} records/s  ratio {:.2}x", rate(headed), headed / ours);
    println!("(ratio = reference time / tidewell time; above 1 means Tidewell is faster)");
    drop(broker);
    Ok(())
}

/// A free loopback port (bound, then released).
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Tansu on a free loopback port with SQLite storage in `root/broker`,
/// advertising `advertised_port` (a proxy in front of it) or its own, with
/// `topics` created; returns it and the address it listens on.
pub(super) fn start_tansu(
    tansu: &Tansu<'_>,
    root: &Path,
    partitions: u32,
    topics: &[String],
    advertised_port: Option<u16>,
) -> anyhow::Result<(KillOnDrop, SocketAddr)> {
    let dir = root.join("broker");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", advertised_port.unwrap_or(port));
    let child = Command::new(tansu.binary)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", tansu.storage_engine])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tansu (cargo install tansu@0.6.0 --locked --features libsql), or pass --bootstrap")?;
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("tansu did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for topic in topics {
        let status = Command::new("tansu")
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &url,
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("tansu topic create {topic} failed");
        }
    }
    Ok((child, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// The value of record `i` (also what the reference producer reads).
fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{i:012}-").into_bytes();
    v.resize(len, b'x');
    v
}

/// Appends the records to a fresh log and writes their values to a file.
fn fill(root: &Path, args: &ReplicateBenchArgs) -> anyhow::Result<()> {
    let topic = TopicConfig {
        partitions: args.partitions,
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    };
    let mut config = LogConfig::new(root.join("data")).with_topic(LOCAL_TOPIC, topic);
    config.min_free_bytes = 0;
    let log = Log::open(Arc::new(OsStorage), config)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(root.join("values.bin"))?);
    let batch = 1000u64;
    let mut i = 0;
    while i < args.records {
        let n = batch.min(args.records - i);
        let partition = Partition(((i / batch) % u64::from(args.partitions)) as u32);
        let records: Vec<Record> = (i..i + n)
            .map(|k| {
                let v = value(k, args.value_bytes);
                file.write_all(&v)?;
                Ok(Record {
                    timestamp_ms: crate::log::now_ms(),
                    key: None,
                    value: Bytes::from(v),
                    headers: Vec::new(),
                })
            })
            .collect::<std::io::Result<_>>()?;
        log.append(LOCAL_TOPIC, partition, records)?.wait()?;
        i += n;
    }
    file.flush()?;
    log.close();
    Ok(())
}

/// Runs `tidewell run` on the filled log until every partition's persisted
/// cursor reaches its end; returns seconds and the process's peak RSS.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
fn drain(
    root: &Path,
    args: &ReplicateBenchArgs,
    bootstrap: &str,
    upstream: &UpstreamConfig,
) -> anyhow::Result<(f64, u64)> {
    let config = format!(
        "data_dir = {data:?}\ngateway_id = \"bench\"\n\n[topics.{LOCAL_TOPIC}]\npartitions = {p}\nfsync = \"never\"\n\n[mqtt]\nenabled = false\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nbootstrap_servers = {bootstrap:?}\ncompression = {c:?}\ncheckpoint_interval_ms = 20\n\n[[upstream.mirror]]\nlocal = \"{LOCAL_TOPIC}\"\nremote = \"{OURS}\"\n",
        data = root.join("data").display().to_string(),
        p = args.partitions,
        c = upstream.compression.librdkafka_name(),
    );
    let path = root.join("tidewell.toml");
    std::fs::write(&path, config)?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&path)
        .env("TIDEWELL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut child = KillOnDrop(child);
    let per_partition = partition_counts(args);
    let mut peak = 0;
    loop {
        if let Some(kib) = super::status_kib(child.0.id(), "VmHWM:") {
            peak = peak.max(kib);
        }
        if drained(&root.join("data"), LOCAL_TOPIC, &per_partition) {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            bail!("tidewell run exited early: {status}");
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the drain did not finish within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    peak = peak.max(super::status_kib(child.0.id(), "VmHWM:").unwrap_or(0));
    // SAFETY: plain kill(2) on our own child's pid, for a clean stop.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let _ = child.0.wait();
    Ok((seconds, peak))
}

/// Records per partition, as `fill` spreads them (batches of 1000, round robin).
fn partition_counts(args: &ReplicateBenchArgs) -> Vec<u64> {
    let mut counts = vec![0u64; args.partitions as usize];
    let mut i = 0;
    while i < args.records {
        let n = 1000u64.min(args.records - i);
        counts[((i / 1000) % u64::from(args.partitions)) as usize] += n;
        i += n;
    }
    counts
}

/// Whether every partition of `topic` in the log at `data` has its
/// persisted replication cursor at (or past) `per_partition[p]`.
pub(super) fn drained(data: &Path, topic: &str, per_partition: &[u64]) -> bool {
    per_partition.iter().enumerate().all(|(p, &end)| {
        let path = data.join(topic).join(p.to_string()).join(META_FILE);
        match checkpoint::read::<PartitionMeta>(&OsStorage, &path) {
            Ok(Some(meta)) => meta.replicated.unwrap_or(0) >= end,
            _ => false,
        }
    })
}

const REFERENCE_PY: &str = r#"
import json, sys, time
from confluent_kafka import Producer
settings, path, topic, size, partitions = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with_headers = sys.argv[6] == '1' 
data = open(path, 'rb').read()
n = len(data) // size
p = Producer(settings)
batch = 1000
start = time.perf_counter()
for i in range(n):
    value = data[i * size:(i + 1) * size]
    part = (i // batch) % partitions
    while True:
        try:
            if with_headers:
                h = [('tidewell.gateway_id', b'bench'), ('tidewell.topic', b'bench'),
                     ('tidewell.partition', b'%d' % part), ('tidewell.offset', b'%d' % i)]
                p.produce(topic, value, partition=part, headers=h)
            else:
                p.produce(topic, value, partition=part)
            break
        except BufferError:
            p.poll(0.005)
    if i % 1000 == 0:
        p.poll(0)
left = p.flush(1800)
elapsed = time.perf_counter() - start
if left:
    sys.exit('%d records not delivered' % left)
print(elapsed)
"#;

/// confluent-kafka's producer with the same settings; returns seconds.
fn reference(
    root: &Path,
    args: &ReplicateBenchArgs,
    bootstrap: &str,
    upstream: &UpstreamConfig,
    topic: &str,
    headers: bool,
) -> anyhow::Result<f64> {
    let mut settings = serde_json::Map::new();
    settings.insert("bootstrap.servers".into(), bootstrap.into());
    for (key, value) in producer_settings(upstream) {
        settings.insert(key.into(), value.into());
    }
    let script = root.join("reference.py");
    std::fs::write(&script, REFERENCE_PY)?;
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(serde_json::Value::Object(settings).to_string())
        .arg(root.join("values.bin"))
        .args([
            topic,
            &args.value_bytes.to_string(),
            &args.partitions.to_string(),
        ])
        .arg(if headers { "1" } else { "0" })
        .output()
        .with_context(|| format!("running {} (pip install confluent-kafka)", args.python))?;
    if !out.status.success() {
        bail!(
            "reference producer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("reference producer printed {text:?}"))
}
