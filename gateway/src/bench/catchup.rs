//! `tidewell bench catchup`: what a persistent QoS 1 subscriber gets, and
//! how fast, when it comes back after `--messages` were published while it
//! was away; Tidewell (fsync `always`) and Mosquitto 2 (its defaults: at most
//! 1,000 queued QoS 1 messages per client, `max_queued_messages 1000`) side
//! by side, each on a fresh instance on a free loopback port.
//!
//! The subscriber (MQTT 3.1.1, `clean_session = 0`, client id
//! `bench-catchup-sub`) connects, subscribes to `bench/catchup/#` at QoS 1
//! and disconnects normally. `--publishers` clients then publish the
//! messages at QoS 1, each with at most `--inflight` unacknowledged, until
//! every PUBACK is in. The subscriber returns on a fresh connection with the
//! same client id and counts distinct messages until it has them all or
//! none came for `--idle-ms`; its rate is what it got over the time from
//! its second CONNECT to the last message.
//!
//! A broker that refuses the persistent session (Tidewell answers
//! `clean_session = 0` with CONNACK 0x03 until persistent sessions land) is
//! reported as refused for its side; the bench still exits 0. Any other
//! failure is reported too and makes the bench fail.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{Event, MqttOptions, Packet, QoS};

use super::clients::{self, Connected, Load, PeerError, Stamp};
use super::{with_mosquitto, with_tidewell};

#[derive(Args, Debug, Clone)]
pub struct CatchupBenchArgs {
    /// Messages published while the subscriber is away.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u32,
    /// Clients sharing the publishing.
    #[arg(long, default_value_t = 10)]
    pub publishers: u32,
    /// Payload bytes per message (at least 16: the stamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 10)]
    pub inflight: u16,
    /// The returning subscriber stops after this long without a message.
    #[arg(long, default_value_t = 5000)]
    pub idle_ms: u64,
    /// Directory for Tidewell's data (a fresh subdirectory is used and removed).
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Skip Mosquitto.
    #[arg(long)]
    pub no_mosquitto: bool,
}

const SUB_ID: &str = "bench-catchup-sub";
const PREFIX: &str = "bench/catchup";

/// What the returning subscriber got.
struct Caught {
    session_present: bool,
    /// Distinct messages.
    received: usize,
    duplicates: usize,
    /// From its second CONNECT to the last message.
    seconds: f64,
}

impl Caught {
    fn rate(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }
}

pub fn run(args: &CatchupBenchArgs) -> anyhow::Result<()> {
    if args.messages == 0 || args.publishers == 0 || args.inflight == 0 || args.size < Stamp::LEN {
        bail!("--messages, --publishers, --inflight at least 1, --size at least 16");
    }
    println!(
        "bench catchup: {} QoS 1 messages of {} bytes ({} publishers, up to {} in flight each) while a persistent subscriber (MQTT 3.1.1, clean_session = 0) is away",
        args.messages, args.size, args.publishers, args.inflight
    );
    let tidewell = with_tidewell(&args.dir, "catchup", args.size, |gateway| {
        Ok(measure(args, gateway.mqtt))
    })?;
    let tidewell_ok = report("tidewell (fsync always)", args, &tidewell);
    let mut failed = (!tidewell_ok).then_some("tidewell");
    if !args.no_mosquitto {
        match with_mosquitto(|_, addr| Ok(measure(args, addr))) {
            Ok(mosquitto) => {
                if !report("mosquitto 2 (defaults)", args, &mosquitto) {
                    failed = failed.or(Some("mosquitto"));
                }
                compare(&tidewell, &mosquitto);
            }
            Err(e) => {
                println!("mosquitto: not run ({e:#}); install Debian's `mosquitto` to compare");
            }
        }
    }
    match failed {
        Some(broker) => bail!("{broker}'s side failed (see above)"),
        None => Ok(()),
    }
}

