//! The replicator thread: sessions, the send loop, acknowledgements,
//! checkpoints and status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer as _;

use super::client::{self, Event, Producer};
use super::config::{Partitioning, Priority, UpstreamConfig};
use super::error::{is_authorization, is_missing, UpstreamError};
use super::send::{fill_stream, Bucket, Window};
use super::status::{PartitionStatus, Status, UpstreamState, UpstreamStatus};
use super::stream::Stream;
use super::wire::WireMeter;
use super::{reset, tail};
use crate::log::{now_ms, Backlog, Log, Offset};

/// The status is refreshed at most this often, and only when something changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// While the bandwidth cap holds a backlog back: how often it is looked at.
const CAPPED_WAIT: Duration = Duration::from_millis(20);
/// While sending: how often new broker connections are made to reset on
/// close, and their bytes on the wire counted.
const RESET_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Under a bandwidth cap: how often the bytes on the wire are counted and
/// the cap's estimate corrected.
const CAPPED_WIRE_SAMPLE: Duration = Duration::from_millis(250);
/// How often a new session looks whether the failed one is destroyed.
const REAP_WAIT: Duration = Duration::from_millis(50);
/// At a clean stop: how often in-flight acknowledgements are looked for.
const DRAIN_WAIT: Duration = Duration::from_millis(20);
/// At a clean stop, how long in-flight records may take to be acknowledged.
const STOP_DRAIN: Duration = Duration::from_secs(5);
/// Events handled per wake-up before the thread looks at the log again.
const EVENTS_PER_WAKE: usize = 50_000;

pub struct Runner {
    pub log: Arc<Log>,
    pub config: UpstreamConfig,
    pub gateway_id: String,
    pub streams: Vec<Stream>,
    pub tx: Sender<Event>,
    pub rx: Receiver<Event>,
    pub stop: Arc<AtomicBool>,
    pub shared_status: Arc<Mutex<Option<Status>>>,
    pub producer: Option<Producer>,
    pub session: u64,
    /// Failed attempts since the last acknowledged record (backoff exponent).
    pub failures: u32,
    pub retry_at: Instant,
    pub window: Window,
    pub bucket: Option<Bucket>,
    pub upstream: UpstreamStatus,
    pub last_checkpoint: Instant,
    pub last_status: Instant,
    /// Streams are served starting here, rotating, so none starves.
    pub next_first: usize,
    /// Fault injection: a fatal producer error after this many
    /// acknowledgements in every session (`test-hooks` builds only).
    #[cfg(feature = "test-hooks")]
    pub fatal_after_acks: Option<u64>,
    pub session_acks: u64,
    /// The addresses of this cluster's brokers (bootstrap and metadata):
    /// the connections to reset when a session fails (see `reset`).
    pub brokers: std::collections::HashSet<std::net::SocketAddr>,
    /// When `arm_resets` looks for new broker connections next.
    pub next_reset_scan: Instant,
    /// Bytes sent to the brokers, read from the kernel (see `wire`).
    pub meter: WireMeter,
    /// When `meter_wire` counts next.
    pub next_wire_sample: Instant,
    /// Records were sent since the wire was last counted with nothing in
    /// flight: one more count is due (so a short burst is counted whole).
    pub wire_pending: bool,
    /// Failed sessions' clients being destroyed; the next session reads the
    /// remote tails only once they are gone.
    pub reaping: Vec<std::thread::JoinHandle<()>>,
    /// Something the status shows changed since it was last published.
    pub status_dirty: bool,
    /// Wakes this thread (through `tx`) when new records become readable.
    pub appended: std::task::Waker,
}

/// Turns "new records are readable" into an [`Event::Appended`].
pub struct AppendedWaker(pub Sender<Event>);

impl std::task::Wake for AppendedWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.send(Event::Appended);
    }
}

