//! Real power cuts. Killing the gateway leaves the page cache intact, so it
//! cannot show that an acknowledgement waited for the fsync; killing the
//! machine does. The gateway runs in a qemu VM (TCG emulation) on a virtio
//! disk opened with `cache=none`: what the guest flushed is in the image
//! file, what sat in the guest's page cache dies with qemu. Each cycle boots
//! the VM on the same ext4 image, drives MQTT load (QoS 1 and QoS 2 devices,
//! every send and acknowledgement in a [`Ledger`]), SIGKILLs qemu at a random
//! moment (during boot, during log recovery, or under load), reads the image
//! back on the host (journal replayed on a copy, `debugfs rdump`,
//! `tidewell log verify` and `log dump`) and reconciles: every message
//! acknowledged in any cycle so far is there, intact, in per-device order.
//!
//! Next to the devices, a persistent QoS 1 subscriber (3.1.1, `clean_session
//! = 0`, one client id) is connected in every cycle with load: it subscribes
//! to every device's topic in the first cycle only, and later just
//! reconnects, expecting `session_present = 1`. After the last cycle the VM
//! boots once more without a cut and the subscriber receives until it has
//! every acknowledged message; then its [`Inbox`] is reconciled: nothing
//! acknowledged missing, first copies in per-device order (copies after a
//! cut are QoS 1 redeliveries, counted), no session lost.
//!
//! `TIDEWELL_POWERCUT_CYCLES` (default 5), `TIDEWELL_POWERCUT_SEED` (default
//! from the clock; printed), `TIDEWELL_POWERCUT_FSYNC` (`always`, `never` or
//! an interval in ms: the last two are expected to fail),
//! `TIDEWELL_POWERCUT_NOFILE` (the gateway's descriptor limit in the guest;
//! default 16384 as in systemd/tidewell.service),
//! `TIDEWELL_POWERCUT_KEEP=1` keeps the work directory,
//! `TIDEWELL_POWERCUT_CONSOLE=1` prints the guest console of every cycle. The VM is built by
//! `tests/faults/vm/build-initramfs.sh`; see `tests/faults/README.md`.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "faults/ledger.rs"]
mod ledger;
#[path = "faults/load.rs"]
mod load;
#[path = "faults/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::BIN;
use ledger::{Evidence, Inbox, Ledger, Report};
use qemu::{Machine, Vm};
use rumqttc::QoS;

/// The log topic the devices' MQTT topics are routed to.
const TOPIC: &str = "telemetry";
const DEVICES: usize = 4;
const USER: &str = "sensor";
const PASSWORD: &str = "powercut-password";
/// The persistent subscriber: its user (same password), its client id
/// (fixed, so that every connection finds the session), and the filter that
/// covers every device's topic.
const SUBSCRIBER_USER: &str = "dashboard";
const SUBSCRIBER_ID: &str = "pc-dashboard";
const FILTER: &str = "devices/+/telemetry";
/// The subscriber's catch-up after the last cycle ends when nothing new has
/// arrived for this long (or at `CATCH_UP_LIMIT`): then what is missing fails.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(900);
/// Boot plus recovery of a log of a few thousand segments under TCG takes
/// seconds; this only bounds a hang.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the log lives on the image (mounted on /data in the guest).
const DATA_DIR_ON_IMAGE: &str = "/tidewell";

struct Settings {
    cycles: usize,
    seed: u64,
    fsync: String,
    /// The gateway's descriptor limit in the guest (default: the systemd
    /// unit's 16384).
    nofile: Option<String>,
    keep: bool,
    /// Print the guest console of every cycle.
    console: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var("TIDEWELL_POWERCUT_SEED")
            .map(|s| s.parse().expect("TIDEWELL_POWERCUT_SEED is a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        Settings {
            cycles: var("TIDEWELL_POWERCUT_CYCLES")
                .map(|c| c.parse().expect("TIDEWELL_POWERCUT_CYCLES is a number"))
                .unwrap_or(5),
            seed,
            fsync: var("TIDEWELL_POWERCUT_FSYNC").unwrap_or_else(|| "always".into()),
            nofile: var("TIDEWELL_POWERCUT_NOFILE"),
            console: var("TIDEWELL_POWERCUT_CONSOLE").is_some_and(|v| v != "0"),
            keep: var("TIDEWELL_POWERCUT_KEEP").is_some_and(|v| v != "0"),
        }
    }
}

