//! `tidewell bench fanout`: messages delivered per second through a broker
//! in two shapes, Tidewell (fsync `always`: each message reaches subscribers
//! from the log, after the fsync that covers it) and Mosquitto 2 (its
//! defaults: from memory) side by side, on free loopback ports:
//!
//! - one publisher to `--subscribers` subscribers (each gets every message);
//! - `--publishers` publishers to one subscriber.
//!
//! Every client speaks MQTT 3.1.1 (rumqttc). Subscribers connect and get
//! their SUBACK first; then every publisher starts at once, each sending
//! `--messages` messages with at most `--inflight` unacknowledged. The rate
//! is deliveries over the time from that start to the last delivery. A
//! subscriber stops when it has every message, or after `--idle-ms` without
//! one (what it never got is printed as missing). The payload starts with
//! the time the message was handed to the publishing client, so each
//! delivery gives a publish-to-delivery latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rumqttc::{Event, Packet};

use super::clients::{self, micros_since, Connected, Load, Stamp};
use super::{with_mosquitto, with_tidewell, Tidewell};

#[derive(Args, Debug, Clone)]
pub struct FanoutBenchArgs {
    /// Subscribers of the one publisher (the first shape).
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Publishers to the one subscriber (the second shape).
    #[arg(long, default_value_t = 50)]
    pub publishers: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 2000)]
    pub messages: u32,
    /// Payload bytes per message (at least 16: the timestamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 10)]
    pub inflight: u16,
    /// A subscriber gives up after this long without a message.
    #[arg(long, default_value_t = 5000)]
    pub idle_ms: u64,
    /// Directory for Tidewell's data (a fresh subdirectory is used and removed).
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Skip Mosquitto.
    #[arg(long)]
    pub no_mosquitto: bool,
}

/// Who publishes to whom.
#[derive(Debug, Clone, Copy)]
struct Shape {
    publishers: usize,
    subscribers: usize,
}

impl Shape {
    fn name(&self) -> String {
        format!("{} -> {}", self.publishers, self.subscribers)
    }
}

/// One broker's figures for one shape.
struct Figures {
    /// Deliveries the subscribers should get, together.
    expected: usize,
    /// Distinct messages delivered, summed over subscribers.
    delivered: usize,
    /// Deliveries of a message a subscriber had already had.
    duplicates: usize,
    /// From the publishers' start to the last delivery.
    seconds: f64,
    /// Sorted publish-to-delivery latencies, microseconds.
    latencies_us: Vec<u64>,
    /// Tidewell's count of records its subscribers missed ([`LAGGED`]).
    lagged: Option<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }
}

/// What one subscriber got.
struct Received {
    delivered: usize,
    duplicates: usize,
    last_at: Option<Instant>,
    latencies_us: Vec<u64>,
}

pub fn run(args: &FanoutBenchArgs) -> anyhow::Result<()> {
    if args.qos > 2
        || args.subscribers == 0
        || args.publishers == 0
        || args.messages == 0
        || args.inflight == 0
        || args.size < Stamp::LEN
    {
        bail!("--qos 0..=2, --subscribers, --publishers, --messages, --inflight at least 1, --size at least 16");
    }
    let shapes = [
        Shape {
            publishers: 1,
            subscribers: args.subscribers,
        },
        Shape {
            publishers: args.publishers,
            subscribers: 1,
        },
    ];
    println!(
        "bench fanout: {} messages per publisher, {} bytes, QoS {}, up to {} in flight per publisher, MQTT 3.1.1",
        args.messages, args.size, args.qos, args.inflight
    );
    let tidewell = with_tidewell(&args.dir, "fanout", args.size, |gateway| {
        measure_all(args, gateway.mqtt, &shapes, Some(gateway))
    })?;
    let mosquitto = if args.no_mosquitto {
        None
    } else {
        match with_mosquitto(|_, addr| measure_all(args, addr, &shapes, None)) {
            Ok(figures) => Some(figures),
            Err(e) => {
                println!("mosquitto: not run ({e:#}); install Debian's `mosquitto` to compare");
                None
            }
        }
    };
    for (i, shape) in shapes.iter().enumerate() {
        report(shape, &tidewell[i], mosquitto.as_ref().map(|m| &m[i]));
    }
    Ok(())
}

fn report(shape: &Shape, tidewell: &Figures, mosquitto: Option<&Figures>) {
    print_figures(shape, "tidewell (fsync always)", tidewell);
    if let Some(mosquitto) = mosquitto {
        print_figures(shape, "mosquitto 2 (memory)", mosquitto);
        println!(
            "{:<8} tidewell/mosquitto delivered/s: {:.2}x; p99 {:.2} ms vs {:.2} ms",
            shape.name(),
            tidewell.rate() / mosquitto.rate(),
            clients::percentile_ms(&tidewell.latencies_us, 0.99),
            clients::percentile_ms(&mosquitto.latencies_us, 0.99),
        );
    }
}

fn print_figures(shape: &Shape, broker: &str, f: &Figures) {
    let lagged = match f.lagged {
        Some(n) if n > 0 => format!(" ({n} dropped by the live hub: over 256 records behind)"),
        _ => String::new(),
    };
    println!(
        "{:<8} {broker:<24} {:>9.0} delivered/s  {}/{} delivered, {} missing{lagged}, {} duplicates  latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        shape.name(),
        f.rate(),
        f.delivered,
        f.expected,
        f.expected - f.delivered,
        f.duplicates,
        clients::percentile_ms(&f.latencies_us, 0.50),
        clients::percentile_ms(&f.latencies_us, 0.99),
        clients::percentile_ms(&f.latencies_us, 1.0),
    );
}

