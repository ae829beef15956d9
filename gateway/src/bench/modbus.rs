//! `tidewell bench modbus`: a real gateway process polls simulated RTU
//! slaves through a socat pseudo-terminal pair; prints polls/s against the
//! line's own limit, and the gateway's CPU per poll.
//!
//! A pty moves bytes at memory speed whatever baud it is told, so the line
//! is simulated by the slaves: this bench's simulator answers each request
//! only when its last response byte would have arrived on a real line (the
//! request's and response's characters at the configured bits per character,
//! plus the 3.5-character silence that ends the request), timed with
//! `std::thread::sleep` on its own thread. The limit is then what the
//! protocol allows: per poll, request + response characters and two
//! 3.5-character silences (1.75 ms each above 19200 baud) plus `pause_ms`
//! (0 here). pymodbus is not used here because it answers at once: against
//! it the ratio would measure the pty, not the gateway.
//!
//! The groups' intervals are the shortest that `config check` accepts for
//! the bus (the whole line's time, rounded up to a millisecond), so the bus
//! is saturated and any time the gateway loses between polls shows.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use crate::ingest::modbus::frame::{self, Answer};

#[derive(Args, Debug, Clone)]
pub struct ModbusBenchArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Line rates to measure, in baud.
    #[arg(long, value_delimiter = ',', default_value = "9600,19200,115200")]
    pub bauds: Vec<u32>,
    /// Slaves (unit ids 1..=N) on the bus, one group each.
    #[arg(long, default_value_t = 3)]
    pub slaves: u8,
    /// Holding registers each poll reads.
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// Seconds of saturated polling per line rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of the 10 polls/s CPU measurement (at 19200 baud).
    #[arg(long, default_value_t = 20)]
    pub idle_seconds: u64,
}

/// Bits per character: start, 8 data, even parity, stop.
const BITS_PER_CHAR: f64 = 11.0;