/// `fsync = ...` of the topic: "always", "never", or an interval in ms.
fn fsync_toml(setting: &str) -> String {
    match setting {
        "always" | "never" => format!("{setting:?}"),
        ms => {
            let ms: u64 = ms
                .parse()
                .expect("TIDEWELL_POWERCUT_FSYNC: always, never or ms");
            format!("{{ interval_ms = {ms} }}")
        }
    }
}

/// Small segments so that rolls (new files, directory fsyncs) happen under
/// load; two partitions so that group commits span files. `data_dir` and
/// the MQTT `listen` address are the guest's, or the host's for the
/// subscriber's catch-up.
fn config(data_dir: &str, listen: &str, fsync: &str, password_hash: &str) -> String {
    format!(
        r#"data_dir = {data_dir:?}
gateway_id = "powercut"

[log]
min_free_bytes = 16777216

[topics.{TOPIC}]
partitions = 2
fsync = {fsync}
max_segment_bytes = 65536

[mqtt]
listen = "{listen}"
allow_anonymous = false
default_topic = "{TOPIC}"

[[mqtt.users]]
username = "{USER}"
password_hash = "{password_hash}"
publish_acl = ["devices/{{client_id}}/#"]

[[mqtt.users]]
username = "{SUBSCRIBER_USER}"
password_hash = "{password_hash}"
publish_acl = []
subscribe_acl = ["{FILTER}"]

[[mqtt.routes]]
filter = "{FILTER}"
topic = "{TOPIC}"
key = "segment:1"

[http]
enabled = false
"#,
        fsync = fsync_toml(fsync)
    )
}

/// An argon2id hash with the smallest cost the gateway accepts: every
/// CONNECT verifies it, and the default cost takes ~0.3 s per CONNECT under
/// emulation. The cost is read from the hash itself.
fn cheap_password_hash() -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("cG93ZXJjdXRzYWx0").unwrap();
    argon
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// When the power goes.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// This long after qemu starts (kernel boot or gateway start-up).
    Boot(Duration),
    /// This long after the guest starts the gateway (log recovery).
    Recovery(Duration),
    /// This long after the gateway is ready and the devices start publishing.
    Load(Duration),
}

impl Cut {
    /// Cycles rotate through a short load, recovery, a short load, boot and
    /// a long load (so any five cycles have each kind; a long one lets the
    /// gateway checkpoint its recovery points, every 5 s) with random
    /// delays; `recovery` is how long the gateway took from start to ready
    /// last time.
    fn pick(n: usize, rng: &mut fastrand::Rng, recovery: Duration) -> Cut {
        let fraction = rng.f64();
        match n % 5 {
            2 => Cut::Recovery(recovery.mul_f64(1.2 * fraction)),
            4 => Cut::Boot(Duration::from_secs_f64(4.0 * fraction)),
            0 => Cut::Load(Duration::from_secs_f64(3.0 + 5.0 * fraction)),
            _ => Cut::Load(Duration::from_secs_f64(0.02 + 3.0 * fraction)),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Cut::Boot(_) => "boot",
            Cut::Recovery(_) => "recovery",
            Cut::Load(_) => "load",
        }
    }
}

/// Figures of one cycle.
#[derive(Debug)]
struct Cycle {
    cut: Cut,
    /// From qemu start to the gateway's ready line, if it got there.
    ready_after: Option<Duration>,
    /// From the guest starting the gateway to its ready line (log recovery).
    start_to_ready: Option<Duration>,
    elapsed: Duration,
    torn_tails: usize,
    fs_problems: usize,
}

struct Campaign {
    settings: Settings,
    machine: Machine,
    work: PathBuf,
    ledger: Arc<Ledger>,
    /// What the persistent subscriber received, over every cycle.
    inbox: Arc<Inbox>,
    runtime: tokio::runtime::Runtime,
    rng: fastrand::Rng,
    cycles: Vec<Cycle>,
    /// The latest reconcile: it covers every cycle so far.
    last: Report,
    /// Segment files in the log at the latest read-back.
    segments: usize,
    /// The data directory of the latest read-back (where the subscriber
    /// catches up after the last cycle).
    data: Option<PathBuf>,
    /// How long the subscriber's catch-up took after the last cycle.
    catch_up_time: Option<Duration>,
}

