//! `tidewell bench serial`: readings per second through a pseudo-terminal
//! pair (socat) from the device simulator to a real gateway process, at
//! simulated line rates, against the line's theoretical maximum of
//! `baud / 10 / 16` sixteen-byte readings a second; and the gateway's CPU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::bail;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct SerialBenchArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Line rates to measure, in baud.
    #[arg(long, value_delimiter = ',', default_value = "115200,3000000")]
    pub bauds: Vec<u32>,
    /// Seconds of traffic per line rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// Bytes of one reading in the target's definition of the line maximum.
const READING_BYTES: f64 = 16.0;

pub fn run(args: &SerialBenchArgs) -> anyhow::Result<()> {
    let root = args.dir.join(format!("serial-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = args
        .bauds
        .iter()
        .try_for_each(|&baud| measure(&root.join(baud.to_string()), baud, args.seconds));
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(dir: &Path, baud: u32, seconds: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (_socat, gw_end, dev_end) = super::pty_pair(dir)?;
    let gateway = super::KillOnDrop(start_gateway(dir, &gw_end)?);
    let line_max = f64::from(baud) / 10.0 / READING_BYTES;
    let count = (line_max * seconds as f64) as u64;
    let cpu_before = super::cpu_seconds(gateway.0.id())?;
    let out = Command::new(std::env::current_exe()?)
        .args(["sim", "serial", "--port"])
        .arg(&dev_end)
        .args([
            "--rate",
            "0",
            "--batch",
            "16",
            "--float-values",
            "--device-id",
            "bench",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--baud",
            &baud.to_string(),
            "--timeout-s",
            &(seconds * 3 + 10).to_string(),
        ])
        .output()?;
    let cpu = super::cpu_seconds(gateway.0.id())? - cpu_before;
    if !out.status.success() {
        bail!("simulator failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let elapsed = report["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    let acked = report["readings_acked"].as_f64().unwrap_or(0.0);
    let wire = report["bytes_sent"].as_f64().unwrap_or(0.0) / acked.max(1.0);
    let line_use = report["bytes_sent"].as_f64().unwrap_or(0.0) * 10.0 / f64::from(baud) / elapsed;
    println!(
        "bench serial {baud} baud: {:.0} readings/s acknowledged of {:.0} sixteen-byte readings/s line maximum ({:.1}%); {:.1} bytes/reading on the wire, line {:.1}% busy; gateway CPU {:.2}% of one core",
        acked / elapsed,
        line_max,
        100.0 * acked / elapsed / line_max,
        wire,
        100.0 * line_use,
        100.0 * cpu / elapsed
    );
    Ok(())
}

fn start_gateway(dir: &Path, port: &Path) -> anyhow::Result<Child> {
    let config = dir.join("tidewell.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[mqtt]\nenabled = false\n[[serial.ports]]\npath = \"{}\"\n",
            dir.join("data").display(),
            port.display()
        ),
    )?;
    Ok(super::start_gateway(&config)?.0)
}
