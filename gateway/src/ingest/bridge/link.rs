//! One broker link: connects, subscribes, appends what arrives and queues
//! its acknowledgement; on a lost link, waits (capped, jittered backoff) and
//! reconnects into the same session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::acker::{self, Acks, Kind, Pending, Receipt};
use super::client::{Client, Delivery, Event, Events, LinkError};
use super::config::BrokerConfig;
use super::inflight::{fingerprint, Arrival, Inflight};
use super::observe::{LinkState, LinkStats};
use crate::ingest::mqtt::route::Router;
use crate::ingest::Shutdown;
use crate::log::{self, AppendError, AppendTicket, Log, Record};

/// How long an append waits for room while the log writer is behind.
const OVERLOAD_WAIT: Duration = Duration::from_secs(5);
/// A link that held this long starts its next backoff from the minimum.
const STABLE_LINK: Duration = Duration::from_secs(60);
/// How long a stop may take to write the acks of what was appended.
pub const STOP_FLUSH: Duration = Duration::from_secs(2);

/// What the link's two tasks (this one and the acker) share.
pub struct Shared {
    pub broker: BrokerConfig,
    pub log: Arc<Log>,
    pub router: Arc<Router>,
    pub stats: Arc<LinkStats>,
    pub inflight: Mutex<Inflight>,
    /// The connection count and the acks not yet written (`acker.rs`).
    /// Taken before `inflight` when both are.
    pub acks: Mutex<Acks>,
    /// Set by the acker when an append failed or an ack could not be
    /// queued: the link is dropped, so the broker keeps the message and
    /// redelivers it.
    pub relink: AtomicBool,
}