impl Runner {
    /// The loop: send what there is, then sleep until an event (a
    /// delivery report, an error, new records in the log, a stop) or the
    /// next thing that is due. Idle, it does not wake at all.
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            // Read before the log is: records published after it wake the wait.
            let seen = self.log.published();
            let progressed = (self.producer.is_some() || self.try_connect()) && self.fill();
            self.wire_pending |= progressed;
            self.meter_wire();
            if progressed {
                self.status_dirty = true;
                self.arm_resets();
                self.wait_events(Some(Duration::ZERO));
            } else {
                self.wait_idle(seen);
            }
            self.housekeeping(false);
        }
        self.shutdown();
    }

    /// Waits for an event, for records published after `seen` (when a
    /// session could send them), or for what is due next.
    fn wait_idle(&mut self, seen: u64) {
        // While every stream lingers, new records change nothing before its end.
        let all_linger = self.streams.iter().all(|s| s.linger_until.is_some());
        if self.producer.is_some() && !all_linger {
            let mut cx = std::task::Context::from_waker(&self.appended);
            let mut appended = std::pin::pin!(self.log.appended_after(seen));
            if std::future::Future::poll(appended.as_mut(), &mut cx).is_ready() {
                self.wait_events(Some(Duration::ZERO));
                return;
            }
        }
        self.wait_events(self.next_due());
    }

    /// How long until something is due without an event: the next session
    /// attempt, a checkpoint of moved cursors, a status refresh, tokens for
    /// a capped backlog. None: nothing is.
    fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut due: Vec<Instant> = Vec::new();
        if self.producer.is_none() {
            due.push(self.retry_at);
        }
        if self.streams.iter().any(|s| s.cursor > s.persisted) {
            due.push(
                self.last_checkpoint + Duration::from_millis(self.config.checkpoint_interval_ms),
            );
        }
        if self.status_dirty {
            due.push(self.last_status + STATUS_INTERVAL);
        }
        if self.producer.is_some() && self.wire_pending {
            due.push(self.next_wire_sample);
        }
        if self.bucket.is_some() && self.streams.iter().any(|s| !s.caught_up) {
            due.push(now + CAPPED_WAIT);
        }
        if self.producer.is_some() {
            due.extend(self.streams.iter().filter_map(|s| s.linger_until));
        }
        due.into_iter()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn try_connect(&mut self) -> bool {
        if Instant::now() < self.retry_at {
            return false;
        }
        if !self.failed_sessions_gone() {
            return false;
        }
        // Whatever comes of it, the status changes (state, errors, counts).
        self.status_dirty = true;
        self.session += 1;
        self.upstream.set(UpstreamState::Connecting, now_ms());
        match self.connect() {
            Ok(producer) => {
                self.producer = Some(producer);
                self.session_acks = 0;
                self.upstream.sessions += 1;
                self.upstream.set(UpstreamState::Connected, now_ms());
                tracing::info!(session = self.session, "upstream session ready");
                true
            }
            Err(e) => {
                self.schedule_retry(e);
                false
            }
        }
    }

    /// While records are in flight, at most once a second: makes the
    /// session's broker connections reset on close (see `reset`), so that
    /// one librdkafka closes itself (a request timeout on a cut link) drops
    /// its unsent requests instead of leaving them to the kernel. A
    /// connection younger than this has carried at most a second of
    /// requests when it is closed.
    fn arm_resets(&mut self) {
        let now = Instant::now();
        if now < self.next_reset_scan {
            return;
        }
        self.next_reset_scan = now + RESET_SCAN_INTERVAL;
        reset::reset_on_close(&self.brokers);
    }

    /// Counts what went on the wire since the last sample (at most once a
    /// second, four times under a cap) and settles the cap's estimate.
    fn meter_wire(&mut self) {
        let now = Instant::now();
        if self.producer.is_none() || !self.wire_pending || now < self.next_wire_sample {
            return;
        }
        let interval = match self.bucket {
            Some(_) => CAPPED_WIRE_SAMPLE,
            None => RESET_SCAN_INTERVAL,
        };
        self.next_wire_sample = now + interval;
        // Acknowledged means its request was sent whole: this count has it.
        self.wire_pending = self.streams.iter().any(|s| s.in_flight_records() > 0);
        self.count_wire();
    }

    fn count_wire(&mut self) {
        let wire = self.meter.sample(&self.brokers);
        self.upstream.wire_bytes_sent = self.meter.total;
        if let Some(bucket) = &mut self.bucket {
            bucket.measured(wire);
        }
        if wire > 0 {
            self.status_dirty = true;
        }
    }

    /// Whether every client of a failed session has been destroyed (its
    /// connections reset, see `reset`). Until then no tail is read: a
    /// request of the failed session could still be on its way.
    fn failed_sessions_gone(&mut self) -> bool {
        self.reaping.retain(|r| !r.is_finished());
        if self.reaping.is_empty() {
            return true;
        }
        self.retry_at = Instant::now() + REAP_WAIT;
        false
    }

    /// A new producer, once the remote partition counts and what the
    /// remote tails already hold are known.
    fn connect(&mut self) -> Result<Producer, UpstreamError> {
        let producer = client::producer(
            &self.config,
            &self.gateway_id,
            self.tx.clone(),
            self.session,
        )?;
        match self.prepare(&producer) {
            Ok(()) => Ok(producer),
            Err(e) => {
                reset::reset_on_close(&self.brokers);
                self.reaping.extend(reap(producer));
                Err(e)
            }
        }
    }

    fn prepare(&mut self, producer: &Producer) -> Result<(), UpstreamError> {
        let consumer = Reaped(Some(client::tail_consumer(&self.config, &self.gateway_id)?));
        // Set just above; taken only by Drop.
        let Some(consumer) = consumer.0.as_ref() else {
            return Ok(());
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms.max(1000));
        let mut remotes: Vec<String> = self
            .streams
            .iter()
            .map(|s| s.remote_topic.clone())
            .collect();
        remotes.sort();
        remotes.dedup();
        for remote in &remotes {
            let count = remote_partitions(producer, remote, timeout, &mut self.brokers)?;
            let read = tail_requests(&mut self.streams, remote, count)?;
            let depth = self.config.dedupe_tail_records;
            let implied = implied(&self.streams, remote);
            let found = tail::read_tails(
                consumer,
                remote,
                &read,
                &self.gateway_id,
                &implied,
                depth,
                timeout,
            )?;
            for s in self
                .streams
                .iter_mut()
                .filter(|s| &s.remote_topic == remote)
            {
                if let Some(offsets) = found.get(&(s.topic.clone(), s.partition.0)) {
                    s.note_upstream(offsets.iter().copied());
                }
            }
        }
        Ok(())
    }

    /// Sends what the windows allow; returns whether anything moved.
    fn fill(&mut self) -> bool {
        if self.producer.is_none() {
            return false;
        }
        let order = self.order();
        let Some(producer) = &self.producer else {
            return false;
        };
        let mut progressed = false;
        for i in order {
            let stream = &mut self.streams[i];
            let result = fill_stream(
                &self.log,
                producer,
                self.session,
                &self.gateway_id,
                stream,
                &mut self.window,
                self.bucket.as_mut(),
            );
            match result {
                Ok(moved) => progressed |= moved,
                Err(e) => {
                    self.teardown(e);
                    return false;
                }
            }
        }
        progressed
    }

    /// The order streams are served in this round.
    fn order(&mut self) -> Vec<usize> {
        let n = self.streams.len();
        let first = self.next_first % n.max(1);
        self.next_first = self.next_first.wrapping_add(1);
        let mut order: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        if self.config.priority == Priority::LiveFirst {
            // Smallest backlog first: caught-up partitions carry live data.
            let backlog = |s: &Stream| {
                self.log
                    .offsets(&s.topic, s.partition)
                    .map_or(0, |(_, end)| end.0.saturating_sub(s.next_read))
            };
            order.sort_by_key(|&i| backlog(&self.streams[i]));
        }
        order
    }

    /// Handles the events that arrive within `timeout` (None: waits for one).
    fn wait_events(&mut self, timeout: Option<Duration>) {
        let first = match timeout {
            Some(t) if t.is_zero() => self.rx.try_recv().ok(),
            Some(t) => self.rx.recv_timeout(t).ok(),
            None => self.rx.recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        self.handle(first);
        for _ in 0..EVENTS_PER_WAKE {
            match self.rx.try_recv() {
                Ok(event) => self.handle(event),
                Err(_) => break,
            }
        }
    }

    fn handle(&mut self, event: Event) {
        self.status_dirty = true;
        match event {
            Event::Stop => self.stop.store(true, Ordering::Release),
            Event::Appended => {}
            Event::Reload(security) => self.reload_security(*security),
            Event::Delivered { token, error } => self.delivered(&token, error),
            Event::Client {
                session,
                code,
                message,
            } if session == self.session => self.client_error(code, message),
            Event::Client { .. } => {}
        }
    }

    fn delivered(&mut self, token: &client::Token, error: Option<RDKafkaErrorCode>) {
        let Some(stream) = self.streams.get_mut(token.stream as usize) else {
            return;
        };
        match error {
            None if token.session == self.session => {
                let freed = stream.acked(token.offset);
                self.window.bytes = self.window.bytes.saturating_sub(freed);
                self.failures = 0;
                self.count_ack();
                if self.upstream.state != UpstreamState::Connected {
                    tracing::info!("upstream reachable again");
                    self.upstream.set(UpstreamState::Connected, now_ms());
                }
            }
            // A late acknowledgement from an ended session: it is upstream.
            None => stream.note_upstream([token.offset]),
            Some(_) if token.session != self.session => {}
            Some(code) => {
                stream.counters.delivery_errors += 1;
                let e = UpstreamError::Delivery {
                    topic: stream.topic.clone(),
                    partition: stream.partition.0,
                    offset: token.offset,
                    code,
                };
                self.teardown(e);
            }
        }
    }

    /// Counts an acknowledgement of the current session and, when fault
    /// injection asks for it, makes librdkafka raise a fatal error.
    fn count_ack(&mut self) {
        self.session_acks += 1;
        #[cfg(feature = "test-hooks")]
        if Some(self.session_acks) == self.fatal_after_acks {
            if let Some(producer) = &self.producer {
                tracing::warn!("fault injection: raising a fatal producer error");
                client::inject_fatal(producer);
            }
        }
    }

    fn client_error(&mut self, code: Option<RDKafkaErrorCode>, message: String) {
        let now = now_ms();
        self.upstream.error(message.clone(), now);
        // librdkafka reports a fatal error through the error callback with
        // either `Fatal` or the underlying code (UnknownProducerId, fencing,
        // ...): ask the producer, which knows for sure.
        let fatal = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error());
        if fatal.is_some() || code == Some(RDKafkaErrorCode::Fatal) {
            let detail = fatal.map_or(message, |(code, reason)| format!("{code:?}: {reason}"));
            self.teardown(UpstreamError::Fatal(detail));
            return;
        }
        match code {
            Some(code) if is_authorization(code) => {
                self.teardown(UpstreamError::Authorization(message));
            }
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
                if self.upstream.state == UpstreamState::Connected {
                    self.upstream.disconnects += 1;
                    tracing::warn!("upstream unreachable, librdkafka reconnects: {message}");
                }
                self.upstream.set(UpstreamState::Disconnected, now);
            }
            _ => tracing::warn!("upstream: {message}"),
        }
    }

    /// New credentials or certificates: the current session ends as a
    /// failed one does (its connections reset, every stream rewound to its
    /// cursor; the next session reads the remote tails first, so nothing is
    /// sent twice) and the next starts at once, not counted as a failure.
    fn reload_security(&mut self, security: super::config::Security) {
        self.config.security = security;
        if self.producer.is_some() {
            self.end_session();
        }
        self.failures = 0;
        self.retry_at = Instant::now();
        self.status_dirty = true;
        tracing::info!("upstream: credentials reloaded; the session is rebuilt with them");
    }

    /// Ends the session: drops the producer (purging what it still holds),
    /// rewinds every stream to its cursor and schedules the next attempt.
    fn teardown(&mut self, e: UpstreamError) {
        let e = self.explain_fatal(e);
        self.end_session();
        self.schedule_retry(e);
    }

    fn end_session(&mut self) {
        if let Some(producer) = self.producer.take() {
            // The last count of these connections: they are about to close.
            self.count_wire();
            let reset = reset::reset_on_close(&self.brokers);
            tracing::debug!("{reset} broker connection(s) of the failed session reset on close");
            self.reaping.extend(reap(producer));
        }
        // Every later report of the ended session is stale: one failure
        // ends a session once.
        self.session += 1;
        // Reports the old producer made while it was purged: late acks
        // count, failures of the old session are ignored.
        while let Ok(event) = self.rx.try_recv() {
            self.handle(event);
        }
        for s in &mut self.streams {
            s.reset();
        }
        self.window.bytes = 0;
    }

    /// A delivery or enqueue that failed with `Fatal` is the producer's
    /// fatal error: report that, with librdkafka's reason.
    fn explain_fatal(&self, e: UpstreamError) -> UpstreamError {
        match e {
            UpstreamError::Delivery {
                code: RDKafkaErrorCode::Fatal,
                ..
            } => {
                let fatal = self
                    .producer
                    .as_ref()
                    .and_then(|p| p.client().fatal_error());
                UpstreamError::Fatal(fatal.map_or(e.to_string(), |(code, reason)| {
                    format!("{code:?}: {reason}")
                }))
            }
            e => e,
        }
    }

    fn schedule_retry(&mut self, e: UpstreamError) {
        self.status_dirty = true;
        self.failures = self.failures.saturating_add(1);
        let cfg = &self.config;
        let exp = self.failures.saturating_sub(1).min(20);
        let mut base = cfg
            .backoff_initial_ms
            .saturating_mul(1 << exp)
            .min(cfg.backoff_max_ms);
        if e.is_slow() {
            base = base.max(cfg.slow_retry_ms);
        }
        // "Equal jitter": half fixed, half random, never above the cap.
        let delay = base / 2 + fastrand::u64(0..=base / 2);
        self.retry_at = Instant::now() + Duration::from_millis(delay);
        let now = now_ms();
        self.upstream.session_failures += 1;
        match &e {
            UpstreamError::Authorization(_) => self.upstream.authorization_errors += 1,
            UpstreamError::MissingTopic { .. } | UpstreamError::TooFewPartitions { .. } => {
                self.upstream.missing_topic_errors += 1;
            }
            UpstreamError::Delivery { code, .. } if is_authorization(*code) => {
                self.upstream.authorization_errors += 1;
            }
            UpstreamError::Delivery { code, .. } if is_missing(*code) => {
                self.upstream.missing_topic_errors += 1;
            }
            _ => {}
        }
        self.upstream.error(e.to_string(), now);
        self.upstream.set(UpstreamState::BackingOff, now);
        self.upstream.retry_at_ms = Some(now + delay as i64);
        if e.is_slow() {
            tracing::error!("upstream: {e}; retrying in {delay} ms");
        } else {
            tracing::warn!("upstream: {e}; retrying in {delay} ms");
        }
    }

    /// Persists cursors at the checkpoint interval (or now, when `force`)
    /// and refreshes the status.
    fn housekeeping(&mut self, force: bool) {
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        if force || self.last_checkpoint.elapsed() >= interval {
            self.last_checkpoint = Instant::now();
            for s in &mut self.streams {
                if s.cursor > s.persisted {
                    match self
                        .log
                        .set_replicated(&s.topic, s.partition, Offset(s.cursor))
                    {
                        Ok(()) => s.persisted = s.cursor,
                        Err(e) => {
                            tracing::error!(topic = %s.topic, partition = %s.partition, "persisting the replication cursor: {e}");
                        }
                    }
                }
            }
        }
        if force || (self.status_dirty && self.last_status.elapsed() >= STATUS_INTERVAL) {
            self.last_status = Instant::now();
            self.status_dirty = false;
            self.publish_status();
        }
    }

    fn publish_status(&self) {
        let status = Status {
            gateway_id: self.gateway_id.clone(),
            bootstrap_servers: self.config.bootstrap_servers.clone(),
            updated_ms: now_ms(),
            upstream: self.upstream.clone(),
            partitions: self
                .streams
                .iter()
                .map(|s| partition_status(&self.log, s))
                .collect(),
        };
        *self
            .shared_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// Clean stop: give in-flight records a moment to be acknowledged,
    /// persist the cursors, drop the producer.
    fn shutdown(&mut self) {
        let deadline = Instant::now() + STOP_DRAIN;
        while self.producer.is_some()
            && self.upstream.state == UpstreamState::Connected
            && self.streams.iter().any(|s| s.in_flight_records() > 0)
            && Instant::now() < deadline
        {
            self.wait_events(Some(DRAIN_WAIT));
        }
        self.housekeeping(true);
        self.producer = None;
        self.upstream.set(UpstreamState::Stopped, now_ms());
        self.publish_status();
    }
}

