//! `tidewell sim serial`: plays a sensor on a serial port, through the same
//! `DeviceSession` state machine a firmware would run. It can add line noise
//! and drop bytes, paces its output to the configured baud rate (a
//! pseudo-terminal has none of its own), survives the port going away, and
//! ends with a JSON report on stdout once every reading is acknowledged.
//!
//! Reading `n` (counting from 0 across the run) has channel `n % 4` and value
//! `Int(n)`, so a test can check the log for every reading, in order.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use firmware_proto::heapless::{String as HString, Vec as HVec};
use firmware_proto::{
    encode_frame, Capabilities, DeviceConfig, DeviceSession, FirmwareVersion, FrameDecoder,
    Reading, Value, MAX_FRAME_LEN, MAX_READINGS,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

/// How far the pacing may fall behind the line before it forgets the debt:
/// more than the timer's granularity, so sleeps that overshoot are made up.
const PACING_SLACK: Duration = Duration::from_millis(3);

/// Unacknowledged batches the simulated device can hold.
const QUEUE: usize = 64;

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// The serial port (or pseudo-terminal) to talk on.
    #[arg(long)]
    pub port: PathBuf,
    #[arg(long, default_value = "sim-1")]
    pub device_id: String,
    /// Boot epoch; with --state-file, read from it and incremented instead.
    #[arg(long, default_value_t = 1)]
    pub boot_epoch: u32,
    /// Keeps the boot epoch across runs, as a firmware keeps it in flash.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Readings to send in all.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Readings per second (0: as fast as the line allows).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Readings per batch (at most 16).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Line rate to pace output to, in baud (10 bits per byte).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Probability per sent frame of flipping a byte in it.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Probability per sent frame of losing one of its bytes.
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Once this many readings are acknowledged, ignore everything the
    /// gateway sends for --deaf-ms (acknowledgements lost on the way back),
    /// so batches pile up that are in the log but unacknowledged.
    #[arg(long)]
    pub deaf_after: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub deaf_ms: u64,
    /// Send float readings (8-byte values, about 16 bytes a reading on the
    /// wire) instead of integers; the values then carry no reading number.
    #[arg(long)]
    pub float_values: bool,
    /// Milliseconds without an Ack before the oldest batch is sent again.
    #[arg(long, default_value_t = 1000)]
    pub retransmit_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct SimReport {
    pub device_id: String,
    pub boot_epoch: u32,
    pub readings_sent: u64,
    pub readings_acked: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_corrupted: u64,
    pub bytes_dropped: u64,
    pub reconnects: u64,
    pub elapsed_s: f64,
    pub complete: bool,
}

pub fn run(args: &SimArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(simulate(args))?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.complete {
        anyhow::bail!(
            "timed out with {} of {} readings acknowledged",
            report.readings_acked,
            args.count
        );
    }
    Ok(())
}

fn boot_epoch(args: &SimArgs) -> anyhow::Result<u32> {
    let Some(path) = &args.state_file else {
        return Ok(args.boot_epoch);
    };
    let previous: u32 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let epoch = previous + 1;
    std::fs::write(path, epoch.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(epoch)
}

struct Device {
    session: DeviceSession<QUEUE>,
    decoder: FrameDecoder,
    started: Instant,
    report: SimReport,
    rng: u64,
    /// Readings sent up to and including each batch pushed, in order.
    batch_ends: Vec<u64>,
    deaf_since: Option<Instant>,
}

impl Device {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) as f64 / 1_000_000.0 < p
    }

    /// Queues the next batch if the pace and the queue allow.
    fn produce(&mut self, args: &SimArgs) {
        let due = if args.rate > 0.0 {
            (self.started.elapsed().as_secs_f64() * args.rate) as u64
        } else {
            u64::MAX
        };
        while self.report.readings_sent < args.count.min(due) && self.session.free_slots() > 0 {
            let n = (args.count - self.report.readings_sent)
                .min(args.batch.clamp(1, MAX_READINGS) as u64);
            let mut readings: HVec<Reading, MAX_READINGS> = HVec::new();
            for i in 0..n {
                let number = self.report.readings_sent + i;
                let value = if args.float_values {
                    Value::Float(20.0 + (number % 1000) as f64 / 7.0)
                } else {
                    Value::Int(number as i64)
                };
                let reading = Reading {
                    channel: (number % 4) as u16,
                    value,
                    time: self.session.device_time(self.now_ms()),
                };
                let _ = readings.push(reading);
            }
            if self.session.push_readings(readings).is_err() {
                return;
            }
            self.report.readings_sent += n;
            self.batch_ends.push(self.report.readings_sent);
        }
    }

    /// Encodes the next frame to send, with the configured damage.
    fn next_frame(&mut self, args: &SimArgs) -> Option<Vec<u8>> {
        let message = self.session.poll(self.now_ms())?;
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(&message, &mut buf).ok()?;
        let mut frame = buf[..len].to_vec();
        if self.chance(args.noise) && frame.len() > 2 {
            let at = (self.rng as usize) % (frame.len() - 1);
            frame[at] ^= 0x5a;
            self.report.frames_corrupted += 1;
        }
        if self.chance(args.drop) && frame.len() > 2 {
            frame.remove((self.rng as usize) % frame.len());
            self.report.bytes_dropped += 1;
        }
        self.report.frames_sent += 1;
        Some(frame)
    }

    /// True while the simulated return path is cut (see `--deaf-after`).
    fn deaf(&mut self, args: &SimArgs) -> bool {
        let threshold = args
            .deaf_after
            .is_some_and(|n| self.report.readings_acked >= n);
        if threshold && self.deaf_since.is_none() {
            self.deaf_since = Some(Instant::now());
        }
        self.deaf_since
            .is_some_and(|t| t.elapsed() < Duration::from_millis(args.deaf_ms))
    }

    fn receive(&mut self, bytes: &[u8]) {
        let mut messages = Vec::new();
        self.decoder.push(bytes, |event| {
            if let Ok(message) = event {
                messages.push(message);
            }
        });
        for message in messages {
            self.session.on_message(&message, self.now_ms());
        }
        self.report.readings_acked = self.acked_readings();
    }

    /// Readings in the batches no longer queued (acknowledged).
    fn acked_readings(&self) -> u64 {
        let acked_batches = self.batch_ends.len() - self.session.unacked_len();
        acked_batches
            .checked_sub(1)
            .map_or(0, |i| self.batch_ends[i])
    }

    fn done(&self, args: &SimArgs) -> bool {
        self.report.readings_sent == args.count && self.session.unacked_len() == 0
    }
}

