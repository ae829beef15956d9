//! The fault campaign's process, disk and upstream faults (the power cuts
//! are `tests/powercut.rs`). Every campaign keeps a ledger of what the MQTT
//! devices sent and which of it the gateway acknowledged, and reconciles it
//! at the end with the local log (`tidewell log verify` and `log dump`) and
//! with what an independent consumer finds upstream. Each prints its report
//! table and writes it under `target/faults/` (or `$TIDEWELL_FAULTS_REPORT`).
//!
//! `TIDEWELL_FAULT_KILLS` sets the number of SIGKILLs of the process
//! campaign (default 200, the CI run; the long run uses 1000 or more).

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/kafka.rs"]
mod kafka;
#[path = "faults/ledger.rs"]
mod ledger;
#[path = "faults/load.rs"]
mod load;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::tansu::Broker;
use harness::{wait_until, Gateway, Launch};
use kafka::{consume_all, drained, status};
use ledger::{Evidence, Found, Ledger, Report};
use rumqttc::QoS;

const GATEWAY_ID: &str = "gw-faults";
const TOPIC: &str = "ingest";
const REMOTE: &str = "gw-faults.ingest";
const PARTITIONS: u32 = 2;
const DEVICES: usize = 4;

/// Two partitions keyed by device, fsync `always`, small segments (a roll
/// every few dozen messages), replicated data older than a second deleted,
/// and a mirror to `gw-faults.ingest`.
fn config(dir: &Path, bootstrap: &str, topic_extra: &str) -> String {
    format!(
        r#"{local}
[upstream]
bootstrap_servers = "{bootstrap}"
backoff_initial_ms = 100
backoff_max_ms = 1000
slow_retry_ms = 1000
checkpoint_interval_ms = 200
# Larger upstream batches: tansu, the test broker, reads back many small
# batches very slowly.
linger_ms = 100

[[upstream.mirror]]
local = "{TOPIC}"
remote = "{{gateway_id}}.{{topic}}"
partitioning = "same"
"#,
        local = local_config(dir, topic_extra),
    )
}

/// The same gateway without an upstream (buffer-only).
fn local_config(dir: &Path, topic_extra: &str) -> String {
    format!(
        r#"{data_dir}
gateway_id = "{GATEWAY_ID}"

[topics.{TOPIC}]
partitions = {PARTITIONS}
fsync = "always"
max_segment_bytes = 8192
{topic_extra}

[mqtt]
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"

[[mqtt.routes]]
filter = "devices/+/telemetry"
topic = "{TOPIC}"
key = "segment:1"
"#,
        data_dir = harness::data_dir_line(dir),
    )
}

/// Runs `DEVICES` MQTT devices against `port` (half QoS 1, half QoS 2), 20
/// messages/s each (tansu, the test broker, serves fetches of many small
/// batches slowly: 27,000 records took minutes to read back), until `stop`
/// is set or their connections die.
fn start_devices(
    runtime: &tokio::runtime::Runtime,
    port: u16,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    start_paced(
        runtime,
        port,
        ledger,
        stop,
        seed,
        Some(Duration::from_millis(50)),
    )
}

/// As [`start_devices`], with the pause between publishes given (`None`:
/// flat out).
fn start_paced(
    runtime: &tokio::runtime::Runtime,
    port: u16,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    seed: u64,
    pace: Option<Duration>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..DEVICES)
        .map(|d| {
            let target = load::Target {
                host: "127.0.0.1".into(),
                port,
                credentials: None,
                pace,
            };
            let qos = if d % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            runtime.spawn(load::device(
                target,
                format!("d{d}"),
                qos,
                ledger.clone(),
                stop.clone(),
                seed.wrapping_add(d as u64),
            ))
        })
        .collect()
}

fn stop_devices(
    runtime: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    devices: Vec<tokio::task::JoinHandle<()>>,
) {
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for d in devices {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
    });
}