/// Runs each shape against `addr`, one after the other; for a Tidewell
/// `gateway`, with the deliveries its live hub dropped meanwhile.
fn measure_all(
    args: &FanoutBenchArgs,
    addr: SocketAddr,
    shapes: &[Shape],
    gateway: Option<&Tidewell>,
) -> anyhow::Result<Vec<Figures>> {
    let lagged = || match gateway {
        Some(g) => g.metric(LAGGED).map(|v| Some(v as u64)),
        None => Ok(None),
    };
    let mut all = Vec::with_capacity(shapes.len());
    for shape in shapes {
        let before = lagged()?;
        let mut figures = measure(args, addr, *shape)?;
        figures.lagged = lagged()?.zip(before).map(|(after, before)| after - before);
        all.push(figures);
    }
    Ok(all)
}

/// Tidewell's count of deliveries a subscriber missed by falling more than
/// the live hub (256 records) behind.
const LAGGED: &str = "tidewell_mqtt_deliveries_lagged_total";

/// Runs one shape against `addr`.
fn measure(args: &FanoutBenchArgs, addr: SocketAddr, shape: Shape) -> anyhow::Result<Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure_async(args, addr, shape))
}

async fn measure_async(
    args: &FanoutBenchArgs,
    addr: SocketAddr,
    shape: Shape,
) -> anyhow::Result<Figures> {
    let tag = format!("{}to{}", shape.publishers, shape.subscribers);
    let prefix = format!("bench/fanout/{tag}");
    let (subscribers, publishers) = connect_all(args, addr, shape, &tag).await?;
    let base = Instant::now();
    let total = shape.publishers * args.messages as usize;
    let idle = Duration::from_millis(args.idle_ms);
    let receiving: Vec<_> = subscribers
        .into_iter()
        .map(|peer| tokio::spawn(receive(peer, args.messages, total, idle, base)))
        .collect();
    let sending: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, mut peer)| {
            let load = load(args, &prefix, i);
            tokio::spawn(async move {
                clients::publish(&mut peer, &load, base).await?;
                clients::disconnect(peer).await
            })
        })
        .collect();
    for task in sending {
        task.await??;
    }
    let mut figures = Figures {
        expected: total * shape.subscribers,
        delivered: 0,
        duplicates: 0,
        seconds: 0.0,
        latencies_us: Vec::with_capacity(total * shape.subscribers),
        lagged: None,
    };
    for task in receiving {
        let mut got = task.await??;
        figures.delivered += got.delivered;
        figures.duplicates += got.duplicates;
        if let Some(at) = got.last_at {
            figures.seconds = figures.seconds.max((at - base).as_secs_f64());
        }
        figures.latencies_us.append(&mut got.latencies_us);
    }
    figures.latencies_us.sort_unstable();
    Ok(figures)
}

/// What publisher `index` sends.
fn load(args: &FanoutBenchArgs, prefix: &str, index: usize) -> Load {
    Load {
        topic: format!("{prefix}/{index}"),
        qos: clients::qos(args.qos),
        messages: args.messages,
        size: args.size,
        window: args.inflight,
        publisher: index as u32,
        ack_timeout: Duration::from_millis(args.idle_ms),
    }
}

/// Connects the subscribers (each subscribed to `bench/fanout/TAG/#`) and
/// then the publishers of `shape`.
async fn connect_all(
    args: &FanoutBenchArgs,
    addr: SocketAddr,
    shape: Shape,
    tag: &str,
) -> anyhow::Result<(Vec<Connected>, Vec<Connected>)> {
    let filter = format!("bench/fanout/{tag}/#");
    let mut subscribers = Vec::with_capacity(shape.subscribers);
    for i in 0..shape.subscribers {
        let options = clients::options(&format!("fanout-{tag}-sub-{i}"), addr, args.size);
        let mut peer = clients::connect(options, 10).await?;
        clients::subscribe(&mut peer, &filter, clients::qos(args.qos)).await?;
        subscribers.push(peer);
    }
    let mut publishers = Vec::with_capacity(shape.publishers);
    for i in 0..shape.publishers {
        let mut options = clients::options(&format!("fanout-{tag}-pub-{i}"), addr, args.size);
        options.set_inflight(args.inflight);
        publishers.push(clients::connect(options, usize::from(args.inflight) + 1).await?);
    }
    Ok((subscribers, publishers))
}

/// Counts what one subscriber gets until it has all `total` messages
/// (`per_publisher` from each) or none came for `idle`.
async fn receive(
    mut peer: Connected,
    per_publisher: u32,
    total: usize,
    idle: Duration,
    base: Instant,
) -> anyhow::Result<Received> {
    let id = peer.events.mqtt_options.client_id();
    let mut seen = vec![false; total];
    let mut got = Received {
        delivered: 0,
        duplicates: 0,
        last_at: None,
        latencies_us: Vec::with_capacity(total),
    };
    while got.delivered < total {
        let event = match clients::next_event(&mut peer.events, &id, idle, "message").await {
            Ok(event) => event,
            Err(clients::PeerError::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        let Some(stamp) = Stamp::read(&publish.payload) else {
            continue;
        };
        let at = micros_since(base);
        let slot = stamp.publisher as usize * per_publisher as usize + stamp.seq as usize;
        match seen.get_mut(slot) {
            Some(true) => got.duplicates += 1,
            Some(fresh) => {
                *fresh = true;
                got.delivered += 1;
                got.last_at = Some(Instant::now());
                got.latencies_us.push(at.saturating_sub(stamp.sent_us));
            }
            None => {}
        }
    }
    Ok(got)
}