impl Campaign {
    /// Boots, cuts (under load, or earlier), reads back and reconciles once.
    fn cycle(&mut self, n: usize) -> Result<(), String> {
        let started = Instant::now();
        let recovery = self
            .cycles
            .iter()
            .rev()
            .find_map(|c| c.start_to_ready)
            .unwrap_or(Duration::from_millis(300));
        let cut = Cut::pick(n, &mut self.rng, recovery);
        let mut vm = Vm::boot(&self.machine);
        let driven = self.drive(&mut vm, cut);
        vm.power_cut();
        let console = vm.console_text();
        driven.map_err(|e| format!("cycle {n} ({cut:?}): {e}\n--- console ---\n{console}"))?;
        if self.settings.console {
            eprintln!("--- cycle {n} console ---\n{console}\n---");
        }
        let (evidence, fs_problems) = self.read_back(&console)?;
        let mut report = self.ledger.reconcile(&evidence);
        self.ledger
            .reconcile_subscriber(&self.inbox, false, &mut report);
        let sub = report.subscriber.clone().unwrap_or_default();
        let cycle = Cycle {
            cut,
            ready_after: vm.seen(qemu::READY).map(|at| at - vm.booted),
            start_to_ready: vm
                .seen(qemu::STARTING)
                .zip(vm.seen(qemu::READY))
                .map(|(start, ready)| ready.saturating_duration_since(start)),
            elapsed: started.elapsed(),
            torn_tails: console.matches("log recovery: TornTail").count(),
            fs_problems: fs_problems.len(),
        };
        eprintln!(
            "cycle {n}: cut {:?} ({}), ready after {:?}, sent {} acked {} present {} lost {} corrupt {} out of order {}; subscriber received {} (not yet {}) copies {} out of order {} session lost {}{} ({:.1} s)",
            cycle.cut,
            cycle.cut.kind(),
            cycle.ready_after,
            report.sent,
            report.acked,
            report.present_local,
            report.lost,
            report.corrupt,
            report.out_of_order_local,
            sub.received,
            sub.missing,
            sub.duplicates,
            sub.out_of_order,
            sub.session_failures,
            if fs_problems.is_empty() { String::new() } else { format!(", e2fsck -n: {fs_problems:?}") },
            cycle.elapsed.as_secs_f64()
        );
        self.cycles.push(cycle);
        let clean = report.clean();
        self.last = report;
        if !clean {
            return Err(format!("cycle {n} ({cut:?}):\n{console}"));
        }
        Ok(())
    }

    /// Waits for the moment of `cut`, with the devices publishing in the
    /// load case. The caller cuts the power.
    fn drive(&mut self, vm: &mut Vm, cut: Cut) -> Result<(), String> {
        match cut {
            Cut::Boot(after) => {
                // Fails only if the guest gave up before the moment.
                match vm.wait_for(qemu::READY, after) {
                    Err(e) if !e.starts_with("no ") => return Err(e),
                    _ => {}
                }
                std::thread::sleep(after.saturating_sub(vm.booted.elapsed()));
            }
            Cut::Recovery(after) => {
                let started = vm.wait_for(qemu::STARTING, READY_TIMEOUT)?;
                std::thread::sleep(after.saturating_sub(started.elapsed()));
            }
            Cut::Load(after) => {
                vm.wait_for(qemu::READY, READY_TIMEOUT)?;
                self.load(vm, after)?;
            }
        }
        Ok(())
    }