/// What survived: `log verify` damage, the local dump, and (when a broker is
/// given) what a consumer reads from the remote topic.
fn evidence(data_dir: &Path, broker: Option<&mut Broker>) -> Evidence {
    let verified = ledger::parse_verify(&harness::verify_json(data_dir)).unwrap();
    let local = ledger::found_in_dump(&harness::dump_text(data_dir), Some(TOPIC)).unwrap();
    let upstream = broker.map(|b| {
        read_upstream(b)
            .into_iter()
            .map(|r| Found {
                stream: format!("{REMOTE}/{}", r.partition),
                offset: r.offset as u64,
                payload: r.value,
            })
            .collect()
    });
    Evidence {
        local,
        upstream,
        damage: verified.damage,
    }
}

/// Everything in the remote topic; restarts tansu first if its storage task
/// panicked (it does under load), and tries again if the read fails.
fn read_upstream(broker: &mut Broker) -> Vec<kafka::Upstream> {
    for attempt in 1.. {
        broker.revive();
        let bootstrap = broker.bootstrap();
        let read = std::panic::catch_unwind(|| consume_all(&bootstrap, REMOTE, PARTITIONS as i32));
        match read {
            Ok(records) => return records,
            Err(_) if attempt < 3 => {
                eprintln!("reading upstream failed (attempt {attempt}); again");
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    unreachable!()
}

fn finish(report: &Report, campaign: &str) {
    println!("{report}");
    let path = Report::default_path(campaign);
    report.write(&path).unwrap();
    println!("report written to {}", path.display());
    assert!(report.clean(), "campaign {campaign} failed:\n{report}");
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("TIDEWELL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Where in the gateway's life a kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// Right after the ready line: recovery just ended, devices connecting.
    Startup,
    /// While devices publish: appends, group fsyncs and segment rolls.
    Ingest,
    /// While the backlog of a broker outage drains (and retention deletes
    /// what was replicated).
    Drain,
}

/// SIGKILLs the gateway again and again while devices publish, segments roll,
/// retention deletes replicated segments and replication drains; the broker
/// goes away for stretches so a backlog builds. At the end every acknowledged
/// message is upstream or in the local log, intact and in device order.
#[test]
fn acknowledged_messages_survive_repeated_sigkills() {
    let kills = env_count("TIDEWELL_FAULT_KILLS", 200);
    let seed = seed();
    println!("process campaign: {kills} kills, seed {seed} (TIDEWELL_FAULT_SEED)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = harness::temp_dir();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Broker::start(&broker_dir);
    broker.create_topic(REMOTE, PARTITIONS);
    let cfg = config(dir.path(), &broker.bootstrap(), "retention_ms = 1000");
    let data_dir = harness::data_dir(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Ledger::new());
    let started = Instant::now();
    let mut moments = std::collections::BTreeMap::<Moment, usize>::new();
    let mut outages = 0;
    let mut broker_panics = 0;
    for kill in 0..kills {
        broker_panics += usize::from(broker.revive());
        // Every 25 kills the broker goes away for 8 of them, then comes back:
        // the kills after its return land while the backlog drains.
        let phase = kill % 25;
        if phase == 10 && broker.is_running() {
            broker.stop();
            outages += 1;
        }
        if phase == 18 && !broker.is_running() {
            broker.restart();
        }
        let draining = (18..25).contains(&phase);
        let moment = kill_once(dir.path(), &cfg, &runtime, &ledger, &mut rng, draining);
        *moments.entry(moment).or_default() += 1;
    }
    if !broker.is_running() {
        broker.restart();
    }
    // One last clean run drains whatever is left.
    let gateway = Gateway::start(dir.path(), &cfg);
    let local_end = || -> u64 {
        status(&gateway).map_or(0, |s| {
            s["partitions"].as_array().map_or(0, |ps| {
                ps.iter().map(|p| p["log_end"].as_u64().unwrap_or(0)).sum()
            })
        })
    };
    let caught_up = wait_until(Duration::from_secs(300), || {
        broker_panics += usize::from(broker.revive());
        let end = local_end();
        end > 0 && drained(&gateway, end)
    });
    assert!(
        caught_up,
        "replication did not catch up: {:#?}\nbroker:\n{}\ngateway:\n{}",
        status(&gateway),
        broker.log_tail(),
        gateway.stderr_text()
    );
    gateway.stop();

    let mut report = ledger.reconcile(&evidence(&data_dir, Some(&mut broker)));
    kill_rows(
        &mut report,
        "process kills (SIGKILL)",
        seed,
        kills,
        &moments,
    );
    report.row("broker outages", outages);
    report.row("broker restarts after a tansu panic", broker_panics);
    report.row("time", format!("{:.0} s", started.elapsed().as_secs_f64()));
    finish(&report, "process");
    assert!(
        ledger.acked() > kills as u64,
        "too little load: {}",
        ledger.acked()
    );
}

/// The rows every kill campaign reports.
fn kill_rows(
    report: &mut Report,
    campaign: &str,
    seed: u64,
    kills: usize,
    moments: &std::collections::BTreeMap<Moment, usize>,
) {
    report.row("campaign", campaign);
    report.row("seed", seed);
    report.row("kills", kills);
    for (moment, n) in moments {
        report.row(&format!("kills during {moment:?}"), n);
    }
}

/// Starts the gateway, lets the devices publish, and SIGKILLs it at a
/// random moment; says which kind of moment.
fn kill_once(
    dir: &Path,
    cfg: &str,
    runtime: &tokio::runtime::Runtime,
    ledger: &Arc<Ledger>,
    rng: &mut fastrand::Rng,
    draining: bool,
) -> Moment {
    let gateway = Gateway::start(dir, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let devices = start_devices(runtime, gateway.port(), ledger, &stop, rng.u64(..));
    let (moment, delay) = match rng.u32(0..10) {
        0 => (Moment::Startup, rng.u64(0..20)),
        _ if draining => (Moment::Drain, rng.u64(10..600)),
        _ => (Moment::Ingest, rng.u64(10..400)),
    };
    // The fault's timing is the point here, not a wait for a condition.
    std::thread::sleep(Duration::from_millis(delay));
    gateway.kill();
    stop_devices(runtime, &stop, devices);
    moment
}

/// The same kills without an upstream (buffer-only, nothing trimmed), so a
/// long run is not bounded by the test broker: `TIDEWELL_FAULT_KILLS_LOCAL`
/// (default 100) kills, then every acknowledged message must be in the log.
#[test]
fn acknowledged_messages_survive_repeated_sigkills_buffer_only() {
    let kills = env_count("TIDEWELL_FAULT_KILLS_LOCAL", 100);
    let seed = seed();
    println!("buffer-only process campaign: {kills} kills, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = harness::temp_dir();
    let cfg = local_config(dir.path(), "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Ledger::new());
    let started = Instant::now();
    let mut moments = std::collections::BTreeMap::<Moment, usize>::new();
    for _ in 0..kills {
        let moment = kill_once(dir.path(), &cfg, &runtime, &ledger, &mut rng, false);
        *moments.entry(moment).or_default() += 1;
    }
    Gateway::start(dir.path(), &cfg).stop();
    let mut report = ledger.reconcile(&evidence(&harness::data_dir(dir.path()), None));
    kill_rows(
        &mut report,
        "process kills (SIGKILL), buffer-only",
        seed,
        kills,
        &moments,
    );
    report.row("time", format!("{:.0} s", started.elapsed().as_secs_f64()));
    finish(&report, "process-local");
    assert!(ledger.acked() > kills as u64, "too little load");
}

/// The body of a 200 answer, or the error (naming the status) otherwise.
fn readyz(gateway: &Gateway) -> String {
    gateway.get("/readyz").unwrap_or_else(|e| e)
}

/// Segment fsyncs start failing with EIO (a dying SD card, through the
/// log's fault-injecting storage): the writer poisons itself, the gateway
/// reports it (`/readyz`, metrics, log) and refuses new data instead of
/// acknowledging it; after a restart on a healthy disk every message
/// acknowledged before the failure is there.
#[test]
fn eio_on_fsync_poisons_the_writer_and_nothing_is_acknowledged_after_it() {
    eio_campaign("fsync:60", "eio-fsync");
}

/// The same with segment writes failing (from the 200th on).
#[test]
fn eio_on_write_poisons_the_writer_and_nothing_is_acknowledged_after_it() {
    eio_campaign("write:200", "eio-write");
}

fn eio_campaign(spec: &str, name: &str) {
    let dir = harness::temp_dir();
    let cfg = local_config(dir.path(), "");
    let data_dir = harness::data_dir(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Ledger::new());
    let env = [("TIDEWELL_FAULT_EIO", spec)];
    let gateway = Launch::config(dir.path(), &cfg).envs(&env).start();
    let stop = Arc::new(AtomicBool::new(false));
    let devices = start_devices(&runtime, gateway.port(), &ledger, &stop, seed());
    let poisoned = wait_until(Duration::from_secs(30), || {
        gateway.metric("tidewell_log_poisoned") == 1.0
    });
    assert!(poisoned, "the writer did not poison: {}", readyz(&gateway));
    stop_devices(&runtime, &stop, devices);
    let acked_at_poison = ledger.acked();
    assert!(readyz(&gateway).contains("503"), "/readyz still ready");
    assert!(gateway.stderr_contains("EIO") || gateway.stderr_contains("Input/output error"));

    // New data is refused, never acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let devices = start_devices(&runtime, gateway.port(), &ledger, &stop, seed());
    let refused = wait_until(Duration::from_secs(10), || {
        gateway.metric("tidewell_mqtt_refusals_total{reason=\"log_error\"}") > 0.0
    });
    stop_devices(&runtime, &stop, devices);
    assert!(refused, "publishes to a poisoned log are not refused");
    assert_eq!(
        ledger.acked(),
        acked_at_poison,
        "acknowledged after the failure"
    );
    gateway.kill();

    // A healthy disk again: everything acknowledged is there.
    let gateway = Gateway::start(dir.path(), &cfg);
    gateway.stop();
    let mut report = ledger.reconcile(&evidence(&data_dir, None));
    report.row("campaign", "EIO from the storage seam");
    report.row("TIDEWELL_FAULT_EIO", spec);
    finish(&report, name);
    assert!(
        acked_at_poison > 0,
        "nothing acknowledged before the failure"
    );
}

/// Mounts a `size` tmpfs on `path` (root only); unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(path.to_path_buf()))
    }
}

impl SmallFs {
    /// A 4 MiB data directory, or `None` (the test skips) where mounting
    /// needs a root this run does not have; in CI it must work.
    fn data_dir(path: &Path) -> Option<SmallFs> {
        let fs = SmallFs::mount(path, "4m");
        if fs.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "mounting a tmpfs needs root"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
        }
        fs
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The data directory on a 4 MiB filesystem that fills up, topic
/// `reject_new`: once free space falls to the reserve the gateway refuses
/// publishes (never acknowledging what it cannot store), stays up, and
/// everything acknowledged before is intact.
#[test]
fn a_full_filesystem_with_reject_new_refuses_and_keeps_everything_acknowledged() {
    let dir = harness::temp_dir();
    let data_dir = harness::data_dir(dir.path());
    let Some(_fs) = SmallFs::data_dir(&data_dir) else {
        return;
    };
    let topic = "when_full = \"reject_new\"";
    let cfg = local_config(dir.path(), topic)
        + "
[log]
min_free_bytes = 1048576
";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Ledger::new());
    let mut gateway = Gateway::start(dir.path(), &cfg);
    let mut rounds = 0;
    // Devices publish flat out; a refused publish closes a 3.1.1 connection,
    // so keep reconnecting them until the refusals are counted.
    let full = wait_until(Duration::from_secs(60), || {
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let mut devices = start_paced(&runtime, gateway.port(), &ledger, &stop, seed(), None);
        // Up to 2 s of publishing, then every device of this round is
        // stopped and joined: the next round reuses the client ids.
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        runtime.block_on(async {
            for d in &mut devices {
                let _ = tokio::time::timeout_at(until, d).await;
            }
        });
        devices.retain(|d| !d.is_finished());
        stop_devices(&runtime, &stop, devices);
        gateway.metric("tidewell_log_rejected_records_total") > 0.0
    });
    assert!(full, "the filesystem never filled");
    assert!(gateway.is_running(), "the gateway died on a full disk");
    let acked = ledger.acked();
    gateway.stop();
    let mut report = ledger.reconcile(&evidence(&data_dir, None));
    report.row("campaign", "full filesystem (4 MiB tmpfs), reject_new");
    report.row("publish rounds", rounds);
    finish(&report, "disk-full-reject");
    assert!(
        acked > 1000,
        "too little stored before the disk filled: {acked}"
    );
}

/// The same full filesystem with `drop_oldest`: ingest goes on, the oldest
/// segments go, and the log counts what it dropped (buffer-only here; with
/// an upstream the dropped ranges are also recorded as gaps, see
/// `tests/replicate.rs`). What is missing of the acknowledged messages is
/// exactly the oldest: each partition now starts where its drops end, nothing
/// acknowledged after them is lost, nothing is corrupt or out of order.
#[test]
fn a_full_filesystem_with_drop_oldest_drops_only_the_oldest_and_records_it() {
    let dir = harness::temp_dir();
    let data_dir = harness::data_dir(dir.path());
    let Some(_fs) = SmallFs::data_dir(&data_dir) else {
        return;
    };
    let cfg = local_config(dir.path(), "when_full = \"drop_oldest\"")
        + "\n[log]\nmin_free_bytes = 1048576\n";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Ledger::new());
    let gateway = Gateway::start(dir.path(), &cfg);
    let dropped = || gateway.metric("tidewell_topic_dropped_records_total");
    // Publish until the log has dropped something, then as much again.
    let mut rounds = 0;
    let mut publish_round = || {
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let devices = start_paced(&runtime, gateway.port(), &ledger, &stop, seed(), None);
        std::thread::sleep(Duration::from_millis(500));
        stop_devices(&runtime, &stop, devices);
    };
    let filled = wait_until(Duration::from_secs(60), || {
        publish_round();
        dropped() > 0.0
    });
    assert!(filled, "nothing was dropped");
    let acked_at_fill = ledger.acked();
    while ledger.acked() < acked_at_fill * 2 {
        publish_round();
    }
    let status = gateway.status();
    let partitions = status["log"]["topics"][0]["partitions"]
        .as_array()
        .unwrap()
        .clone();
    for p in &partitions {
        let (start, dropped) = (p["start_offset"].as_u64(), p["dropped_records"].as_u64());
        assert_eq!(start, dropped, "partition starts where its drops end: {p}");
    }
    assert!(gateway.stderr_contains("drop"), "drops are logged");
    gateway.stop();

    // Retention may drop once more between that status and the stop: count
    // the drops from what the stopped log starts with (offsets begin at 0).
    let evidence = evidence(&data_dir, None);
    let mut starts = std::collections::BTreeMap::<&str, u64>::new();
    for f in &evidence.local {
        let start = starts.entry(f.stream.as_str()).or_insert(f.offset);
        *start = (*start).min(f.offset);
    }
    let total_dropped: u64 = starts.values().sum();
    let mut report = ledger.reconcile(&evidence);
    report.row("campaign", "full filesystem (4 MiB tmpfs), drop_oldest");
    report.row(
        "records dropped (where the partitions now start)",
        total_dropped,
    );
    // Acknowledged records missing here are the ones drop_oldest dropped,
    // as documented: at most the dropped count, all of them the oldest.
    assert!(report.lost > 0 && report.lost <= total_dropped, "{report}");
    report.row("acknowledged, then dropped by drop_oldest", report.lost);
    report.lost = 0;
    report.examples.clear();
    println!("{report}");
    report
        .write(&Report::default_path("disk-full-drop"))
        .unwrap();
    assert_eq!(report.corrupt, 0, "{report}");
    assert_eq!(report.out_of_order_local, 0, "{report}");
}
