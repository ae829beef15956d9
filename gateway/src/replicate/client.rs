//! librdkafka clients: the idempotent producer and the consumer that reads
//! remote tails, and the callbacks that turn librdkafka's events into
//! [`Event`]s for the replicator thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientContext;

use super::config::{SaslMechanism, SecurityProtocol, UpstreamConfig};
use super::error::UpstreamError;

/// Names a sent record in its delivery report.
#[derive(Debug)]
pub struct Token {
    pub stream: u32,
    pub offset: u64,
    /// The producer session that sent it; reports of older sessions are stale.
    pub session: u64,
}

/// What the replicator thread is woken with.
#[derive(Debug)]
pub enum Event {
    Delivered {
        token: Box<Token>,
        error: Option<RDKafkaErrorCode>,
    },
    /// An error librdkafka reports outside a delivery (connection lost,
    /// all brokers down, fatal idempotence errors).
    Client {
        session: u64,
        code: Option<RDKafkaErrorCode>,
        message: String,
    },
    /// New records are readable in the log.
    Appended,
    /// A reload changed the credentials or certificates: the session is
    /// rebuilt with them.
    Reload(Box<super::config::Security>),
    Stop,
}

/// Forwards librdkafka's callbacks to the replicator thread.
pub struct Context {
    pub tx: Sender<Event>,
    pub session: u64,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let _ = self.tx.send(Event::Client {
            session: self.session,
            code: error.rdkafka_error_code(),
            message: format!("{error}: {reason}"),
        });
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        let error = match result {
            Ok(_) => None,
            Err((e, _)) => Some(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
        };
        let _ = self.tx.send(Event::Delivered { token, error });
    }
}

/// How long the event thread blocks in librdkafka per round: it is woken
/// at once by every event, so this only bounds how long a stop waits. It
/// matches librdkafka's own timer granularity (its threads wake about once
/// a second when idle), so it adds no wakeups of its own that matter.
const EVENT_POLL: Duration = Duration::from_secs(1);

/// The idempotent producer and the thread that serves its events (delivery
/// reports, errors) as they arrive. rdkafka's `ThreadedProducer` does the
/// same but wakes every 100 ms when idle.
pub struct Producer {
    inner: Arc<BaseProducer<Context>>,
    stop: Arc<AtomicBool>,
    events: Option<JoinHandle<()>>,
}

impl std::ops::Deref for Producer {
    type Target = BaseProducer<Context>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Producer {
    fn start(inner: BaseProducer<Context>) -> Result<Producer, UpstreamError> {
        let inner = Arc::new(inner);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (inner.clone(), stop.clone());
        let events = std::thread::Builder::new()
            .name("replicate-events".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    p.poll(EVENT_POLL);
                }
            })
            .map_err(|e| {
                UpstreamError::Client(format!("starting the producer's event thread: {e}"))
            })?;
        Ok(Producer {
            inner,
            stop,
            events: Some(events),
        })
    }
}

impl Drop for Producer {
    /// Stops the event thread, then drops the producer: librdkafka purges
    /// what it still holds and reports it (to a stale session).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(events) = self.events.take() {
            let _ = events.join();
        }
    }
}

/// Settings both clients share: servers, TLS, SASL, timeouts.
fn common(config: &UpstreamConfig, gateway_id: &str) -> Result<ClientConfig, UpstreamError> {
    let mut c = ClientConfig::new();
    let ms = |v: u64| v.to_string();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("tidewell-{gateway_id}"))
        .set("socket.keepalive.enable", "true")
        .set("socket.timeout.ms", ms(config.request_timeout_ms))
        .set(
            "socket.connection.setup.timeout.ms",
            ms(config.request_timeout_ms),
        )
        .set("reconnect.backoff.ms", ms(config.backoff_initial_ms))
        .set("reconnect.backoff.max.ms", ms(config.backoff_max_ms))
        .set("retry.backoff.ms", ms(config.backoff_initial_ms.min(1000)))
        .set(
            "retry.backoff.max.ms",
            ms(config.backoff_max_ms.min(10_000)),
        )
        .set("topic.metadata.refresh.interval.ms", "60000")
        .set("log.connection.close", "false");
    let sec = &config.security;
    let protocol = match sec.protocol {
        SecurityProtocol::Plaintext => "plaintext",
        SecurityProtocol::Ssl => "ssl",
        SecurityProtocol::SaslPlaintext => "sasl_plaintext",
        SecurityProtocol::SaslSsl => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(mechanism) = sec.sasl_mechanism {
        let name = match mechanism {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        };
        c.set("sasl.mechanisms", name);
        if let Some(user) = &sec.username {
            c.set("sasl.username", user);
        }
        c.set("sasl.password", sasl_password(config)?);
    }
    let path = |p: &std::path::PathBuf| p.display().to_string();
    if let Some(ca) = &sec.ca_file {
        c.set("ssl.ca.location", path(ca));
    }
    if let (Some(cert), Some(key)) = (&sec.cert_file, &sec.key_file) {
        c.set("ssl.certificate.location", path(cert))
            .set("ssl.key.location", path(key));
    }
    Ok(c)
}

