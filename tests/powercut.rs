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
//! `TIDEWELL_POWERCUT_CYCLES` (default 5), `TIDEWELL_POWERCUT_SEED` (default
//! from the clock; printed), `TIDEWELL_POWERCUT_FSYNC` (`always`, `never` or
//! an interval in ms: the last two are expected to fail),
//! `TIDEWELL_POWERCUT_KEEP=1` keeps the work directory. The VM is built by
//! `tests/faults/vm/build-initramfs.sh`; see `tests/faults/README.md`.

#[path = "faults/ledger.rs"]
mod ledger;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::{Evidence, Ledger, Report};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const BIN: &str = env!("CARGO_BIN_EXE_tidewell");
const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/faults/vm/build-initramfs.sh"
);
const QEMU: &str = "qemu-system-x86_64";
/// The MQTT topic routed to the log topic below, per device.
const TOPIC: &str = "telemetry";
const DEVICES: usize = 4;
const USER: &str = "sensor";
const PASSWORD: &str = "powercut-password";
/// Boot plus recovery of a log of a few hundred segments under TCG takes
/// seconds; this only bounds a hang.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the log lives on the image (mounted on /data in the guest).
const DATA_DIR_ON_IMAGE: &str = "/tidewell";

struct Settings {
    cycles: usize,
    seed: u64,
    fsync: String,
    keep: bool,
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
/// load; two partitions so that group commits span files.
fn config(fsync: &str, password_hash: &str) -> String {
    format!(
        r#"data_dir = "/data{DATA_DIR_ON_IMAGE}"
gateway_id = "powercut"

[log]
min_free_bytes = 16777216

[topics.{TOPIC}]
partitions = 2
fsync = {fsync}
max_segment_bytes = 65536

[mqtt]
listen = "0.0.0.0:1883"
allow_anonymous = false
default_topic = "{TOPIC}"

[[mqtt.users]]
username = "{USER}"
password_hash = "{password_hash}"
publish_acl = ["devices/{{client_id}}/#"]

[[mqtt.routes]]
filter = "devices/+/telemetry"
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

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `cmd`, panicking with its output unless it exits with one of `ok`.
fn run(cmd: &mut Command, ok: &[i32]) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        ok.contains(&code),
        "{cmd:?} exited with {code}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The VM's files: kernel, initramfs (with the gateway and its config) and
/// the ext4 disk image that lives across cycles.
struct Machine {
    kernel: PathBuf,
    initramfs: PathBuf,
    disk: PathBuf,
}

impl Machine {
    fn build(dir: &Path, config: &str) -> Machine {
        let config_path = dir.join("tidewell.toml");
        std::fs::write(&config_path, config).unwrap();
        run(
            Command::new(BIN)
                .args(["config", "check", "--config"])
                .arg(&config_path),
            &[0],
        );
        let vm = dir.join("vm");
        run(
            Command::new("bash")
                .arg(BUILD_SCRIPT)
                .arg("--binary")
                .arg(BIN)
                .arg("--config")
                .arg(&config_path)
                .arg("--out")
                .arg(&vm),
            &[0],
        );
        let disk = dir.join("disk.img");
        // Inode tables and journal written now, not lazily by the guest.
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-N", "16384", "-L", "tidewell"])
                .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&disk)
                .arg("1G"),
            &[0],
        );
        Machine {
            kernel: vm.join("vmlinuz"),
            initramfs: vm.join("initramfs.cpio"),
            disk,
        }
    }
}

/// A running VM; qemu is SIGKILLed on drop.
struct Vm {
    child: Child,
    port: u16,
    booted: Instant,
    /// Console lines (the guest's ttyS0) so far.
    console: Arc<Mutex<Vec<String>>>,
}

impl Vm {
    fn boot(machine: &Machine) -> Vm {
        let port = free_port();
        let accel = std::env::var("TIDEWELL_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut child = Command::new(QEMU)
            .args(["-accel", &accel, "-m", "512", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&machine.kernel)
            .arg("-initrd")
            .arg(&machine.initramfs)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,cache=none",
                machine.disk.display()
            ))
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:1883"))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{QEMU}: {e}"));
        let console = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = console.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.trim_end().to_string());
                }
            });
        }
        Vm {
            child,
            port,
            booted: Instant::now(),
            console,
        }
    }

    fn console_has(&self, needle: &str) -> bool {
        self.console
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until the console shows `needle`; fails if the guest gave up
    /// or qemu died first.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console_has(needle) {
                return Ok(());
            }
            if self.console_has("tidewell-init: FAILED")
                || self.console_has("tidewell-init: gateway exited")
            {
                return Err(format!("the guest gave up waiting for {needle:?}"));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("qemu exited ({status}) before {needle:?}"));
            }
            if Instant::now() > deadline {
                return Err(format!("no {needle:?} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL to qemu: the guest's page cache is gone, as in a power cut.
    fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn console_text(&self) -> String {
        self.console.lock().unwrap().join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    fn pick(rng: &mut fastrand::Rng) -> Cut {
        let (kind, ms) = (rng.u8(0..10), rng.u64(0..1000));
        match kind {
            0 | 1 => Cut::Boot(Duration::from_millis(ms * 4)),
            2 | 3 => Cut::Recovery(Duration::from_millis(ms * 3 / 10)),
            _ => Cut::Load(Duration::from_millis(20 + ms * 3)),
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

/// One device: publishes ledger messages until its connection dies, the n-th
/// outgoing PUBLISH being the n-th message sent (rumqttc keeps request
/// order). PUBACK, or PUBREC for QoS 2, marks the message acknowledged: the
/// gateway sends either only once the record is durable.
async fn device(
    port: u16,
    id: String,
    qos: QoS,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
    options.set_credentials(USER, PASSWORD);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(16);
    let (client, mut events) = AsyncClient::new(options, 16);
    let queued: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let publisher = tokio::spawn({
        let (ledger, queued, id) = (ledger.clone(), queued.clone(), id.clone());
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let topic = format!("devices/{id}/telemetry");
            while !stop.load(Ordering::Relaxed) {
                let message = ledger.send(&id, rng.usize(ledger::MIN_PAYLOAD_BYTES..400));
                queued.lock().unwrap().push_back(message.seq);
                if client
                    .publish(&topic, qos, false, message.payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let mut in_flight = std::collections::HashMap::new();
    loop {
        let acked = match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let seq = queued.lock().unwrap().pop_front();
                in_flight.insert(pkid, seq.expect("a publish the ledger saw"));
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => Some(ack.pkid),
            Ok(Event::Incoming(Packet::PubRec(rec))) => Some(rec.pkid),
            Ok(_) => None,
            Err(_) => break,
        };
        if let Some(seq) = acked.and_then(|pkid| in_flight.remove(&pkid)) {
            ledger.ack(&id, seq);
        }
    }
    publisher.abort();
}

/// Figures of one cycle.
#[derive(Debug)]
struct Cycle {
    cut: Cut,
    ready_after: Option<Duration>,
    elapsed: Duration,
    torn_tails: usize,
}

struct Campaign {
    settings: Settings,
    machine: Machine,
    work: PathBuf,
    ledger: Arc<Ledger>,
    runtime: tokio::runtime::Runtime,
    rng: fastrand::Rng,
    cycles: Vec<Cycle>,
    last: Report,
}

impl Campaign {
    /// Boots, loads, cuts, reads back and reconciles once.
    fn cycle(&mut self, n: usize) -> Result<(), String> {
        let started = Instant::now();
        let cut = Cut::pick(&mut self.rng);
        let mut vm = Vm::boot(&self.machine);
        let (ready_after, console) = self.drive(&mut vm, cut)?;
        vm.power_cut();
        let console_text = vm.console_text();
        drop(vm);
        let (evidence, torn_tails) = self.read_back(&console_text)?;
        let report = self.ledger.reconcile(&evidence);
        let cycle = Cycle {
            cut,
            ready_after,
            elapsed: started.elapsed(),
            torn_tails,
        };
        eprintln!(
            "cycle {n}: cut {:?}, ready after {:?}, sent {} acked {} present {} lost {} corrupt {} out-of-order {} ({:.1} s)",
            cycle.cut,
            cycle.ready_after,
            report.sent,
            report.acked,
            report.present_local,
            report.lost,
            report.corrupt,
            report.out_of_order_local,
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

    /// Waits for the moment of `cut`, with load running in the load case.
    /// Returns how long the gateway took to be ready (if it got there) and
    /// the console so far.
    fn drive(&mut self, vm: &mut Vm, cut: Cut) -> Result<(Option<Duration>, String), String> {
        let fail = |vm: &Vm, e: String| format!("{e}\n--- console ---\n{}", vm.console_text());
        match cut {
            Cut::Boot(after) => {
                let ready = vm.wait_for("tidewell: ready", after);
                let ready_after = ready.is_ok().then(|| vm.booted.elapsed());
                std::thread::sleep(after.saturating_sub(vm.booted.elapsed()));
                Ok((ready_after, vm.console_text()))
            }
            Cut::Recovery(after) => {
                vm.wait_for("tidewell-init: starting gateway", READY_TIMEOUT)
                    .map_err(|e| fail(vm, e))?;
                std::thread::sleep(after);
                let ready_after = vm
                    .console_has("tidewell: ready")
                    .then(|| vm.booted.elapsed());
                Ok((ready_after, vm.console_text()))
            }
            Cut::Load(after) => {
                vm.wait_for("tidewell: ready", READY_TIMEOUT)
                    .map_err(|e| fail(vm, e))?;
                let ready_after = vm.booted.elapsed();
                self.load(vm, after);
                Ok((Some(ready_after), vm.console_text()))
            }
        }
    }

    /// Publishes from every device for `duration`, then cuts the power while
    /// they are still publishing.
    fn load(&mut self, vm: &mut Vm, duration: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..DEVICES)
            .map(|d| {
                let qos = if d % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                self.runtime.spawn(device(
                    vm.port,
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
            for task in tasks {
                // A device stops as soon as its connection dies.
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
        });
    }

    /// Reads the log off the image: the journal is replayed on a copy (as
    /// the next mount would; debugfs does not), so the image itself stays
    /// exactly as the power cut left it for the next boot.
    fn read_back(&self, console: &str) -> Result<(Evidence, usize), String> {
        let copy = self.work.join("copy.img");
        let extract = self.work.join("extract");
        let _ = std::fs::remove_dir_all(&extract);
        std::fs::create_dir_all(&extract).unwrap();
        run(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&self.machine.disk)
                .arg(&copy),
            &[0],
        );
        run(
            Command::new("e2fsck")
                .args(["-E", "journal_only", "-p"])
                .arg(&copy),
            &[0, 1],
        );
        run(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump {DATA_DIR_ON_IMAGE} {}", extract.display()))
                .arg(&copy),
            &[0],
        );
        let mut evidence = Evidence::default();
        // Damage found by recovery at this boot (torn tails are its job).
        let recovery: Vec<&str> = console
            .lines()
            .filter(|l| l.contains("log recovery:"))
            .collect();
        let torn_tails = recovery.iter().filter(|l| l.contains("TornTail")).count();
        evidence.damage.extend(
            recovery
                .iter()
                .filter(|l| l.contains("ERROR"))
                .map(|l| format!("at boot: {l}")),
        );
        let data = extract.join(DATA_DIR_ON_IMAGE.trim_start_matches('/'));
        if !data.join(TOPIC).exists() {
            // Cut before the gateway first created its log.
            return Ok((evidence, torn_tails));
        }
        let verify = run(
            Command::new(BIN)
                .args(["log", "verify", "--json", "--data-dir"])
                .arg(&data),
            &[0, 1],
        );
        let verified = ledger::parse_verify(&String::from_utf8_lossy(&verify.stdout))?;
        evidence.damage.extend(verified.damage);
        let dump = run(
            Command::new(BIN)
                .args(["log", "dump", "--data-dir"])
                .arg(&data),
            &[0],
        );
        evidence.local =
            ledger::found_in_dump(&String::from_utf8_lossy(&dump.stdout), Some(TOPIC))?;
        Ok((evidence, torn_tails))
    }

    /// The campaign's table: the last reconcile (which covers every cycle)
    /// with the campaign's own figures on top.
    fn report(&self, total: Duration) -> Report {
        let mut report = self.last.clone();
        let count = |kind| self.cycles.iter().filter(|c| c.cut.kind() == kind).count();
        let readies: Vec<f64> = self
            .cycles
            .iter()
            .filter_map(|c| c.ready_after.map(|d| d.as_secs_f64()))
            .collect();
        let per_cycle: Vec<f64> = self
            .cycles
            .iter()
            .map(|c| c.elapsed.as_secs_f64())
            .collect();
        report.row("campaign", "powercut (qemu SIGKILL)");
        report.row("seed", self.settings.seed);
        report.row("fsync", &self.settings.fsync);
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
        report.row(
            "torn tails cut at recovery",
            self.cycles.iter().map(|c| c.torn_tails).sum::<usize>(),
        );
        report.row(
            "ready after boot (mean)",
            format!("{:.2} s", mean(&readies)),
        );
        report.row(
            "time per cycle (mean / max)",
            format!(
                "{:.2} s / {:.2} s",
                mean(&per_cycle),
                per_cycle.iter().copied().fold(0.0, f64::max)
            ),
        );
        report.row("time", format!("{:.1} s", total.as_secs_f64()));
        report
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Skips only where nothing promised qemu: CI installs it (tests/run).
fn vm_tools_present() -> bool {
    if have(QEMU) {
        for tool in ["debugfs", "e2fsck", "mkfs.ext4", "cpio", "apt-get"] {
            assert!(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {tool}"))
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} not found: apt-get install -y qemu-system-x86 busybox-static e2fsprogs cpio"
            );
        }
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{QEMU} not found (CI must run this test): apt-get install -y qemu-system-x86 busybox-static e2fsprogs cpio"
    );
    eprintln!("SKIPPED: {QEMU} not found (apt-get install -y qemu-system-x86 busybox-static e2fsprogs cpio)");
    false
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
    let machine = Machine::build(&work, &config(&settings.fsync, &cheap_password_hash()));
    let mut campaign = Campaign {
        rng: fastrand::Rng::with_seed(settings.seed),
        settings,
        machine,
        work,
        ledger: Arc::new(Ledger::new()),
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        cycles: Vec::new(),
        last: Report::default(),
    };
    let mut failure = None;
    for n in 1..=campaign.settings.cycles {
        if let Err(e) = campaign.cycle(n) {
            failure = Some(e);
            break;
        }
    }
    let report = campaign.report(started.elapsed());
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
