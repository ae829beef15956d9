//! One bus's task: connect (retrying with backoff), then poll its groups one
//! request at a time, each group when it is due, and append each poll as a
//! record. A poll whose request times out before anything in it answered
//! sends none of its other requests (a dead device costs one timeout).
//!
//! A group's next poll is scheduled only once its record is durable (its
//! ticket resolved), so a slow disk slows that group and nothing is queued
//! behind it. A device whose polls keep failing is backed off (from its
//! second failed poll in a row: 0.5 s doubling to 30 s, ±25% jitter); its
//! groups wait, the other devices' groups go on at their intervals. When the
//! log refuses a record (a full topic under `reject_new`) the whole bus
//! pauses (1 s doubling to 30 s between tries), says so in `/status` and the
//! log, and resumes with the first record the log takes again.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::client::{self, Link, RequestError};
use super::config::BusConfig;
use super::frame::{Answer, FrameError};
use super::observe::{BusStats, DeviceStats, ModbusStats};
use super::plan::{self, Request};
use super::report::{self, Deadband, Outcome, PollMeta, Quality};
use crate::log::{now_ms, AppendError, Log, Partition};

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What a bus task needs.
pub struct BusCtx {
    pub config: BusConfig,
    /// This bus's place in `stats.buses`.
    pub index: usize,
    pub log: Arc<Log>,
    pub partitions: u32,
    pub stats: Arc<ModbusStats>,
}

impl BusCtx {
    fn bus(&self) -> &BusStats {
        &self.stats.buses[self.index]
    }
}

struct GroupRun {
    device: usize,
    group: usize,
    requests: Vec<Request>,
    due: Instant,
    /// Its record is not durable yet.
    busy: bool,
    deadband: Deadband,
}

#[derive(Clone, Copy)]
struct DeviceRun {
    failures: u32,
    resume: Instant,
}

/// A record's ticket resolved.
struct Done {
    group: usize,
    result: Result<(), AppendError>,
    bytes: u64,
}

struct Schedule {
    groups: Vec<GroupRun>,
    devices: Vec<DeviceRun>,
    paused_until: Option<Instant>,
    pause: Duration,
    done_tx: mpsc::Sender<Done>,
}

impl Schedule {
    fn new(bus: &BusConfig, done_tx: mpsc::Sender<Done>) -> Schedule {
        let now = Instant::now();
        let mut groups = Vec::new();
        for (d, device) in bus.devices.iter().enumerate() {
            for (g, group) in device.groups.iter().enumerate() {
                groups.push(GroupRun {
                    device: d,
                    group: g,
                    requests: plan::plan(&group.points),
                    due: now,
                    busy: false,
                    deadband: Deadband::default(),
                });
            }
        }
        let devices = vec![
            DeviceRun {
                failures: 0,
                resume: now
            };
            bus.devices.len()
        ];
        Schedule {
            groups,
            devices,
            paused_until: None,
            pause: FIRST_PAUSE,
            done_tx,
        }
    }

    /// The group due first and when, among those not waiting for a ticket.
    fn next(&self) -> Option<(usize, Instant)> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.busy)
            .map(|(i, g)| {
                let at = g.due.max(self.devices[g.device].resume);
                (i, self.paused_until.map_or(at, |p| at.max(p)))
            })
            .min_by_key(|&(_, at)| at)
    }

    fn reschedule(&mut self, gi: usize, interval_ms: u64) {
        let group = &mut self.groups[gi];
        group.due = (group.due + Duration::from_millis(interval_ms)).max(Instant::now());
    }
}

