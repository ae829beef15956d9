//! `tidewell bench mqtt`: an MQTT load generator (rumqttc) that can target
//! any broker, and by default runs Tidewell (fsync `always`: every ack is on
//! disk) and Mosquitto 2 (default settings: acks from memory) side by side
//! on the same load, on free loopback ports.
//!
//! Each client connects, then all start together and publish M messages to
//! `devices/<client>/telemetry` with up to `--inflight` unacknowledged. Ack
//! latency is measured per message from the moment rumqttc writes the
//! PUBLISH to the PUBACK (QoS 1) or PUBREC (QoS 2, the point where Tidewell's
//! record is durable). Tidewell's peak RSS is read from /proc (VmHWM).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{peak_rss_kib, start_gateway, start_mosquitto, stop};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Barrier;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Benchmark only this broker (host:port) instead of Tidewell and Mosquitto.
    #[arg(long)]
    pub target: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Messages per client.
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// QoS of the publishes: 0, 1 or 2.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Unacknowledged publishes per client.
    #[arg(long, default_value_t = 10)]
    pub inflight: u16,
    /// Directory for Tidewell's data (a fresh subdirectory is used and removed).
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Skip Mosquitto.
    #[arg(long)]
    pub no_mosquitto: bool,
}

/// One broker's figures.
struct Figures {
    messages: usize,
    seconds: f64,
    /// Sorted ack latencies, microseconds.
    latencies_us: Vec<u64>,
    peak_rss_kib: Option<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.qos > 2 || args.clients == 0 || args.messages == 0 || args.inflight == 0 {
        bail!("--qos 0..=2, and --clients, --messages, --inflight at least 1");
    }
    println!(
        "load: {} clients x {} messages, {} bytes, QoS {}, up to {} in flight per client",
        args.clients, args.messages, args.size, args.qos, args.inflight
    );
    if let Some(target) = &args.target {
        let addr = resolve(target)?;
        let figures = load(args, addr)?;
        print_figures(target, &figures);
        return Ok(());
    }
    let tidewell = bench_tidewell(args)?;
    print_figures("tidewell (fsync always)", &tidewell);
    if args.no_mosquitto {
        return Ok(());
    }
    let mosquitto = match bench_mosquitto(args) {
        Ok(figures) => figures,
        Err(e) => {
            println!("mosquitto: not run ({e:#}); install Debian's `mosquitto` to compare");
            return Ok(());
        }
    };
    print_figures("mosquitto 2 (memory)", &mosquitto);
    println!(
        "tidewell/mosquitto rate: {:.2}x; p99 {:.2} ms vs {:.2} ms",
        tidewell.rate() / mosquitto.rate(),
        tidewell.percentile_ms(0.99),
        mosquitto.percentile_ms(0.99)
    );
    Ok(())
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {target}"))
}

fn print_figures(name: &str, f: &Figures) {
    let rss = f.peak_rss_kib.map_or(String::new(), |kib| {
        format!(", peak RSS {:.1} MB", kib as f64 / 1024.0)
    });
    println!(
        "{name:<26} {:>9.0} msg/s  ack latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}{rss}",
        f.rate(),
        f.percentile_ms(0.50),
        f.percentile_ms(0.90),
        f.percentile_ms(0.99),
        f.percentile_ms(0.999),
        f.percentile_ms(1.0),
    );
}

/// Starts `tidewell run` on a fresh data directory, loads it, stops it.
fn bench_tidewell(args: &BenchArgs) -> anyhow::Result<Figures> {
    let root = args.dir.join(format!("mqtt-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_tidewell(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_tidewell(args: &BenchArgs, root: &Path) -> anyhow::Result<Figures> {
    let config = root.join("tidewell.toml");
    let max_payload = args.size.max(1024);
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_payload_bytes = {max_payload}\n",
            root.join("data")
        ),
    )?;
    let (mut child, addr) = start_gateway(&config)?;
    let result = addr
        .context("no MQTT address in the ready line")
        .and_then(|addr| load(args, addr))
        .map(|mut f| {
            f.peak_rss_kib = peak_rss_kib(child.id());
            f
        });
    stop(&mut child);
    result
}

/// Mosquitto 2 with its defaults (no persistence) on a free loopback port.
fn bench_mosquitto(args: &BenchArgs) -> anyhow::Result<Figures> {
    let (mut child, addr) = start_mosquitto()?;
    let result = load(args, addr).map(|mut f| {
        f.peak_rss_kib = peak_rss_kib(child.id());
        f
    });
    stop(&mut child);
    result
}

/// Runs the load against `addr` and gathers the figures.
fn load(args: &BenchArgs, addr: SocketAddr) -> anyhow::Result<Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let start = Arc::new(Barrier::new(args.clients + 1));
        let mut tasks = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            tasks.push(tokio::spawn(client(args.clone(), addr, i, start.clone())));
        }
        start.wait().await;
        let began = Instant::now();
        let mut latencies = Vec::with_capacity(args.clients * args.messages);
        let mut messages = 0;
        for task in tasks {
            let (sent, mut lat) = task.await??;
            messages += sent;
            latencies.append(&mut lat);
        }
        let seconds = began.elapsed().as_secs_f64();
        latencies.sort_unstable();
        Ok(Figures {
            messages,
            seconds,
            latencies_us: latencies,
            peak_rss_kib: None,
        })
    })
}

/// One client: connect, wait for everyone, publish, time every ack.
async fn client(
    args: BenchArgs,
    addr: SocketAddr,
    index: usize,
    start: Arc<Barrier>,
) -> anyhow::Result<(usize, Vec<u64>)> {
    let id = format!("bench-{index}");
    let mut options = MqttOptions::new(&id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(args.inflight);
    options.set_max_packet_size(args.size + 1024, args.size + 1024);
    let (client, mut events) = AsyncClient::new(options, usize::from(args.inflight) * 2);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
            break;
        }
    }
    start.wait().await;
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let topic = format!("devices/{id}/telemetry");
    let payload = vec![b'x'; args.size];
    let total = args.messages;
    let publisher = tokio::spawn(async move {
        for _ in 0..total {
            client.publish(&topic, qos, false, payload.clone()).await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let latencies = drive(&mut events, args.qos, total).await?;
    let client = publisher.await??;
    let _ = client.try_disconnect();
    Ok((total, latencies))
}

/// Polls the event loop until every publish is sent (QoS 0) or acknowledged.
async fn drive(events: &mut rumqttc::EventLoop, qos: u8, total: usize) -> anyhow::Result<Vec<u64>> {
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(total);
    let mut sent = 0;
    while latencies.len() < total && !(qos == 0 && sent == total) {
        let acked = match events.poll().await? {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                sent += 1;
                sent_at.insert(pkid, Instant::now());
                None
            }
            Event::Incoming(Packet::PubAck(a)) if qos == 1 => Some(a.pkid),
            Event::Incoming(Packet::PubRec(r)) if qos == 2 => Some(r.pkid),
            _ => None,
        };
        if let Some(at) = acked.and_then(|pkid| sent_at.remove(&pkid)) {
            latencies.push(at.elapsed().as_micros() as u64);
        }
    }
    if qos == 0 {
        // Let the last QoS 0 packets leave the client's buffer.
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    }
    Ok(latencies)
}