fn sasl_password(config: &UpstreamConfig) -> Result<String, UpstreamError> {
    let sec = &config.security;
    match (&sec.password, &sec.password_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|s| s.lines().next().unwrap_or("").to_string())
            .map_err(|e| UpstreamError::Config(format!("{}: {e}", file.display()))),
        (None, None) => Ok(String::new()),
    }
}

/// The producer settings, also used by `bench replicate` for the reference
/// producer so both run with the same idempotence, acks and batching.
pub fn producer_settings(config: &UpstreamConfig) -> Vec<(&'static str, String)> {
    // librdkafka's queue holds at most what our in-flight window allows
    // (plus slack for headers): the log is the buffer, not librdkafka.
    let records = (config.max_in_flight_records as u64)
        .saturating_mul(4)
        .max(1000);
    let kbytes = (config.max_in_flight_bytes / 1024 * 2).max(1024);
    vec![
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
        ("max.in.flight.requests.per.connection", "5".into()),
        (
            "compression.type",
            config.compression.librdkafka_name().into(),
        ),
        ("linger.ms", config.linger_ms.to_string()),
        ("batch.size", config.batch_bytes.to_string()),
        ("message.timeout.ms", config.message_timeout_ms.to_string()),
        ("request.timeout.ms", config.request_timeout_ms.to_string()),
        (
            "queue.buffering.max.messages",
            records.min(10_000_000).to_string(),
        ),
        (
            "queue.buffering.max.kbytes",
            kbytes.min(2_097_151).to_string(),
        ),
    ]
}

pub fn producer(
    config: &UpstreamConfig,
    gateway_id: &str,
    tx: Sender<Event>,
    session: u64,
) -> Result<Producer, UpstreamError> {
    let mut c = common(config, gateway_id)?;
    for (key, value) in producer_settings(config) {
        c.set(key, value);
    }
    for (key, value) in &config.librdkafka {
        c.set(key, value);
    }
    let inner = c
        .create_with_context(Context { tx, session })
        .map_err(|e| UpstreamError::Client(e.to_string()))?;
    Producer::start(inner)
}

/// Raises a fatal idempotent-producer error inside librdkafka, as if the
/// broker had fenced the producer: the fault campaign and the tests use it
/// (through `TIDEWELL_FAULT_FATAL_AFTER_ACKS`) to exercise the rebuild.
#[cfg(feature = "test-hooks")]
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn inject_fatal(producer: &Producer) {
    let reason = c"injected by TIDEWELL_FAULT_FATAL_AFTER_ACKS";
    // SAFETY: the handle is live for as long as `producer`, and librdkafka
    // copies the reason string before returning.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            rdkafka::producer::Producer::client(&**producer).native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
            reason.as_ptr(),
        );
    }
}

/// A consumer without group membership: it is only assigned partitions to
/// read their tails, and never commits.
pub fn tail_consumer(
    config: &UpstreamConfig,
    gateway_id: &str,
) -> Result<BaseConsumer, UpstreamError> {
    let mut c = common(config, gateway_id)?;
    c.set("group.id", format!("tidewell-tail-{gateway_id}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        // Small fetches, each answered well within the timeout even by a
        // slow broker; a tail is read once per session.
        .set("max.partition.fetch.bytes", "262144")
        .set("fetch.max.bytes", "1048576")
        .set(
            "socket.timeout.ms",
            config.request_timeout_ms.max(30_000).to_string(),
        )
        .set("isolation.level", "read_uncommitted");
    for (key, value) in &config.librdkafka {
        if !key.starts_with("queue.") && !key.starts_with("linger") {
            c.set(key, value);
        }
    }
    c.create().map_err(|e| UpstreamError::Client(e.to_string()))
}
