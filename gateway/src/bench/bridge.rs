//! `tidewell bench bridge`: how fast the bridge drains what an existing
//! Mosquitto 2 queued for it, side by side with `mosquitto_sub` (QoS 1)
//! draining the same queue to /dev/null.
//!
//! One Mosquitto (`max_queued_messages 0`, its default in-flight window of
//! 20) holds two persistent QoS 1 sessions subscribed to `bench/#`: one of
//! `mosquitto_sub`, one of the gateway's bridge. Each round publishes
//! `--messages` messages of `--size` bytes with `mosquitto_pub -l -q 1`
//! while both are offline, then times each draining its queue: from the
//! start of the process until `mosquitto_sub -C N` exits, and until the
//! gateway's log holds them all with none unacknowledged (fsync `always`:
//! each PUBACK goes out after the fsync that covers it; `/status` polled
//! every 5 ms). Both times include connecting; rounds alternate which
//! drains first.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::{http_get_json, start_gateway_ready, stop, KillOnDrop};

#[derive(Args, Debug, Clone)]
pub struct BridgeBenchArgs {
    /// Directory to run in (on the disk you want to measure); a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Messages queued per round.
    #[arg(long, default_value_t = 50_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

const SUB_ID: &str = "bench-mosquitto-sub";
const FILTER: &str = "bench/#";

pub fn run(args: &BridgeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.messages > 0 && args.rounds > 0 && args.size >= 12,
        "--messages and --rounds must be positive, --size at least 12"
    );
    let root = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(args: &BridgeBenchArgs, root: &Path) -> anyhow::Result<()> {
    let (_broker, addr) = start_broker(root)?;
    println!(
        "bench bridge: {} queued QoS 1 messages of {} bytes per round, Mosquitto 2 (in-flight window 20), fsync always, {} rounds",
        args.messages, args.size, args.rounds
    );
    let config = root.join("tidewell.toml");
    std::fs::write(&config, gateway_config(root, addr))?;
    mosquitto_sub(addr, &["-E"])?;
    drain_bridge(&config, 0)?; // creates the bridge's session
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        publish(addr, args, round)?;
        let total = (round + 1) * args.messages;
        let (sub, bridge) = if round % 2 == 0 {
            let s = time_sub(addr, args.messages)?;
            (s, drain_bridge(&config, total)?)
        } else {
            let b = drain_bridge(&config, total)?;
            (time_sub(addr, args.messages)?, b)
        };
        let per_s = |d: Duration| args.messages as f64 / d.as_secs_f64();
        println!(
            "round {round}: tidewell bridge {:>9.0} msg/s   mosquitto_sub {:>9.0} msg/s",
            per_s(bridge),
            per_s(sub)
        );
        ours.push(per_s(bridge));
        theirs.push(per_s(sub));
    }
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    println!("median: tidewell bridge (appended, fsync, then PUBACK) {ours:.0} msg/s");
    println!("median: mosquitto_sub -q 1 > /dev/null {theirs:.0} msg/s");
    println!("bridge / mosquitto_sub: {:.2}x", ours / theirs);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Mosquitto with no limit on what it queues for an offline session.
fn start_broker(root: &Path) -> anyhow::Result<(KillOnDrop, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = root.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    let child = KillOnDrop(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "mosquitto did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20)); // mosquitto has no ready signal
    }
    Ok((child, addr))
}

fn gateway_config(root: &Path, broker: SocketAddr) -> String {
    format!(
        "data_dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [topics.ingest]\nfsync = \"always\"\n\
         [[bridge.brokers]]\nname = \"site\"\naddress = \"{broker}\"\nclient_id = \"bench-tidewell\"\n\
         subscriptions = [{{ filter = \"{FILTER}\", qos = 1 }}]\n",
        root.join("data")
    )
}

/// `mosquitto_sub` in the persistent session, with `extra` arguments.
fn mosquitto_sub(addr: SocketAddr, extra: &[&str]) -> anyhow::Result<()> {
    let status = sub_command(addr, extra)
        .status()
        .context("running mosquitto_sub (apt-get install mosquitto-clients)")?;
    anyhow::ensure!(status.success(), "mosquitto_sub failed: {status}");
    Ok(())
}

fn sub_command(addr: SocketAddr, extra: &[&str]) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-c", "-i", SUB_ID, "-q", "1", "-t", FILTER])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// The time `mosquitto_sub` takes to receive `n` messages.
fn time_sub(addr: SocketAddr, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    mosquitto_sub(addr, &["-C", &n.to_string()])?;
    Ok(start.elapsed())
}

/// Publishes a round's messages at QoS 1; returns once Mosquitto acked them all.
fn publish(addr: SocketAddr, args: &BridgeBenchArgs, round: usize) -> anyhow::Result<()> {
    let mut child: Child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-q", "1", "-t", "bench/data", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().context("no stdin")?);
        for i in 0..args.messages {
            let line = format!("{round:03}-{i:08}");
            writeln!(stdin, "{line:x<width$}", width = args.size)?;
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "mosquitto_pub failed: {status}");
    Ok(())
}

/// Starts the gateway and waits until its bridge appended `total`
/// publishes since its data directory began (0: until the link is up);
/// returns the time from start, then stops it.
fn drain_bridge(config: &Path, total: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let (mut child, ready) = start_gateway_ready(config)?;
    let result = wait_appended(ready.addr("http")?.context("no http address")?, total);
    let elapsed = start.elapsed();
    stop(&mut child);
    result.map(|()| elapsed)
}

/// Polls `/status` every 5 ms until the local topic holds `total`
/// records and the bridge holds none unacknowledged.
fn wait_appended(http: SocketAddr, total: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = http_get_json(http, "/status")?;
        let site = &status["bridge"]["site"];
        let end = log_end(&status);
        if site["state"] == "up" && end >= total && site["inflight"].as_u64() == Some(0) {
            // A reconnect mid-drain brings redeliveries, which would count
            // as progress here: such a round measures nothing.
            anyhow::ensure!(
                site["connects"].as_u64() == Some(1) && end == total,
                "the link reconnected during the drain ({end} records for {total}): {site}"
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the log holds {end} of {total} after 300 s: {site}"
        );
        std::thread::sleep(Duration::from_millis(5)); // /status is polled: no push
    }
}

/// Records in the local topic's partitions.
fn log_end(status: &serde_json::Value) -> usize {
    let topics = status["log"]["topics"].as_array().into_iter().flatten();
    topics
        .filter(|t| t["name"] == "ingest")
        .flat_map(|t| t["partitions"].as_array().into_iter().flatten())
        .filter_map(|p| p["end_offset"].as_u64())
        .sum::<u64>() as usize
}