/// Runs a bus forever: connects, polls until the connection fails, and
/// connects again.
pub async fn run(ctx: Arc<BusCtx>) {
    let (done_tx, mut done_rx) = mpsc::channel(ctx.config.devices.len().max(1) * 4);
    let mut schedule = Schedule::new(&ctx.config, done_tx);
    let mut delay = FIRST_RETRY;
    let mut reported = false;
    loop {
        match client::connect(&ctx.config).await {
            Ok(io) => {
                tracing::info!(bus = %ctx.config.name, "modbus bus open");
                ctx.bus().connected.store(true, Ordering::Relaxed);
                let mut link = Link::new(io, &ctx.config);
                let e = serve(&ctx, &mut link, &mut schedule, &mut done_rx).await;
                ctx.bus().connected.store(false, Ordering::Relaxed);
                ctx.bus().reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(bus = %ctx.config.name, "modbus bus lost ({e}); reconnecting");
                delay = after_session(delay, link.answered());
                reported = true;
            }
            Err(e) if !reported => {
                tracing::warn!(bus = %ctx.config.name, "cannot open modbus bus ({e}); retrying");
                reported = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn serve(
    ctx: &BusCtx,
    link: &mut Link,
    s: &mut Schedule,
    done_rx: &mut mpsc::Receiver<Done>,
) -> io::Error {
    loop {
        let next = s.next();
        let at = next.map_or_else(|| Instant::now() + Duration::from_secs(3600), |(_, at)| at);
        tokio::select! {
            done = done_rx.recv() => {
                if let Some(done) = done {
                    finished(ctx, s, done);
                }
            }
            () = tokio::time::sleep_until(at.into()), if next.is_some() => {
                let gi = next.map_or(0, |(gi, _)| gi);
                if let Err(e) = poll(ctx, link, s, gi).await {
                    return e;
                }
            }
        }
    }
}

/// Polls one group and appends its record (unless its deadbands held).
async fn poll(ctx: &BusCtx, link: &mut Link, s: &mut Schedule, gi: usize) -> io::Result<()> {
    let (d, g) = (s.groups[gi].device, s.groups[gi].group);
    let device = &ctx.config.devices[d];
    let group = &device.groups[g];
    let dstats = &ctx.bus().devices[d];
    let started = Instant::now();
    let (wall_ms, monotonic_ms) = (now_ms(), report::monotonic_ms());
    let mut outcomes = vec![Outcome::Bad(Quality::NoConnection); group.points.len()];
    let mut answered = false;
    let mut failure = None;
    let requests = &s.groups[gi].requests;
    for (r, request) in requests.iter().enumerate() {
        match attempt(ctx, link, dstats, device.unit, request).await {
            Ok(answer) => {
                answered = true;
                fill(&group.points, request, &answer, &mut outcomes, dstats);
            }
            Err(RequestError::Io(e)) => {
                // The rest keep their NoConnection outcome.
                failure = Some(e);
                break;
            }
            Err(e) => {
                let bad = quality(&e);
                for &i in &request.points {
                    outcomes[i] = Outcome::Bad(bad);
                }
                // A device that has not answered anything in this poll and
                // now timed out is taken for gone: its other requests are
                // not sent, so it does not hold the bus for a timeout (and
                // its retries) per request.
                if !answered && matches!(e, RequestError::Timeout(_)) {
                    for rest in &requests[r + 1..] {
                        for &i in &rest.points {
                            outcomes[i] = Outcome::Bad(bad);
                        }
                    }
                    break;
                }
            }
        }
    }
    ctx.bus()
        .discarded_bytes
        .fetch_add(link.take_discarded(), Ordering::Relaxed);
    dstats.polls.fetch_add(1, Ordering::Relaxed);
    device_result(ctx, s, d, answered);
    let run = &mut s.groups[gi];
    if run
        .deadband
        .should_report(&group.points, &outcomes, started)
    {
        run.deadband.sent(&outcomes, started);
        let meta = PollMeta {
            bus: &ctx.config.name,
            device: &device.name,
            unit: device.unit,
            group: &group.name,
            wall_ms,
            monotonic_ms,
        };
        append(
            ctx,
            s,
            gi,
            report::to_record(&group.points, &outcomes, &meta),
        )
        .await;
    } else {
        dstats.suppressed.fetch_add(1, Ordering::Relaxed);
        s.reschedule(gi, group.interval_ms);
    }
    failure.map_or(Ok(()), Err)
}

/// One request with its retries; counts every failed attempt.
async fn attempt(
    ctx: &BusCtx,
    link: &mut Link,
    dstats: &DeviceStats,
    unit: u8,
    request: &Request,
) -> Result<Answer, RequestError> {
    let mut tries = 0;
    loop {
        let result = link
            .read(unit, request.kind.function(), request.start, request.count)
            .await;
        let counter = match &result {
            Ok(_) => return result,
            Err(RequestError::Timeout(_)) => &dstats.timeouts,
            Err(RequestError::Frame(FrameError::Crc { .. })) => &dstats.crc_errors,
            Err(RequestError::Frame(_)) => &dstats.bad_frames,
            Err(RequestError::Io(_)) => &dstats.connection_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            dstats.set_error(Some(e.to_string()));
        }
        if tries >= ctx.config.retries || matches!(result, Err(RequestError::Io(_))) {
            return result;
        }
        tries += 1;
    }
}

fn quality(e: &RequestError) -> Quality {
    match e {
        RequestError::Timeout(_) => Quality::Timeout,
        RequestError::Frame(FrameError::Crc { .. }) => Quality::Crc,
        RequestError::Frame(_) => Quality::BadFrame,
        RequestError::Io(_) => Quality::NoConnection,
    }
}

/// The outcomes of a request's points.
fn fill(
    points: &[super::config::PointConfig],
    request: &Request,
    answer: &Answer,
    outcomes: &mut [Outcome],
    dstats: &DeviceStats,
) {
    let data = match answer {
        Answer::Data(data) => data,
        Answer::Exception(code) => {
            dstats.exception(*code);
            dstats.set_error(Some(format!(
                "exception {code} for {} items at {}",
                request.count, request.start
            )));
            for &i in &request.points {
                outcomes[i] = Outcome::Bad(Quality::Exception(*code));
            }
            return;
        }
    };
    let registers = plan::registers(data);
    for &i in &request.points {
        let point = &points[i];
        let at = usize::from((point.address as u16).wrapping_sub(request.start));
        let value = if point.kind.is_bits() {
            plan::bit(data, at).map(serde_json::Value::Bool)
        } else {
            registers
                .get(at..at + usize::from(point.count()))
                .and_then(|regs| plan::decode_registers(point, regs))
        };
        outcomes[i] = value.map_or(Outcome::Bad(Quality::NotFinite), Outcome::Good);
    }
}

/// Backs a device off once its polls keep failing; any answer clears it.
fn device_result(ctx: &BusCtx, s: &mut Schedule, d: usize, answered: bool) {
    let run = &mut s.devices[d];
    let dstats = &ctx.bus().devices[d];
    if answered {
        if run.failures > 0 {
            tracing::info!(bus = %ctx.config.name, device = %dstats.name, "modbus device answers again");
        }
        run.failures = 0;
        dstats.backing_off.store(false, Ordering::Relaxed);
        return;
    }
    run.failures += 1;
    if run.failures >= 2 {
        let delay =
            (FIRST_BACKOFF * 2u32.saturating_pow((run.failures - 2).min(10))).min(MAX_BACKOFF);
        run.resume = Instant::now() + delay.mul_f64(0.75 + fastrand::f64() / 2.0);
        if !dstats.backing_off.swap(true, Ordering::Relaxed) {
            tracing::warn!(bus = %ctx.config.name, device = %dstats.name, "modbus device does not answer; backing off");
        }
    }
}

async fn append(ctx: &BusCtx, s: &mut Schedule, gi: usize, record: crate::log::Record) {
    let bytes = record.payload_len() as u64;
    let key = record.key.clone().unwrap_or_default();
    let partition = Partition(crc32c::crc32c(&key) % ctx.partitions);
    let mut records = vec![record];
    loop {
        match ctx.log.try_append(&ctx.config.topic, partition, records) {
            Ok(ticket) => {
                s.groups[gi].busy = true;
                let tx = s.done_tx.clone();
                tokio::spawn(async move {
                    let result = ticket.await.map(|_| ());
                    let _ = tx
                        .send(Done {
                            group: gi,
                            result,
                            bytes,
                        })
                        .await;
                });
                return;
            }
            Err((AppendError::Overloaded, back)) => {
                records = back;
                ctx.log.capacity().await;
            }
            Err((e, _)) => {
                refused(ctx, s, gi, &e);
                return;
            }
        }
    }
}

fn finished(ctx: &BusCtx, s: &mut Schedule, done: Done) {
    let gi = done.group;
    s.groups[gi].busy = false;
    let d = s.groups[gi].device;
    let interval_ms = ctx.config.devices[d].groups[s.groups[gi].group].interval_ms;
    match done.result {
        Ok(()) => {
            ctx.stats.records_appended.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .bytes_appended
                .fetch_add(done.bytes, Ordering::Relaxed);
            ctx.bus().devices[d].records.fetch_add(1, Ordering::Relaxed);
            if s.paused_until.take().is_some() {
                tracing::info!(bus = %ctx.config.name, "the log takes records again; modbus polling resumes");
                ctx.bus().set_paused(None);
            }
            s.pause = FIRST_PAUSE;
            s.reschedule(gi, interval_ms);
        }
        Err(e) => {
            refused(ctx, s, gi, &e);
        }
    }
}

/// The log refused a group's record: pause the bus and say so.
fn refused(ctx: &BusCtx, s: &mut Schedule, gi: usize, e: &AppendError) {
    ctx.stats.append_failures.fetch_add(1, Ordering::Relaxed);
    ctx.stats.log_full_pauses.fetch_add(1, Ordering::Relaxed);
    s.groups[gi].deadband.reset();
    if s.paused_until.is_none() {
        tracing::warn!(bus = %ctx.config.name, "the log refuses modbus records ({e}); polling paused until it takes them again");
    }
    s.paused_until = Some(Instant::now() + s.pause);
    s.pause = (s.pause * 2).min(MAX_PAUSE);
    ctx.bus()
        .set_paused(Some(format!("the log refuses records: {e}")));
    let d = s.groups[gi].device;
    let interval_ms = ctx.config.devices[d].groups[s.groups[gi].group].interval_ms;
    s.reschedule(gi, interval_ms);
}

/// The reconnect delay after a connection was lost: back to the first only
/// if the link answered something. A server that accepts and then closes
/// (a TCP serial server with nothing behind it) keeps backing off.
fn after_session(delay: Duration, answered: bool) -> Duration {
    if answered {
        FIRST_RETRY
    } else {
        delay
    }
}

/// Up to a quarter more, so many gateways do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_delay_resets_only_after_an_answer() {
        let mut delay = FIRST_RETRY;
        // Connects that are closed before any answer: the delay keeps growing.
        for _ in 0..3 {
            delay = after_session(delay, false);
            delay = (delay * 2).min(MAX_RETRY);
        }
        assert_eq!(delay, FIRST_RETRY * 8);
        assert_eq!(after_session(delay, true), FIRST_RETRY);
    }
}