/// Drops a librdkafka client on a thread of its own: destroying it waits
/// for its broker threads, which can take a socket timeout on a dead link,
/// and the replicator must keep serving the log and the status meanwhile.
/// Its last delivery reports still arrive: late acknowledgements count (as
/// "upstream"), failures of an ended session are ignored.
fn reap<T: Send + 'static>(client: T) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("replicate-reap".into())
        .spawn(move || {
            let started = Instant::now();
            drop(client);
            tracing::debug!(
                "an ended session's Kafka client destroyed in {:?}",
                started.elapsed()
            );
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!("no thread to drop an old Kafka client ({e}); it is leaked");
            None
        }
    }
}

/// Reaps the tail consumer when `prepare` returns, on success or error.
struct Reaped(Option<rdkafka::consumer::BaseConsumer>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            // Only reads tails: nothing of it needs to be gone first.
            let _ = reap(consumer);
        }
    }
}

/// What `remote`'s name says about its records: whether it is this
/// gateway's own, and the local topic when exactly one is mirrored there by
/// a rule that names `{topic}`.
fn implied(streams: &[Stream], remote: &str) -> tail::Implied {
    let mut writers = streams.iter().filter(|s| s.remote_topic == remote);
    let Some(first) = writers.next() else {
        return tail::Implied::default();
    };
    let one_topic = writers.all(|s| s.topic == first.topic);
    tail::Implied {
        gateway: first.shape.implies_gateway,
        topic: (one_topic && first.shape.implies_topic).then(|| first.topic.clone()),
    }
}

