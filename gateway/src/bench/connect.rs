//! `tidewell bench connect`: a reconnect storm and a crowd of idle devices.
//!
//! Storm: N devices with valid credentials connect at once (raw MQTT 3.1.1
//! CONNECTs, as after a power blip); a device refused as busy retries after
//! a second, as firmware does. Printed: time until every device is in, the
//! password checks run, the gateway's peak RSS.
//!
//! Idle: N anonymous devices connected and silent; the RSS they add over
//! the idle gateway, side by side with Mosquitto 2 holding the same crowd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{peak_rss_kib, start_gateway, start_mosquitto, status_kib, stop};

#[derive(Args, Debug)]
pub struct ConnectBenchArgs {
    /// Devices in the storm and in the idle crowd.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Accounts the storm's devices share (device i uses account i % accounts).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Where the gateway's data directory goes (removed afterwards).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

pub fn run(args: &ConnectBenchArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.accounts == 0 {
        bail!("--devices and --accounts must be at least 1");
    }
    let root = args.dir.join(format!("connect-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = storm(args, &root).and_then(|()| idle(args, &root));
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn storm(args: &ConnectBenchArgs, root: &Path) -> anyhow::Result<()> {
    println!("hashing {} account passwords ...", args.accounts);
    let users = accounts(args.accounts)?;
    let config = format!("[mqtt]\nallow_anonymous = false\n{users}");
    let (mut child, addr) = start_tidewell(root, "storm", &config)?;
    let started = Instant::now();
    let result = runtime()?.block_on(connect_all(addr, args.devices, Some(args.accounts)));
    let took = started.elapsed();
    let hwm = peak_rss_kib(child.id()).unwrap_or(0);
    stop(&mut child);
    let (_, retries) = result?;
    println!(
        "storm: {} devices ({} accounts) connected in {:.2} s, {retries} busy refusals retried; tidewell peak RSS {:.1} MiB",
        args.devices,
        args.accounts,
        took.as_secs_f64(),
        hwm as f64 / 1024.0
    );
    Ok(())
}

fn idle(args: &ConnectBenchArgs, root: &Path) -> anyhow::Result<()> {
    let (mut child, addr) = start_tidewell(root, "idle", "[mqtt]\nallow_anonymous = true\n")?;
    let tidewell = crowd(&child, addr, args.devices);
    stop(&mut child);
    let tidewell = tidewell?;
    println!(
        "idle: {} devices add {:.1} MiB to tidewell ({:.0} bytes each)",
        args.devices,
        tidewell as f64 / 1024.0,
        tidewell as f64 * 1024.0 / args.devices as f64
    );
    match start_mosquitto().and_then(|(mut child, addr)| {
        let added = crowd(&child, addr, args.devices);
        stop(&mut child);
        added
    }) {
        Ok(mosquitto) => println!(
            "idle: {} devices add {:.1} MiB to mosquitto ({:.0} bytes each); tidewell/mosquitto {:.2}x",
            args.devices,
            mosquitto as f64 / 1024.0,
            mosquitto as f64 * 1024.0 / args.devices as f64,
            tidewell as f64 / mosquitto.max(1) as f64
        ),
        Err(e) => println!("mosquitto: not run ({e:#}); install Debian's `mosquitto` to compare"),
    }
    Ok(())
}

/// KiB of RSS that `devices` idle anonymous connections add to `child`.
fn crowd(child: &Child, addr: SocketAddr, devices: usize) -> anyhow::Result<u64> {
    let pid = child.id();
    let settle = Duration::from_millis(500);
    std::thread::sleep(settle);
    let before = status_kib(pid, "VmRSS:").context("reading RSS")?;
    let runtime = runtime()?;
    let (open, _) = runtime.block_on(connect_all(addr, devices, None))?;
    std::thread::sleep(settle);
    let after = status_kib(pid, "VmRSS:").context("reading RSS")?;
    drop(open);
    Ok(after.saturating_sub(before))
}

/// Connects `devices` at once (with account `i % accounts`, or anonymously);
/// returns the open streams and how many busy refusals were retried.
async fn connect_all(
    addr: SocketAddr,
    devices: usize,
    accounts: Option<usize>,
) -> anyhow::Result<(Vec<TcpStream>, usize)> {
    let tasks: Vec<_> = (0..devices)
        .map(|i| tokio::spawn(device(addr, i, accounts.map(|a| i % a))))
        .collect();
    let mut open = Vec::with_capacity(devices);
    let mut retries = 0;
    for task in tasks {
        let (stream, retried) = task.await??;
        open.push(stream);
        retries += retried;
    }
    Ok((open, retries))
}

/// One device: CONNECT until accepted, one second between refusals.
async fn device(
    addr: SocketAddr,
    i: usize,
    account: Option<usize>,
) -> anyhow::Result<(TcpStream, usize)> {
    let login = account.map(|a| (format!("user-{a}"), format!("pw-{a}")));
    let frame = connect_frame(&format!("dev-{i}"), login.as_ref());
    for retried in 0..60 {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&frame).await?;
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await?;
        match connack[3] {
            0 => return Ok((s, retried)),
            3 => tokio::time::sleep(Duration::from_secs(1)).await,
            code => bail!("device {i} refused with CONNACK {code}"),
        }
    }
    bail!("device {i} still refused after 60 tries")
}

/// A 3.1.1 CONNECT, clean session, keep-alive 60 s.
fn connect_frame(client_id: &str, login: Option<&(String, String)>) -> Vec<u8> {
    let flags = if login.is_some() { 0xC2 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    let fields = std::iter::once(client_id).chain(
        login
            .into_iter()
            .flat_map(|(u, p)| [u.as_str(), p.as_str()]),
    );
    for field in fields {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// `[[mqtt.users]]` entries `user-N` / `pw-N`, hashed on every core.
fn accounts(count: usize) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hashed: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|t| {
                scope.spawn(move || {
                    (t..count)
                        .step_by(cores)
                        .map(|i| {
                            Ok((
                                i,
                                crate::ingest::mqtt::hash_password(format!("pw-{i}").as_bytes())?,
                            ))
                        })
                        .collect::<Result<Vec<_>, argon2::password_hash::Error>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|chunks| chunks.into_iter().flatten().collect())
    })?;
    let mut hashed = hashed;
    hashed.sort();
    Ok(hashed
        .iter()
        .map(|(i, h)| format!("[[mqtt.users]]\nusername = \"user-{i}\"\npassword_hash = \"{h}\"\n"))
        .collect())
}

fn start_tidewell(root: &Path, name: &str, mqtt: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let config = root.join(format!("{name}.toml"));
    let data = root.join(name);
    let listen = "listen = \"127.0.0.1:0\"\nconnect_timeout_ms = 30000\n";
    let mqtt = mqtt.replacen("[mqtt]\n", &format!("[mqtt]\n{listen}"), 1);
    std::fs::write(
        &config,
        format!("data_dir = {data:?}\n[http]\nenabled = false\n{mqtt}"),
    )?;
    let (mut child, addr) = start_gateway(&config)?;
    match addr {
        Some(addr) => Ok((child, addr)),
        None => {
            stop(&mut child);
            bail!("no MQTT address in the ready line")
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