impl Shared {
    pub fn inflight(&self) -> MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn acks(&self) -> MutexGuard<'_, Acks> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from the
/// upper half of the current step, and the step doubles up to the cap.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let min = Duration::from_millis(min_ms);
        Backoff {
            min,
            max: Duration::from_millis(max_ms),
            step: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

pub struct Link {
    pub shared: Arc<Shared>,
    pub client: Client,
    pub fifo: mpsc::Sender<Pending>,
    delays: Backoff,
    auth_delays: Backoff,
    up_since: Option<Instant>,
}

impl Link {
    pub fn new(shared: Arc<Shared>, client: Client, fifo: mpsc::Sender<Pending>) -> Link {
        let b = &shared.broker;
        Link {
            delays: Backoff::new(b.reconnect_min_ms, b.reconnect_max_ms),
            auth_delays: Backoff::new(b.auth_retry_min_ms, b.auth_retry_max_ms),
            shared,
            client,
            fifo,
            up_since: None,
        }
    }

    /// Runs the link until `stop`, then writes the acks of what it
    /// appended (see [`Link::stop`]).
    pub async fn run(mut self, mut events: Events, mut stop: Shutdown) {
        loop {
            if self.shared.relink.swap(false, Ordering::AcqRel) {
                let e = LinkError {
                    auth: false,
                    message: "a publish was not acknowledged (see the append error); reconnecting so the broker redelivers it".into(),
                };
                if !self.down(&mut events, e, &mut stop).await {
                    break;
                }
            }
            let polled = tokio::select! {
                biased;
                () = stop.requested() => break,
                polled = events.poll() => polled,
            };
            let result = match polled {
                Ok(event) => self.on_event(event, &mut events).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                if !self.down(&mut events, e, &mut stop).await {
                    break;
                }
            }
        }
        self.stop(events).await;
    }

    /// A clean stop: appends nothing more and closes the FIFO; keeps the
    /// event loop turning while the acker finishes, so every ack of a
    /// durable publish is written, then a DISCONNECT (the session stays).
    /// Publishes read meanwhile are neither appended nor acknowledged: the
    /// broker sends them again next time.
    async fn stop(self, mut events: Events) {
        let Link {
            shared,
            client,
            fifo,
            up_since,
            ..
        } = self;
        drop(fifo);
        if up_since.is_none() {
            return; // not connected: nothing can be acknowledged
        }
        let flush = async {
            loop {
                match events.poll().await? {
                    Event::DisconnectSent => return Ok::<(), LinkError>(()),
                    Event::AckSent => write_ready(&shared, &client, &mut events)?,
                    Event::Released(pkid) => shared.inflight().released(pkid),
                    _ => {}
                }
            }
        };
        let name = &shared.stats.name;
        match tokio::time::timeout(STOP_FLUSH, flush).await {
            Ok(Ok(())) => tracing::info!(broker = name, "bridge acks written, disconnected"),
            Ok(Err(e)) => tracing::warn!(broker = name, "bridge stop: {}", e.message),
            Err(_) => tracing::warn!(broker = name, "bridge stop: acks not all written in time"),
        }
    }

    async fn on_event(&mut self, event: Event, events: &mut Events) -> Result<(), LinkError> {
        let stats = &self.shared.stats;
        match event {
            Event::Connected { session_present } => {
                LinkStats::inc(&stats.connects);
                // `up` only once the SUBACK is in: on a new session the
                // broker drops what is published before it has our filters.
                stats.set_state(LinkState::Subscribing, 0);
                self.up_since = Some(Instant::now());
                self.auth_delays.reset();
                if !session_present {
                    LinkStats::inc(&stats.sessions_new);
                    self.shared.inflight().session_lost();
                }
                tracing::info!(broker = stats.name, session_present, "bridge connected");
                events.hold_every_packet_id();
                if !self.client.try_subscribe(&self.shared.broker.subscriptions) {
                    return Err(local("the request queue to the broker is full"));
                }
            }
            Event::Publish(delivery) => {
                LinkStats::inc(&stats.received);
                self.on_publish(delivery).await?;
            }
            Event::Released(pkid) => self.shared.inflight().released(pkid),
            Event::Subscribed { refused } => {
                self.subscriptions_refused(&refused);
                stats.set_state(LinkState::Up, 0);
            }
            Event::AckSent => write_ready(&self.shared, &self.client, events)?,
            Event::DisconnectSent | Event::Other => {}
        }
        Ok(())
    }

    fn subscriptions_refused(&self, refused: &[usize]) {
        let stats = &self.shared.stats;
        for &i in refused {
            let filter = self
                .shared
                .broker
                .subscriptions
                .get(i)
                .map(|s| s.filter.as_str());
            let message = format!("the broker refused the subscription {filter:?}");
            tracing::warn!(broker = stats.name, "{message}");
            LinkStats::inc(&stats.subscriptions_refused);
            stats.error(message);
        }
    }

    async fn on_publish(&mut self, d: Delivery) -> Result<(), LinkError> {
        let shared = self.shared.clone();
        let arrival = (d.qos > 0).then(|| {
            let fp = fingerprint(d.qos, &d.topic, &d.payload);
            shared.inflight().arrive(d.pkid, d.qos, fp)
        });
        let generation = shared.acks().generation;
        let (serial, kind) = match arrival {
            Some(Arrival::Again { serial }) => {
                LinkStats::inc(&shared.stats.redeliveries);
                (serial, Kind::Again)
            }
            Some(Arrival::New { serial }) => (serial, Kind::Append(self.append(&d, serial).await?)),
            None => (0, Kind::Append(self.append(&d, 0).await?)),
        };
        let pending = Pending {
            receipt: Receipt {
                qos: d.qos,
                pkid: d.pkid,
                serial,
                generation,
            },
            bytes: d.payload.len() as u64,
            kind,
        };
        if d.qos > 0 {
            shared.stats.inflight.fetch_add(1, Ordering::Relaxed);
        }
        // Waits for room: at most max_inflight acks owed, then reading stops.
        self.fifo
            .send(pending)
            .await
            .map_err(|_| local("the acknowledging task ended"))
    }

    /// Appends `d`; a failure is counted and (QoS 1/2) drops the link so
    /// the broker keeps the message. While the log writer is behind, waits
    /// for room (at most `OVERLOAD_WAIT`): reading stops meanwhile, and
    /// records stay in arrival order.
    async fn append(&self, d: &Delivery, serial: u64) -> Result<Ticket, LinkError> {
        let topic = String::from_utf8_lossy(&d.topic);
        let dest = self.shared.router.route(&topic, &self.shared.broker.name);
        let mut records = vec![record(d, &self.shared.broker.name, dest.key)];
        let log = &self.shared.log;
        let give_up = Instant::now() + OVERLOAD_WAIT;
        let e = loop {
            match log.try_append(dest.topic, dest.partition, records) {
                Ok(ticket) => return Ok(Ticket::Ready(ticket)),
                Err((AppendError::Overloaded, back)) => {
                    records = back;
                    if tokio::time::timeout_at(give_up, log.capacity())
                        .await
                        .is_err()
                    {
                        break AppendError::Overloaded;
                    }
                }
                Err((e, _)) => break e,
            }
        };
        let stats = &self.shared.stats;
        LinkStats::inc(&stats.append_failures);
        stats.error(format!("append to {:?}: {e}", dest.topic));
        if d.qos == 0 {
            tracing::warn!(broker = stats.name, "bridge QoS 0 publish lost: {e}");
            return Ok(Ticket::Failed(e));
        }
        self.shared.inflight().resolved(d.pkid, serial, false);
        Err(local(&format!("append failed: {e}")))
    }

    /// The link is down: no ack of it may be sent any more; waits the
    /// backoff. False when the gateway stops meanwhile.
    async fn down(&mut self, events: &mut Events, e: LinkError, shutdown: &mut Shutdown) -> bool {
        {
            let mut acks = self.shared.acks();
            acks.new_connection();
            events.forget_connection();
        }
        let stats = &self.shared.stats;
        LinkStats::inc(&stats.connect_failures);
        if self
            .up_since
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_LINK)
        {
            self.delays.reset();
        }
        let (state, delay) = if e.auth {
            LinkStats::inc(&stats.auth_failures);
            (LinkState::AuthFailed, self.auth_delays.next_delay())
        } else {
            (LinkState::Down, self.delays.next_delay())
        };
        tracing::warn!(
            broker = stats.name,
            delay_ms = delay.as_millis() as u64,
            "bridge link down: {}",
            e.message
        );
        stats.set_state(state, delay.as_millis() as u64);
        stats.error(e.message);
        tokio::select! {
            () = tokio::time::sleep(delay) => {
                stats.set_state(LinkState::Connecting, 0);
                true
            }
            () = shutdown.requested() => false,
        }
    }
}

/// The wake-up ack was written (`acker.rs`): writes the acks that became
/// durable meanwhile, all but the last straight into rumqttc's buffer and
/// the last as the next wake-up; at a stop, all of them and a DISCONNECT.
fn write_ready(shared: &Shared, client: &Client, events: &mut Events) -> Result<(), LinkError> {
    let mut acks = shared.acks();
    acks.wake = false;
    let batch: Vec<Receipt> = {
        let mut inflight = shared.inflight();
        let ready = std::mem::take(&mut acks.ready);
        ready
            .into_iter()
            .filter(|p| inflight.may_ack(p.pkid, p.serial))
            .collect()
    };
    let (direct, last) = match (acks.closing, batch.split_last()) {
        (false, Some((last, direct))) => (direct, Some(last)),
        _ => (&batch[..], None),
    };
    let pairs: Vec<(u8, u16)> = direct.iter().map(|p| (p.qos, p.pkid)).collect();
    events.write_acks(&pairs)?;
    {
        let mut inflight = shared.inflight();
        for p in direct {
            inflight.acked(p.pkid, p.serial);
        }
    }
    shared
        .stats
        .acks
        .fetch_add(direct.len() as u64, Ordering::Relaxed);
    match last {
        Some(p) => acker::wake(shared, client, &mut acks, *p),
        None if acks.closing => {
            let _ = client.try_disconnect();
        }
        None => {}
    }
    Ok(())
}

fn local(message: &str) -> LinkError {
    LinkError {
        auth: false,
        message: message.to_string(),
    }
}

/// An append: queued, or failed (QoS 0 only: nothing to redeliver).
pub enum Ticket {
    Ready(AppendTicket),
    Failed(AppendError),
}

impl Ticket {
    /// Resolves once durable (or failed).
    pub async fn durable(self) -> Result<(), AppendError> {
        match self {
            Ticket::Ready(ticket) => ticket.await.map(|_| ()),
            Ticket::Failed(e) => Err(e),
        }
    }
}

/// The record of a bridged publish: arrival time, routed key, the MQTT
/// facts as headers (`mqtt.bridge` names the link).
fn record(d: &Delivery, bridge: &str, key: Option<Bytes>) -> Record {
    let mut headers = vec![
        ("mqtt.topic".to_string(), d.topic.clone()),
        ("mqtt.qos".to_string(), Bytes::from(d.qos.to_string())),
        (
            "mqtt.bridge".to_string(),
            Bytes::copy_from_slice(bridge.as_bytes()),
        ),
    ];
    if d.retain {
        headers.push(("mqtt.retain".to_string(), Bytes::from_static(b"1")));
    }
    for (name, value) in &d.user_properties {
        headers.push((format!("mqtt.user.{name}"), Bytes::from(value.clone())));
    }
    Record {
        timestamp_ms: log::now_ms(),
        key,
        value: d.payload.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(100, 1000);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        // Each delay is in the upper half of its step; the steps double to
        // the cap. At the cap the jitter may shrink one delay to the next.
        let steps_ms = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (delay, step_ms) in delays.iter().zip(steps_ms) {
            let step = Duration::from_millis(step_ms);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delays:?} against steps {steps_ms:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
