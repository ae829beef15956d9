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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{Event, Outgoing, Packet};
use tokio::sync::Barrier;

use super::clients::{self, Connected};
use super::{peak_rss_kib, with_mosquitto, with_tidewell};

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
        clients::percentile_ms(&self.latencies_us, p)
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

/// Loads a gateway of its own (fsync `always`).
fn bench_tidewell(args: &BenchArgs) -> anyhow::Result<Figures> {
    with_tidewell(&args.dir, "mqtt", args.size, |gateway| {
        let mut figures = load(args, gateway.mqtt)?;
        figures.peak_rss_kib = peak_rss_kib(gateway.pid);
        Ok(figures)
    })
}

/// Mosquitto 2 with its defaults (no persistence) on a free loopback port.
fn bench_mosquitto(args: &BenchArgs) -> anyhow::Result<Figures> {
    with_mosquitto(|child, addr| {
        let mut figures = load(args, addr)?;
        figures.peak_rss_kib = peak_rss_kib(child.id());
        Ok(figures)
    })
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
    let mut options = clients::options(&id, addr, args.size);
    options.set_inflight(args.inflight);
    let Connected {
        client, mut events, ..
    } = clients::connect(options, usize::from(args.inflight) * 2).await?;
    start.wait().await;
    let qos = clients::qos(args.qos);
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