async fn simulate(args: &SimArgs) -> anyhow::Result<SimReport> {
    let epoch = boot_epoch(args)?;
    let id: HString<32> = HString::try_from(args.device_id.as_str())
        .map_err(|_| anyhow::anyhow!("--device-id is longer than 32 bytes"))?;
    let mut config = DeviceConfig::new(
        id,
        FirmwareVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        epoch,
        Capabilities::NONE,
    );
    config.retransmit_after_ms = args.retransmit_ms;
    let mut device = Device {
        session: DeviceSession::new(config),
        decoder: FrameDecoder::new(),
        started: Instant::now(),
        rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(epoch),
        batch_ends: Vec::new(),
        deaf_since: None,
        report: SimReport {
            device_id: args.device_id.clone(),
            boot_epoch: epoch,
            readings_sent: 0,
            readings_acked: 0,
            frames_sent: 0,
            bytes_sent: 0,
            frames_corrupted: 0,
            bytes_dropped: 0,
            reconnects: 0,
            elapsed_s: 0.0,
            complete: false,
        },
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    while Instant::now() < deadline && !device.done(args) {
        let Ok(port) =
            tokio_serial::new(args.port.to_string_lossy(), args.baud).open_native_async()
        else {
            tokio::time::sleep(Duration::from_millis(50)).await; // the port is not there (yet)
            continue;
        };
        if let Err(e) = talk(&mut device, port, args, deadline).await {
            tracing::debug!("sim: port lost: {e}");
            device.report.reconnects += 1;
        }
    }
    device.report.elapsed_s = device.started.elapsed().as_secs_f64();
    device.report.complete = device.done(args);
    Ok(device.report)
}

/// Talks on an open port until done, the deadline, or a port error.
async fn talk(
    device: &mut Device,
    port: tokio_serial::SerialStream,
    args: &SimArgs,
    deadline: Instant,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(port);
    let mut buf = [0u8; 1024];
    let byte_time = Duration::from_secs_f64(10.0 / f64::from(args.baud.max(1)));
    // When the simulated line has sent everything written so far: frames go
    // out no faster than the baud rate, on average, whatever the timer granularity.
    let mut line_free_at = Instant::now();
    while Instant::now() < deadline && !device.done(args) {
        device.produce(args);
        // One frame per turn, then whatever the gateway sent: a device that
        // only talks would never see its acknowledgements.
        let listen = match device.next_frame(args) {
            Some(frame) => {
                tokio::time::sleep_until(line_free_at.into()).await;
                // A line that takes nothing for a second is as good as unplugged.
                tokio::time::timeout(Duration::from_secs(1), writer.write_all(&frame))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "the line is stuck")
                    })??;
                device.report.bytes_sent += frame.len() as u64;
                line_free_at = line_free_at.max(Instant::now() - PACING_SLACK)
                    + byte_time * frame.len() as u32;
                Duration::ZERO
            }
            None => Duration::from_millis(5),
        };
        match tokio::time::timeout(listen, reader.read(&mut buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) if device.deaf(args) => {}
            Ok(Ok(n)) => device.receive(&buf[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(())
}