    /// Connects the subscriber (subscribing in the first cycle), publishes
    /// from every device for `duration`, then cuts the power while they are
    /// still publishing.
    fn load(&mut self, vm: &mut Vm, duration: Duration) -> Result<(), String> {
        let first = self.inbox.subscribed_from().is_none();
        let subscriber = self.connect_subscriber(
            load::Target {
                port: vm.port,
                ..target(SUBSCRIBER_USER)
            },
            first.then_some(FILTER),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..DEVICES)
            .map(|d| {
                let qos = if d % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                self.runtime.spawn(load::device(
                    load::Target {
                        port: vm.port,
                        ..target(USER)
                    },
                    format!("pc-{d}"),
                    qos,
                    self.ledger.clone(),
                    stop.clone(),
                    self.rng.u64(..),
                ))
            })
            .collect();
        std::thread::sleep(duration);
        vm.power_cut();
        stop.store(true, Ordering::Relaxed);
        self.runtime.block_on(async {
            for task in tasks.into_iter().chain([subscriber]) {
                // A client stops as soon as its connection dies.
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
        });
        Ok(())
    }

    /// One connection of the persistent subscriber; its task records what
    /// it receives until the connection dies. A wrong `session_present`
    /// fails the cycle.
    fn connect_subscriber(
        &mut self,
        target: load::Target,
        filter: Option<&str>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let task = self.runtime.block_on(load::subscriber(
            target,
            SUBSCRIBER_ID,
            filter,
            self.ledger.clone(),
            self.inbox.clone(),
        ))?;
        if !self.inbox.sessions_kept() {
            task.abort();
            return Err(format!(
                "{SUBSCRIBER_ID}: CONNACK with the wrong session_present (a session lost after its SUBACK?)"
            ));
        }
        Ok(task)
    }

    /// After the last cycle: the gateway binary runs on the host, on the
    /// data directory of the last read-back (the journal replayed, as the
    /// next boot would find it; native speed instead of a sixth boot under
    /// TCG), and the subscriber receives until it has every acknowledged
    /// message its subscription covers, or nothing new came for
    /// `CATCH_UP_STALL`.
    fn finish(&mut self) -> Result<(), String> {
        let data = self.data.clone().ok_or("no log was ever read back")?;
        let dir = self.work.join("catch-up");
        std::fs::create_dir_all(&dir).unwrap();
        let config = config(
            data.to_str().unwrap(),
            "127.0.0.1:0",
            &self.settings.fsync,
            &cheap_password_hash(),
        );
        let gateway = harness::Gateway::start(&dir, &config);
        let started = Instant::now();
        let result = self.catch_up(gateway.port());
        self.catch_up_time = Some(started.elapsed());
        let stderr = gateway.stderr_text();
        let damage: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("log recovery:") && l.contains("ERROR"))
            .collect();
        if !damage.is_empty() {
            return Err(format!("catch-up: recovery reported damage: {damage:?}"));
        }
        result.map_err(|e| format!("catch-up: {e}\n--- gateway ---\n{stderr}"))
    }

    fn catch_up(&mut self, port: u16) -> Result<(), String> {
        let from = self
            .inbox
            .subscribed_from()
            .ok_or("the subscriber never subscribed")?;
        let target = load::Target {
            port,
            ..target(SUBSCRIBER_USER)
        };
        let task = self.connect_subscriber(target, None)?;
        let wanted = self.ledger.acked_since(&from);
        let started = Instant::now();
        loop {
            let before = self.inbox.distinct();
            let missing = self.inbox.wait_for(wanted.iter().cloned(), CATCH_UP_STALL);
            if missing == 0 || self.inbox.distinct() == before || started.elapsed() > CATCH_UP_LIMIT
            {
                break;
            }
        }
        task.abort();
        Ok(())
    }

    /// The log as the image holds it after the cut, checked by `log verify`
    /// and read by `log dump`; damage that recovery reported at this boot
    /// counts too. Returns the evidence and e2fsck's findings.
    fn read_back(&mut self, console: &str) -> Result<(Evidence, Vec<String>), String> {
        let (data, fs_problems) = self.machine.read_back(DATA_DIR_ON_IMAGE, &self.work);
        let mut evidence = Evidence::default();
        evidence.damage.extend(
            console
                .lines()
                .filter(|l| l.contains("log recovery:") && l.contains("ERROR"))
                .map(|l| format!("at boot: {l}")),
        );
        // None: cut before the gateway first created its log.
        let Some(data) = data else {
            return Ok((evidence, fs_problems));
        };
        self.segments = count_files(&data, "log");
        self.data = Some(data.clone());
        let verified = ledger::parse_verify(&harness::verify_json(&data))?;
        evidence.damage.extend(verified.damage);
        evidence.local = ledger::found_in_dump(&harness::dump_text(&data), Some(TOPIC))?;
        Ok((evidence, fs_problems))
    }

