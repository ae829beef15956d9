//! `tidewell bench wire`: what replication costs a metered link, in bytes
//! on the wire per record, against confluent-kafka sending the same keys and
//! values without headers, with the same compression and batching.
//!
//! Twenty devices publish realistic ~62-byte JSON readings over MQTT to a
//! buffer-only gateway; that log is the backlog. Tansu advertises a
//! counting TCP proxy ([`super::proxy`]), so every byte a producer sends to
//! the broker (requests, framing, compression, connection set-up) is counted
//! outside the producer. Then, in one run:
//! - **backlog**: a copy of the log drained by `tidewell run` under each
//!   record shape (`full`, `compact`, `compact` without ingest headers,
//!   `off`, the JSON envelope), with lz4 and zstd; and confluent-kafka
//!   producing the log's records (timestamps, keys and values, no headers)
//!   with the same settings. Both counts include the session's set-up.
//! - **live**: the devices publish at `--live-rate` readings/s to a gateway
//!   that replicates at once (`full`, `compact` and `compact` without
//!   ingest headers; zstd, `linger_ms = 1000`), and
//!   confluent-kafka produces the same records at the same pace with
//!   `linger.ms = 1000`. Both counts start once the producer is connected.
//!
//! Each Tidewell run also prints what its own wire meter (the kernel's
//! per-socket count the bandwidth cap uses) said, against the proxy.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::proxy::CountingProxy;
use super::replicate::{drained, free_port, start_tansu, Tansu};
use super::{http_get_json, start_gateway, start_gateway_ready, stop, KillOnDrop};
use crate::log::{Log, LogConfig, Offset, OsStorage, Partition, TopicConfig};
use crate::replicate::client::producer_settings;
use crate::replicate::config::UpstreamCompression;
use crate::replicate::UpstreamConfig;

#[derive(Args, Debug, Clone)]
pub struct WireBenchArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Devices publishing.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Readings in the backlog (all devices together).
    #[arg(long, default_value_t = 2000)]
    pub backlog: usize,
    /// Live readings per second (all devices together).
    #[arg(long, default_value_t = 100)]
    pub live_rate: usize,
    /// Seconds of live publishing.
    #[arg(long, default_value_t = 20)]
    pub live_seconds: u64,
    #[arg(long, default_value = "python3")]
    pub python: String,
}

const TOPIC: &str = "ingest";

/// Record shapes: a name and the lines of its mirror rule.
const SHAPES: [(&str, &str); 5] = [
    ("full", ""),
    ("compact", "provenance = \"compact\""),
    (
        "compact, no ingest headers",
        "provenance = \"compact\"\nheaders = \"none\"",
    ),
    ("off", "provenance = \"off\""),
    (
        "json envelope",
        "provenance = \"off\"\nvalue_format = \"json_envelope\"",
    ),
];