/// Prints one broker's line; false if its side failed other than by
/// refusing the persistent session.
fn report(broker: &str, args: &CatchupBenchArgs, outcome: &anyhow::Result<Caught>) -> bool {
    match outcome {
        Ok(c) => {
            println!(
                "{broker:<24} caught up {}/{} in {:.3} s: {:>9.0} msg/s over what it delivered (session present: {}, {} duplicates)",
                c.received,
                args.messages,
                c.seconds,
                c.rate(),
                if c.session_present { "yes" } else { "no" },
                c.duplicates
            );
            true
        }
        Err(e) => {
            let refused = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(PeerError::Refused { .. })));
            let what = if refused { "refused" } else { "error" };
            println!("{broker:<24} {what}: {e:#}");
            refused
        }
    }
}

fn compare(tidewell: &anyhow::Result<Caught>, mosquitto: &anyhow::Result<Caught>) {
    if let (Ok(t), Ok(m)) = (tidewell, mosquitto) {
        println!(
            "tidewell/mosquitto: {:.2}x the messages, {:.2}x the rate",
            t.received as f64 / (m.received as f64).max(1.0),
            t.rate() / m.rate().max(1e-9)
        );
    }
}

/// Runs the whole sequence against `addr`.
fn measure(args: &CatchupBenchArgs, addr: SocketAddr) -> anyhow::Result<Caught> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut away = clients::connect(session_options(args, addr), 10)
            .await
            .context("the persistent subscriber's first CONNECT (clean_session = 0)")?;
        clients::subscribe(&mut away, &format!("{PREFIX}/#"), QoS::AtLeastOnce).await?;
        clients::disconnect(away).await?;
        publish_all(args, addr).await?;
        let began = Instant::now();
        let back = clients::connect(session_options(args, addr), 10)
            .await
            .context("the persistent subscriber's return (clean_session = 0)")?;
        catch_up(back, args, began).await
    })
}

/// The subscriber's options, the same for both of its connections.
fn session_options(args: &CatchupBenchArgs, addr: SocketAddr) -> MqttOptions {
    let mut options = clients::options(SUB_ID, addr, args.size);
    options.set_clean_session(false);
    options
}

/// Publishes `--messages` at QoS 1 from `--publishers` clients, and
/// returns when every one is acknowledged.
async fn publish_all(args: &CatchupBenchArgs, addr: SocketAddr) -> anyhow::Result<()> {
    let base = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.publishers {
        let mut options = clients::options(&format!("bench-catchup-pub-{i}"), addr, args.size);
        options.set_inflight(args.inflight);
        let mut peer = clients::connect(options, usize::from(args.inflight) + 1).await?;
        let load = Load {
            topic: format!("{PREFIX}/{i}"),
            qos: QoS::AtLeastOnce,
            // Publisher i sends its share; the first ones one more of the remainder.
            messages: args.messages / args.publishers
                + u32::from(i < args.messages % args.publishers),
            size: args.size,
            window: args.inflight,
            publisher: i,
            ack_timeout: Duration::from_millis(args.idle_ms),
        };
        tasks.push(tokio::spawn(async move {
            clients::publish(&mut peer, &load, base).await?;
            clients::disconnect(peer).await
        }));
    }
    for task in tasks {
        task.await?
            .context("publishing while the subscriber is away")?;
    }
    Ok(())
}

/// Counts what the returning subscriber gets.
async fn catch_up(
    mut back: Connected,
    args: &CatchupBenchArgs,
    began: Instant,
) -> anyhow::Result<Caught> {
    let idle = Duration::from_millis(args.idle_ms);
    let mut seen = HashSet::new();
    let mut caught = Caught {
        session_present: back.session_present,
        received: 0,
        duplicates: 0,
        seconds: 0.0,
    };
    while caught.received < args.messages as usize {
        let event = match clients::next_event(&mut back.events, SUB_ID, idle, "message").await {
            Ok(event) => event,
            Err(PeerError::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        let Some(stamp) = Stamp::read(&publish.payload) else {
            continue;
        };
        if seen.insert((stamp.publisher, stamp.seq)) {
            caught.received += 1;
            caught.seconds = began.elapsed().as_secs_f64();
        } else {
            caught.duplicates += 1;
        }
    }
    Ok(caught)
}