    /// The campaign's table: the last reconcile (which covers every cycle)
    /// with the campaign's own figures on top.
    fn report(&self, total: Duration) -> Report {
        let mut report = self.last.clone();
        let count = |kind| self.cycles.iter().filter(|c| c.cut.kind() == kind).count();
        let secs = |f: fn(&Cycle) -> Option<Duration>| -> Vec<f64> {
            self.cycles
                .iter()
                .filter_map(f)
                .map(|d| d.as_secs_f64())
                .collect()
        };
        let sum = |f: fn(&Cycle) -> usize| self.cycles.iter().map(f).sum::<usize>();
        report.row("campaign", "powercut (qemu SIGKILL, cache=none, ext4)");
        report.row("seed", self.settings.seed);
        report.row("fsync", &self.settings.fsync);
        report.row(
            "descriptor limit (guest)",
            self.settings.nofile.as_deref().unwrap_or("16384"),
        );
        report.row("cycles", self.cycles.len());
        report.row(
            "cuts at boot / recovery / load",
            format!(
                "{} / {} / {}",
                count("boot"),
                count("recovery"),
                count("load")
            ),
        );
        report.row("torn tails cut at recovery", sum(|c| c.torn_tails));
        report.row("e2fsck -n problems", sum(|c| c.fs_problems));
        report.row("segment files at the end", self.segments);
        report.row("boot to ready", mean_max(&secs(|c| c.ready_after)));
        report.row(
            "gateway start to ready",
            mean_max(&secs(|c| c.start_to_ready)),
        );
        report.row("time per cycle", mean_max(&secs(|c| Some(c.elapsed))));
        if let Some(catch_up) = self.catch_up_time {
            report.row(
                "subscriber catch-up (host gateway)",
                format!("{:.2} s", catch_up.as_secs_f64()),
            );
        }
        report.row("time", format!("{:.1} s", total.as_secs_f64()));
        report
    }
}

/// A client of `user` (every user has the same password); the port is the
/// VM's or the host gateway's.
fn target(user: &str) -> load::Target {
    load::Target {
        host: "127.0.0.1".into(),
        port: 0,
        credentials: Some((user.into(), PASSWORD.into())),
        pace: None,
    }
}

/// Files named `*.{ext}` under `dir`.
fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_files(&path, ext)
            } else {
                usize::from(path.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}

/// "mean / max" of seconds.
fn mean_max(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{mean:.2} s mean / {max:.2} s max")
}

/// Skips only where nothing promised qemu: CI installs it (tests/run).
fn vm_tools_present() -> bool {
    let install = format!("apt-get install -y {}", qemu::PACKAGES);
    if !qemu::have(qemu::QEMU) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} not found, and CI must run this test: {install}",
            qemu::QEMU
        );
        eprintln!("SKIPPED: {} not found ({install})", qemu::QEMU);
        return false;
    }
    for tool in [
        "debugfs",
        "e2fsck",
        "mkfs.ext4",
        "cpio",
        "apt-get",
        "dpkg-deb",
    ] {
        assert!(qemu::have(tool), "{tool} not found: {install}");
    }
    true
}

#[test]
fn acknowledged_messages_survive_power_cuts_in_device_order() {
    if !vm_tools_present() {
        return;
    }
    let settings = Settings::from_env();
    eprintln!(
        "powercut: {} cycles, seed {} (TIDEWELL_POWERCUT_SEED), fsync {}",
        settings.cycles, settings.seed, settings.fsync
    );
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("powercut-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let work = tmp.path().to_path_buf();
    let guest_data_dir = format!("/data{DATA_DIR_ON_IMAGE}");
    let config = config(
        &guest_data_dir,
        "0.0.0.0:1883",
        &settings.fsync,
        &cheap_password_hash(),
    );
    let mut machine = Machine::build(&work, BIN, &config, "1G", 16384);
    if let Some(nofile) = &settings.nofile {
        machine.cmdline = format!("tidewell.nofile={nofile}");
    }
    let mut campaign = Campaign {
        rng: fastrand::Rng::with_seed(settings.seed),
        settings,
        machine,
        work,
        ledger: Arc::new(Ledger::new()),
        inbox: Arc::new(Inbox::new()),
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        cycles: Vec::new(),
        last: Report::default(),
        segments: 0,
        data: None,
        catch_up_time: None,
    };
    let mut failure = None;
    for n in 1..=campaign.settings.cycles {
        if let Err(e) = campaign.cycle(n) {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() {
        failure = campaign.finish().err();
    }
    let mut report = campaign.report(started.elapsed());
    // Missing messages count only once the subscriber had its last boot.
    let finished = failure.is_none();
    campaign
        .ledger
        .reconcile_subscriber(&campaign.inbox, finished, &mut report);
    if failure.is_none() && !report.clean() {
        failure = Some("the subscriber's ledger does not reconcile".into());
    }
    let path = Report::default_path("powercut");
    report.write(&path).unwrap();
    eprintln!("{report}report written to {}", path.display());
    if failure.is_some() || campaign.settings.keep {
        let kept = tmp.keep();
        eprintln!(
            "work directory (disk.img, copy.img, extract/) kept in {}",
            kept.display()
        );
    }
    if let Some(e) = failure {
        panic!("seed {}: {e}", campaign.settings.seed);
    }
}