pub fn run(args: &WireBenchArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.backlog < args.devices || args.live_rate < args.devices {
        bail!("--backlog and --live-rate must be at least --devices (one reading each)");
    }
    let root = std::path::absolute(args.dir.join(format!("wire-{}", std::process::id())))?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// The broker behind the proxy, and the remote topics of this run.
struct Upstream {
    proxy: CountingProxy,
    _broker: KillOnDrop,
}

fn run_in(args: &WireBenchArgs, root: &Path) -> anyhow::Result<()> {
    let proxy_port = free_port()?;
    let mut topics: Vec<String> = (0..3).map(|i| format!("live.tidewell{i}")).collect();
    topics.push("live.reference".into());
    for c in ["lz4", "zstd"] {
        topics.push(format!("reference.{c}"));
        topics.extend((0..SHAPES.len()).map(|i| format!("shape{i}.{c}")));
    }
    let (broker, broker_addr) = start_tansu(&Tansu::SQLITE, root, 1, &topics, Some(proxy_port))?;
    let proxy = CountingProxy::start(SocketAddr::from(([127, 0, 0, 1], proxy_port)), broker_addr)?;
    let up = Upstream {
        proxy,
        _broker: broker,
    };
    let seed = root.join("seed");
    publish_backlog(args, root, &seed)?;
    let records = export(&seed, &root.join("records.bin"))?;
    println!(
        "bench wire: {records} readings from {} devices (~62-byte JSON over MQTT), bytes counted by a proxy in front of tansu",
        args.devices
    );
    println!("\nbacklog drained in bulk, bytes on the wire per record (set-up included):");
    println!("{:<28} {:>9} {:>9}", "", "lz4", "zstd");
    let mut reference = Vec::new();
    for c in ["lz4", "zstd"] {
        let sent = reference_run(args, root, &up, c, &format!("reference.{c}"), None)?;
        reference.push(sent as f64 / records as f64);
    }
    println!(
        "{:<28} {:>9.1} {:>9.1}",
        "confluent-kafka, no headers", reference[0], reference[1]
    );
    for (i, (name, rule)) in SHAPES.iter().enumerate() {
        let mut cells = Vec::new();
        for (j, c) in ["lz4", "zstd"].iter().enumerate() {
            let dir = root.join(format!("shape{i}.{c}"));
            copy_dir(&seed, &dir)?;
            let (sent, metered) = drain_run(&dir, &up, c, &format!("shape{i}.{c}"), rule, records)?;
            let per = sent as f64 / records as f64;
            cells.push(format!("{per:>6.1} ({:.2}x)", per / reference[j]));
            if i == 0 {
                meter_line(c, sent, metered);
            }
        }
        println!("tidewell, {:<18} {} {}", name, cells[0], cells[1]);
    }
    live(args, root, &up)
}

fn meter_line(compression: &str, proxy: u64, metered: u64) {
    eprintln!(
        "  (wire meter, {compression}: {metered} bytes counted by the gateway, {proxy} by the proxy: {:+.2}%)",
        (metered as f64 - proxy as f64) / proxy.max(1) as f64 * 100.0
    );
}

fn live(args: &WireBenchArgs, root: &Path, up: &Upstream) -> anyhow::Result<()> {
    let count = args.live_rate * args.live_seconds as usize;
    println!(
        "\nlive, {} readings/s for {} s ({count} readings), zstd, 1 s linger:",
        args.live_rate, args.live_seconds
    );
    let mut export = None;
    for (i, (name, rule)) in SHAPES.iter().enumerate().take(3) {
        let dir = root.join(format!("live{i}"));
        let rule = format!("{rule}\nlinger_ms = 1000");
        let ours = live_run(args, &dir, up, &format!("live.tidewell{i}"), &rule, count)?;
        println!(
            "tidewell, {name:<28} {:>6.1} B/record",
            ours as f64 / count as f64
        );
        if export.is_none() {
            let path = root.join("live.bin");
            let n = self::export(&dir.join("data"), &path)?;
            export = Some((path, n));
        }
    }
    let (path, n) = export.context("no live run")?;
    let theirs = reference_run(
        args,
        root,
        up,
        "zstd",
        "live.reference",
        Some((&path, args.live_rate)),
    )?;
    println!(
        "confluent-kafka, linger.ms = 1000, no headers {:>6.1} B/record",
        theirs as f64 / n as f64
    );
    Ok(())
}

/// A gateway replicating at once while the devices publish `count`
/// readings at `--live-rate`; returns the bytes the proxy counted from the
/// moment its session was up until everything was acknowledged.
fn live_run(
    args: &WireBenchArgs,
    dir: &Path,
    up: &Upstream,
    remote: &str,
    rule: &str,
    count: usize,
) -> anyhow::Result<u64> {
    let config = gateway_config(dir, Some((up, "zstd", remote, rule)))?;
    let (mut child, ready) = start_gateway_ready(&config)?;
    let result = (|| {
        let mqtt = ready
            .addr("mqtt")?
            .context("the gateway has no MQTT listener")?;
        let http = ready
            .addr("http")?
            .context("the gateway has no HTTP listener")?;
        wait_connected(http)?;
        let before = up.proxy.sent();
        publish(args, mqtt, count, Some(args.live_rate))?;
        wait_drained(dir, count as u64)?;
        Ok::<_, anyhow::Error>(up.proxy.sent() - before)
    })();
    stop(&mut child);
    result
}

/// A config: MQTT on a free loopback port, a status port, one partition,
/// and (when given) replication through the proxy.
fn gateway_config(
    dir: &Path,
    upstream: Option<(&Upstream, &str, &str, &str)>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut config = format!(
        "data_dir = {:?}\ngateway_id = \"bench\"\n\n[topics.{TOPIC}]\npartitions = 1\nfsync = \"never\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n[[mqtt.routes]]\nfilter = \"devices/+/telemetry\"\ntopic = \"{TOPIC}\"\nkey = \"segment:1\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("data").display().to_string()
    );
    if let Some((up, compression, remote, rule)) = upstream {
        config += &format!(
            "\n[upstream]\nbootstrap_servers = \"{}\"\ncompression = \"{compression}\"\ncheckpoint_interval_ms = 20\n\n[[upstream.mirror]]\nlocal = \"{TOPIC}\"\nremote = \"{remote}\"\n{rule}\n",
            up.proxy.addr
        );
    }
    let path = dir.join("tidewell.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The devices publish `--backlog` readings to a buffer-only gateway in `dir`.
fn publish_backlog(args: &WireBenchArgs, _root: &Path, dir: &Path) -> anyhow::Result<()> {
    let config = gateway_config(dir, None)?;
    let (mut child, mqtt) = start_gateway(&config)?;
    let result = mqtt
        .context("the gateway has no MQTT listener")
        .and_then(|addr| publish(args, addr, args.backlog, None));
    stop(&mut child);
    result
}

/// A Tidewell drain of the log in `dir` through the proxy; returns the
/// bytes the proxy counted and the bytes the gateway's meter counted.
fn drain_run(
    dir: &Path,
    up: &Upstream,
    compression: &str,
    remote: &str,
    rule: &str,
    records: u64,
) -> anyhow::Result<(u64, u64)> {
    let config = gateway_config(dir, Some((up, compression, remote, rule)))?;
    let before = up.proxy.sent();
    let (mut child, ready) = start_gateway_ready(&config)?;
    let result = ready
        .addr("http")
        .and_then(|a| a.context("the gateway has no HTTP listener"))
        .and_then(|http| {
            wait_drained(dir, records)?;
            wire_meter(http)
        });
    let sent = up.proxy.sent() - before;
    stop(&mut child);
    Ok((sent, result?))
}

fn wait_drained(dir: &Path, records: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !drained(&dir.join("data"), TOPIC, &[records]) {
        if Instant::now() > deadline {
            bail!("{} did not drain within 300 s", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the gateway's session is up (its status says connected).
fn wait_connected(http: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get_json(http, "/status")?["upstream"]["state"] != "connected" {
        if Instant::now() > deadline {
            bail!("the gateway's upstream session did not come up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What the gateway's wire meter counted, from its `/status`; polled until
/// it stops growing (it counts at least once a second while sending).
fn wire_meter(http: SocketAddr) -> anyhow::Result<u64> {
    let read = || -> anyhow::Result<u64> {
        Ok(
            http_get_json(http, "/status")?["upstream"]["wire_bytes_sent"]
                .as_u64()
                .unwrap_or(0),
        )
    };
    let mut last = read()?;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = read()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

/// `count` readings from `--devices` MQTT clients at QoS 1, as fast as
/// acknowledged or at `rate` readings/s in all.
fn publish(
    args: &WireBenchArgs,
    addr: SocketAddr,
    count: usize,
    rate: Option<usize>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let per_device = count / args.devices;
    let interval = rate.map(|r| Duration::from_secs_f64(args.devices as f64 / r as f64));
    runtime.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(args.devices));
        let tasks: Vec<_> = (0..args.devices)
            .map(|d| {
                tokio::spawn(device(
                    addr,
                    d,
                    per_device + usize::from(d < count % args.devices),
                    interval,
                    start.clone(),
                ))
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

/// One device: `n` readings, each waiting its turn (`interval`) and at most
/// ten unacknowledged.
async fn device(
    addr: SocketAddr,
    index: usize,
    n: usize,
    interval: Option<Duration>,
    start: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<()> {
    let id = format!("sensor-{index:02}");
    let mut options = MqttOptions::new(&id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(10);
    let (client, mut events) = AsyncClient::new(options, 20);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
            break;
        }
    }
    start.wait().await;
    let topic = format!("devices/{id}/telemetry");
    let publisher = tokio::spawn(async move {
        let began = tokio::time::Instant::now();
        for k in 0..n {
            if let Some(every) = interval {
                tokio::time::sleep_until(began + every * k as u32).await;
            }
            client
                .publish(&topic, QoS::AtLeastOnce, false, reading(index, k))
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    let client = publisher.await??;
    let _ = client.try_disconnect();
    Ok(())
}

/// A reading as small sensors send them: timestamp, two slowly varying
/// measurements, a battery level and a sequence number (~62 bytes).
pub fn reading(device: usize, k: usize) -> Vec<u8> {
    let temp = 20.0 + (device as f64) * 0.3 + ((k as f64) / 7.0).sin() * 1.5;
    let hum = 45.0 + ((k as f64) / 11.0).cos() * 5.0;
    let ts = 1_764_662_400_000u64 + (k as u64) * 200 + device as u64;
    format!(
        "{{\"ts\":{ts},\"t\":{temp:.2},\"h\":{hum:.1},\"bat\":{},\"seq\":{k}}}",
        97 - k / 500
    )
    .into_bytes()
}

/// Writes the timestamps, keys and values of partition 0 of the log in
/// `data` to `path` (i64 little-endian milliseconds, then u32 little-endian
/// lengths, key then value; an absent key is length 0xFFFFFFFF) for the
/// reference producer, which sends the same records; returns how many.
fn export(data: &Path, path: &Path) -> anyhow::Result<u64> {
    let data = if data.ends_with("data") {
        data.to_path_buf()
    } else {
        data.join("data")
    };
    let mut config = LogConfig::new(data).with_topic(TOPIC, TopicConfig::default());
    config.min_free_bytes = 0;
    let log = Log::open(Arc::new(OsStorage), config)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut next = 0;
    loop {
        let records = log.read(TOPIC, Partition(0), Offset(next), 1 << 20)?;
        let Some(last) = records.last() else { break };
        next = last.offset.0 + 1;
        for r in &records {
            out.write_all(&r.record.timestamp_ms.to_le_bytes())?;
            match &r.record.key {
                Some(k) => {
                    out.write_all(&(k.len() as u32).to_le_bytes())?;
                    out.write_all(k)?;
                }
                None => out.write_all(&u32::MAX.to_le_bytes())?,
            }
            out.write_all(&(r.record.value.len() as u32).to_le_bytes())?;
            out.write_all(&r.record.value)?;
        }
    }
    out.flush()?;
    log.close();
    Ok(next)
}

const REFERENCE_PY: &str = r#"
import json, struct, sys, time
from confluent_kafka import Producer
settings, path, topic, rate = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
data = open(path, 'rb').read()
records, at = [], 0
while at < len(data):
    (ts, klen) = struct.unpack_from('<qI', data, at); at += 12
    key = None
    if klen != 0xFFFFFFFF:
        key = data[at:at + klen]; at += klen
    (vlen,) = struct.unpack_from('<I', data, at); at += 4
    records.append((ts, key, data[at:at + vlen])); at += vlen
p = Producer(settings)
if rate > 0:
    p.list_topics(topic, timeout=30)
    print('ready', flush=True)
    sys.stdin.readline()
start = time.perf_counter()
for i, (ts, key, value) in enumerate(records):
    if rate > 0:
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            p.poll(delay)
    while True:
        try:
            p.produce(topic, value, key=key, partition=0, timestamp=ts)
            break
        except BufferError:
            p.poll(0.005)
    p.poll(0)
left = p.flush(600)
if left:
    sys.exit('%d records not delivered' % left)
print('done', flush=True)
"#;

/// confluent-kafka producing the exported records to `topic` with our
/// producer's settings (and `linger.ms = 1000` when paced); returns the
/// bytes the proxy counted (from connect when bulk, from ready when paced).
fn reference_run(
    args: &WireBenchArgs,
    root: &Path,
    up: &Upstream,
    compression: &str,
    topic: &str,
    paced: Option<(&Path, usize)>,
) -> anyhow::Result<u64> {
    let compression: UpstreamCompression = serde_json::from_value(serde_json::json!(compression))?;
    let upstream = UpstreamConfig {
        bootstrap_servers: up.proxy.addr.to_string(),
        compression,
        ..UpstreamConfig::default()
    };
    let mut settings = serde_json::Map::new();
    settings.insert("bootstrap.servers".into(), up.proxy.addr.to_string().into());
    for (key, value) in producer_settings(&upstream) {
        settings.insert(key.into(), value.into());
    }
    if paced.is_some() {
        settings.insert("linger.ms".into(), "1000".into());
    }
    let script = root.join("wire_reference.py");
    std::fs::write(&script, REFERENCE_PY)?;
    let bulk = root.join("records.bin");
    let (file, rate) = paced.unwrap_or((&bulk, 0));
    let before = up.proxy.sent();
    let mut child = Command::new(&args.python)
        .arg(&script)
        .arg(serde_json::Value::Object(settings).to_string())
        .arg(file)
        .args([topic, &rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (pip install confluent-kafka)", args.python))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut from = before;
    if rate > 0 {
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => bail!("the reference producer did not get ready: {other:?}"),
        }
        from = up.proxy.sent();
        writeln!(child.stdin.as_mut().context("no stdin")?, "go")?;
    }
    let done = lines.next();
    let status = child.wait()?;
    if !status.success() || !matches!(done, Some(Ok(ref l)) if l == "done") {
        bail!("the reference producer failed: {status}");
    }
    Ok(up.proxy.sent() - from)
}

/// Copies a directory tree (the seed log) to `to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