pub fn run(args: &ModbusBenchArgs) -> anyhow::Result<()> {
    if args.slaves == 0 || args.registers == 0 || args.registers > 125 {
        bail!("--slaves must be at least 1 and --registers 1 to 125");
    }
    let root = args.dir.join(format!("modbus-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = run_all(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_all(args: &ModbusBenchArgs, root: &Path) -> anyhow::Result<()> {
    for &baud in &args.bauds {
        let poll = poll_time(baud, args.registers);
        let line_limit = 1.0 / poll.as_secs_f64();
        let interval_ms = (poll.as_secs_f64() * 1000.0 * f64::from(args.slaves)).ceil() as u64;
        let run = measure(
            &root.join(baud.to_string()),
            baud,
            args,
            interval_ms,
            args.seconds,
        )?;
        println!(
            "bench modbus {baud} baud, {} slaves x {} registers: {:.1} polls/s of {:.1} polls/s line limit ({:.1}%); gateway CPU {:.3} ms per poll ({:.2}% of one core)",
            args.slaves,
            args.registers,
            run.polls_per_s(),
            line_limit,
            100.0 * run.polls_per_s() / line_limit,
            1000.0 * run.cpu_s / run.polls.max(1.0),
            100.0 * run.cpu_s / run.elapsed_s
        );
    }
    let interval_ms = 100 * u64::from(args.slaves);
    let run = measure(
        &root.join("idle"),
        19_200,
        args,
        interval_ms,
        args.idle_seconds,
    )?;
    println!(
        "bench modbus 19200 baud at {:.1} polls/s: gateway CPU {:.2}% of one core ({:.3} ms per poll; target under 1% at 10 polls/s)",
        run.polls_per_s(),
        100.0 * run.cpu_s / run.elapsed_s,
        1000.0 * run.cpu_s / run.polls.max(1.0)
    );
    Ok(())
}

/// One poll's share of the line: request (8) and response (5 + 2n)
/// characters, and two 3.5-character silences.
fn poll_time(baud: u32, registers: u16) -> Duration {
    let char_s = BITS_PER_CHAR / f64::from(baud);
    let silence = if baud > 19_200 { 0.00175 } else { 3.5 * char_s };
    let chars = 8.0 + 5.0 + 2.0 * f64::from(registers);
    Duration::from_secs_f64(chars * char_s + 2.0 * silence)
}

struct Run {
    polls: f64,
    cpu_s: f64,
    elapsed_s: f64,
}

impl Run {
    fn polls_per_s(&self) -> f64 {
        self.polls / self.elapsed_s
    }
}

/// The gateway, stopped cleanly (SIGTERM) when dropped.
struct StopOnDrop(Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        super::stop(&mut self.0);
    }
}

fn measure(
    dir: &Path,
    baud: u32,
    args: &ModbusBenchArgs,
    interval_ms: u64,
    seconds: u64,
) -> anyhow::Result<Run> {
    std::fs::create_dir_all(dir)?;
    let (_socat, gw_end, dev_end) = super::pty_pair(dir)?;
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev_end)?;
    let (slaves, registers) = (args.slaves, args.registers);
    std::thread::spawn(move || simulate(port, baud, slaves, registers));
    let http = free_port()?;
    let config = dir.join("tidewell.toml");
    std::fs::write(
        &config,
        gateway_config(dir, &gw_end, http, baud, args, interval_ms),
    )?;
    let gateway = StopOnDrop(super::start_gateway(&config)?.0);
    // Warm up: the first polls open the log's segment and the port.
    wait_for(|| polls(http).is_ok_and(|p| p >= f64::from(args.slaves) * 2.0))?;
    let (polls_before, cpu_before, start) = (
        polls(http)?,
        super::cpu_seconds(gateway.0.id())?,
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds.max(1)));
    let polls_after = polls(http)?;
    let cpu_s = super::cpu_seconds(gateway.0.id())? - cpu_before;
    Ok(Run {
        polls: polls_after - polls_before,
        cpu_s,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

fn gateway_config(
    dir: &Path,
    port: &Path,
    http: u16,
    baud: u32,
    args: &ModbusBenchArgs,
    interval_ms: u64,
) -> String {
    let mut text = format!(
        "data_dir = \"{}\"\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:{http}\"\n[[modbus.buses]]\nname = \"bench\"\ntransport = \"rtu\"\npath = \"{}\"\nbaud = {baud}\nparity = \"even\"\npause_ms = 0\ntimeout_ms = 500\nretries = 0\n",
        dir.join("data").display(),
        port.display()
    );
    for unit in 1..=args.slaves {
        text.push_str(&format!(
            "[[modbus.buses.devices]]\nname = \"slave{unit}\"\nunit = {unit}\n[[modbus.buses.devices.groups]]\nname = \"g\"\ninterval_ms = {interval_ms}\n[[modbus.buses.devices.groups.points]]\nname = \"block\"\nkind = \"holding_register\"\naddress = 0\ntype = \"string\"\nlength = {}\n",
            2 * args.registers
        ));
    }
    text
}

/// The slaves: answers read-holding-registers requests for units 1..=`slaves`
/// when a real line would have delivered the whole answer.
fn simulate(mut port: std::fs::File, baud: u32, slaves: u8, registers: u16) {
    let char_s = BITS_PER_CHAR / f64::from(baud);
    let silence = if baud > 19_200 { 0.00175 } else { 3.5 * char_s };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while let Ok(n) = port.read(&mut chunk) {
        if n == 0 {
            return;
        }
        let arrived = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 8 {
            let request: Vec<u8> = buf.drain(..8).collect();
            let crc_ok = frame::crc16(&request[..6]).to_le_bytes() == request[6..8];
            if !crc_ok || request[0] == 0 || request[0] > slaves || request[1] != 3 {
                buf.clear();
                break;
            }
            let count = u16::from_be_bytes([request[4], request[5]]).min(registers);
            let data: Vec<u8> = (0..count)
                .flat_map(|r| (r + 0x4141).to_be_bytes())
                .collect();
            let response = frame::rtu_response(request[0], 3, &Answer::Data(data));
            let wire = (8 + response.len()) as f64 * char_s + silence;
            let due = arrived + Duration::from_secs_f64(wire);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if port.write_all(&response).is_err() {
                return;
            }
        }
    }
}

fn wait_for(mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out waiting for the gateway and the pty pair");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `tidewell_modbus_polls_total`, summed over devices, from `/metrics`.
fn polls(http: u16) -> anyhow::Result<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tidewell_modbus_polls_total{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_limit_counts_characters_and_silences() {
        // 19200 baud, 10 registers: 33 characters and 2 x 3.5 at 11 bits.
        let poll = poll_time(19_200, 10).as_secs_f64();
        assert!((poll - 40.0 * 11.0 / 19_200.0).abs() < 1e-9);
        // Above 19200 baud the silences are 1.75 ms each.
        let fast = poll_time(115_200, 10).as_secs_f64();
        assert!((fast - (33.0 * 11.0 / 115_200.0 + 0.0035)).abs() < 1e-9);
    }
}