/// What to read of `remote`'s partitions: for each, the local streams that
/// write there and their cursors. Checks the remote has enough partitions.
fn tail_requests(
    streams: &mut [Stream],
    remote: &str,
    count: usize,
) -> Result<Vec<tail::TailRequest>, UpstreamError> {
    let mut requests = std::collections::BTreeMap::<i32, tail::TailRequest>::new();
    for s in streams.iter_mut().filter(|s| s.remote_topic == remote) {
        let local = s.partition.0;
        let targets = match s.partitioning {
            Partitioning::Same if local as usize >= count => {
                return Err(UpstreamError::TooFewPartitions {
                    topic: remote.to_string(),
                    remote: count,
                    local_topic: s.topic.clone(),
                    local_partition: local,
                })
            }
            Partitioning::Same => local as i32..local as i32 + 1,
            Partitioning::Key => 0..count as i32,
        };
        s.remote_partitions = count;
        for p in targets {
            requests
                .entry(p)
                .or_insert_with(|| tail::TailRequest {
                    partition: p,
                    cursors: Default::default(),
                })
                .cursors
                .insert((s.topic.clone(), local), s.cursor);
        }
    }
    Ok(requests.into_values().collect())
}

/// The partition count of `topic`; adds the brokers the metadata names to
/// `brokers`.
fn remote_partitions(
    producer: &Producer,
    topic: &str,
    timeout: Duration,
    brokers: &mut std::collections::HashSet<std::net::SocketAddr>,
) -> Result<usize, UpstreamError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| UpstreamError::Metadata {
            topic: topic.to_string(),
            message: e.to_string(),
        })?;
    for b in metadata.brokers() {
        brokers.extend(reset::broker_addrs(b.host(), b.port()));
    }
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(UpstreamError::MissingTopic {
            topic: topic.to_string(),
        });
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if is_authorization(code) {
            return Err(UpstreamError::Authorization(format!(
                "topic {topic:?}: {code}"
            )));
        }
        if is_missing(code) {
            return Err(UpstreamError::MissingTopic {
                topic: topic.to_string(),
            });
        }
        return Err(UpstreamError::Metadata {
            topic: topic.to_string(),
            message: code.to_string(),
        });
    }
    if t.partitions().is_empty() {
        return Err(UpstreamError::MissingTopic {
            topic: topic.to_string(),
        });
    }
    Ok(t.partitions().len())
}

fn partition_status(log: &Log, s: &Stream) -> PartitionStatus {
    let summary = log.summary_from(&s.topic, s.partition, Some(Offset(s.cursor)));
    let (start, end, backlog, gaps, dropped) = match summary {
        Some(p) => (p.start.0, p.end.0, p.backlog, p.gaps, p.dropped_records),
        None => (0, 0, Backlog::default(), Vec::new(), 0),
    };
    PartitionStatus {
        topic: s.topic.clone(),
        partition: s.partition.0,
        remote_topic: s.remote_topic.clone(),
        log_start: start,
        log_end: end,
        replicated: s.cursor,
        backlog_records: backlog.records,
        backlog_bytes: backlog.bytes,
        in_flight_records: s.in_flight_records() as u64,
        dropped_records: dropped,
        gaps,
        counters: s.counters.clone(),
    }
}
