//! The power-cut machine: a qemu VM (TCG emulation) that runs the gateway
//! on a virtio ext4 disk opened with `cache=none`, so that what the guest
//! flushed is in the image file and what sat in its page cache dies with
//! qemu. Built by `tests/faults/vm/build-initramfs.sh`; the disk is read
//! back on the host with e2fsprogs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
/// What the VM needs on the host (Debian packages).
pub const PACKAGES: &str = "qemu-system-x86 busybox-static e2fsprogs cpio";
const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/faults/vm/build-initramfs.sh"
);
/// Console markers written by the guest's /init.
pub const STARTING: &str = "tidewell-init: starting gateway";
const GAVE_UP: [&str; 2] = ["tidewell-init: FAILED", "tidewell-init: gateway exited"];
pub use super::harness::{run, READY};

/// Whether `program` can be started.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The VM's files: kernel, initramfs (with the gateway and its config) and
/// the ext4 disk image that lives across boots.
pub struct Machine {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disk: PathBuf,
    /// Added to the kernel command line, e.g. `tidewell.nofile=1024`.
    pub cmdline: String,
}

impl Machine {
    /// Builds the VM in `dir` for `binary` with `config`, and a fresh disk
    /// of `disk_size` (mkfs.ext4 syntax, sparse) with `inodes` inodes.
    pub fn build(dir: &Path, binary: &str, config: &str, disk_size: &str, inodes: u32) -> Machine {
        let config_path = dir.join("tidewell.toml");
        std::fs::write(&config_path, config).unwrap();
        run(
            Command::new(binary)
                .args(["config", "check", "--config"])
                .arg(&config_path),
            &[0],
        );
        let vm = dir.join("vm");
        run(
            Command::new("bash")
                .arg(BUILD_SCRIPT)
                .args(["--binary", binary, "--config"])
                .arg(&config_path)
                .arg("--out")
                .arg(&vm),
            &[0],
        );
        let disk = dir.join("disk.img");
        // Inode tables and journal written now, not lazily by the guest.
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "tidewell", "-N", &inodes.to_string()])
                .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&disk)
                .arg(disk_size),
            &[0],
        );
        Machine {
            kernel: vm.join("vmlinuz"),
            initramfs: vm.join("initramfs.cpio"),
            disk,
            cmdline: String::new(),
        }
    }

    /// The directory `path` of the disk, as the next mount would see it,
    /// copied to `into` (None if it does not exist yet). The journal is
    /// replayed on a copy of the image (debugfs does not replay it), so the
    /// image itself stays exactly as the power cut left it for the next boot.
    /// Also returns what `e2fsck -fn` finds on the replayed copy besides the
    /// summary counters the kernel fixes at mount.
    pub fn read_back(&self, path: &str, scratch: &Path) -> (Option<PathBuf>, Vec<String>) {
        let copy = scratch.join("copy.img");
        let into = scratch.join("extract");
        let _ = std::fs::remove_dir_all(&into);
        std::fs::create_dir_all(&into).unwrap();
        run(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&self.disk)
                .arg(&copy),
            &[0],
        );
        run(
            Command::new("e2fsck")
                .args(["-E", "journal_only", "-p"])
                .arg(&copy),
            &[0, 1],
        );
        let fsck = run(Command::new("e2fsck").arg("-fn").arg(&copy), &[0, 4]);
        let fs_problems = fsck_problems(&String::from_utf8_lossy(&fsck.stdout));
        run(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump {path} {}", into.display()))
                .arg(&copy),
            &[0],
        );
        let dir = into.join(Path::new(path).file_name().unwrap());
        (dir.exists().then_some(dir), fs_problems)
    }
}

/// Problems `e2fsck -n` declined to fix ("...\nFix? no"), except the free
/// block and inode counts, which ext4 only updates at unmount.
fn fsck_problems(output: &str) -> Vec<String> {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .windows(2)
        .filter(|w| w[1].ends_with("? no") && !w[0].contains("count wrong"))
        .map(|w| w[0].to_string())
        .collect()
}

/// A running VM; qemu is SIGKILLed on drop.
pub struct Vm {
    child: Child,
    /// The host port forwarded to the guest's MQTT port 1883.
    pub port: u16,
    pub booted: Instant,
    /// Console lines (the guest's ttyS0) and when the host read them.
    console: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Vm {
    /// Starts qemu on `machine` (`TIDEWELL_VM_ACCEL` picks the accelerator:
    /// tcg by default; a KVM guest hung at boot on the machine this was
    /// written on).
    pub fn boot(machine: &Machine) -> Vm {
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
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1 {}", machine.cmdline))
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
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)]
            .into_iter()
            .map(|pipe| {
                let lines = console.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let line = line.trim_end().to_string();
                        lines.lock().unwrap().push((Instant::now(), line));
                    }
                })
            })
            .collect();
        Vm {
            child,
            port,
            booted: Instant::now(),
            console,
            readers,
        }
    }

    /// When the console first showed `needle`.
    pub fn seen(&self, needle: &str) -> Option<Instant> {
        let console = self.console.lock().unwrap();
        console
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }

    /// Waits until the console shows `needle`; fails at once if the guest
    /// gave up or qemu died.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.seen(needle) {
                return Ok(at);
            }
            if GAVE_UP.iter().any(|g| self.seen(g).is_some()) {
                return Err(format!("the guest gave up before {needle:?}"));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("qemu exited ({status}) before {needle:?}"));
            }
            if Instant::now() > deadline {
                return Err(format!("no {needle:?} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL to qemu: the guest's page cache is gone, as in a power cut.
    /// Returns once every console line qemu wrote has been read.
    pub fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    pub fn console_text(&self) -> String {
        let console = self.console.lock().unwrap();
        let lines: Vec<&str> = console.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
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
