//! The MQTT listener: sensors publish here, and an acknowledgement means the
//! record is on disk.
//!
//! # Why
//!
//! Edge brokers acknowledge a QoS 1 publish from memory, and the device then
//! forgets the reading; a power cut loses it. Tidewell sends PUBACK (QoS 1)
//! and PUBREC (QoS 2) only once [`crate::log::AppendTicket`] has resolved,
//! which under the default `fsync = "always"` means after the `fdatasync`
//! that covers the record.
//!
//! # Shape
//!
//! rumqttd's `protocol` module decodes and encodes MQTT 3.1.1 and 5 packets
//! (`codec.rs` adds the size checks and the parts it keeps private); the
//! rest is ours. One task per connection, split in two halves joined by a
//! bounded FIFO:
//!
//! ```text
//!  socket ──► reader (reader.rs) ── log.append() returns a ticket at once
//!                 │  FIFO of (ticket, ack to send), at most receive_maximum
//!                 ▼
//!             writer (writer.rs) ── awaits tickets in order ──► PUBACK/PUBREC ──► socket
//!                 └─ subscriptions: records after the session's cursors, read from the log (feed.rs)
//! ```
//!
//! The reader never waits for the disk: it appends and moves on, so many
//! publishes of one client share one group commit. The writer awaits the
//! tickets in arrival order, so acks leave in the order the publishes came
//! (MQTT requires it, and a client may rely on it). When the FIFO is full
//! the reader stops reading: a fast client meets TCP back-pressure and our
//! memory stays at `receive_maximum` publishes per connection.
//!
//! # Exactly once toward the log (QoS 2)
//!
//! Per connection, the packet ids whose PUBLISH was appended and whose
//! PUBREL has not arrived are kept; a re-sent PUBLISH with such an id gets
//! its PUBREC again but is not appended again. A persistent session keeps
//! them from one connection to the next (saved when a connection ends, so
//! not across a gateway crash: a QoS 2 re-send after a crash whose PUBREC
//! was lost is appended again).
//!
//! # Sessions (`session.rs`, `feed.rs`, `shares.rs`)
//!
//! Every subscriber reads the log: its writer keeps a cursor per log
//! partition and delivers the matching records after it, in offset order
//! per partition, so a slow subscriber falls behind instead of losing
//! messages, and nothing is copied per subscriber in memory. A clean
//! session's cursors start at the log's end at its first subscription and
//! live in memory; a persistent session (3.1.1 `clean_session = 0`, MQTT 5
//! session expiry) saves its subscriptions and cursors in `@mqtt/sessions`,
//! so what it missed while away comes from the log, bounded by retention.
//! Shared subscriptions (`$share/{group}/{filter}`) are the exception: their
//! members split live messages from the hub, an in-memory broadcast of
//! durable messages.
//!
//! # Messages, retained messages, wills (`message.rs`, `retain.rs`, `will.rs`)
//!
//! A publish becomes one log record whose headers carry the MQTT facts:
//! topic, client id, QoS, packet id, the retain flag and the MQTT 5 message
//! properties (`message.rs` lists them), so Kafka gets them too and the
//! broker can rebuild a message from its record. Once durable, a message
//! goes to the retained set (if retained) and to live subscribers, with its
//! properties (expiry counted down), subscription identifiers and, under
//! retain-as-published, its retain flag. The retained set is derived from
//! the log: a checkpoint plus a replay at start (`retain.rs` has the rules).
//! A will is published like any message, only when the connection ends
//! without a normal DISCONNECT (or with 0x04).
//!
//! # Refusals
//!
//! Nothing is dropped silently; each refusal is counted in [`MqttStats`].
//! MQTT 5: PUBACK/PUBREC 0x87 (ACL), 0x97 (full log under `reject_new`),
//! 0x80 (log failure); DISCONNECT 0x95 (packet over `max_payload_bytes`,
//! the Maximum Packet Size CONNACK advertises), 0x94 (topic alias 0 or over
//! 32), 0x93 (more unacknowledged QoS 1/2 publishes than `receive_maximum`).
//! MQTT 3.1.1 has no negative acknowledgement: the connection is closed.
//! Deliveries over the subscriber's Maximum Packet Size, or past their
//! message expiry, are not sent (counted). A new persistent session beyond
//! `max_persistent_sessions` gets CONNACK 0x97 (3.1.1: 0x03). A shared
//! subscription's member more than 256 messages behind the hub misses
//! messages (counted in `deliveries_lagged`).
//!
//! # Bounded under abuse
//!
//! A frame's length is checked before it is buffered; CONNECT must arrive
//! within `connect_timeout_ms`; after it, a client silent for 1.5 times its
//! keep-alive (capped at `keep_alive_max_s`, so half-open TCP connections
//! die) is closed; writes time out; at most `max_connections` connections.

pub(crate) mod acl;
pub mod auth;
mod codec;
pub mod config;
mod connect;
pub mod error;
mod feed;
pub mod gate;
pub mod live;
mod message;
mod observe;
mod reader;
mod resend;
mod retain;
pub mod route;
mod session;
mod shares;
pub mod stats;
pub(crate) mod tls;
mod will;
mod writer;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use auth::hash_password;
#[doc(hidden)]
pub use codec::fuzz_stream;
pub use config::MqttConfig;
pub use error::{ConnError, StartError};
pub use stats::MqttStats;
#[doc(hidden)]
pub use ws::fuzz_stream as fuzz_ws_stream;

use crate::ingest::{Context, Running, Shutdown, Source, Starting};
use crate::log::Log;
use crate::net::{Acceptor, RateLimitedWarning};
use route::Router;

/// Live messages buffered for shared subscriptions; a member further behind
/// misses messages (counted in `deliveries_lagged`).
const HUB_CAPACITY: usize = 256;

pub use message::Live;

/// What every connection task shares.
pub struct Shared {
    pub config: MqttConfig,
    pub log: Arc<Log>,
    pub stats: Arc<MqttStats>,
    pub hub: broadcast::Sender<Arc<Live>>,
    /// Bounds, caches and slows down password checks.
    pub gate: Arc<gate::Gate>,
    /// Users, routes and TLS as the last reload left them.
    pub live: Arc<live::Live>,
    /// Connected client ids: connection number and the signal that makes it
    /// give way to a newer connection with the same id.
    clients: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
    /// Wills waiting for their MQTT 5 delay interval.
    wills: will::Delayed,
    /// The last retained message per topic.
    retained: Arc<retain::Retained>,
    /// QoS 1 records of the log tail at start, to recognise re-sends.
    recent: resend::Recent,
    /// Persistent sessions (`session.rs`).
    sessions: Arc<session::Sessions>,
    /// Shared subscriptions (`shares.rs`).
    shares: shares::Shares,
    /// Records near the end of each partition, decoded once for every
    /// subscriber (`feed.rs`).
    feeds: Arc<feed::Recent>,
    next_conn: AtomicU64,
    /// `max_connections`, lowered to what the descriptor limit leaves.
    max_connections: u64,
}

impl Shared {
    fn conn_number(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A message is durable in the log: hand it to the retained set (if
    /// retained) and to the live subscribers.
    fn durable(&self, mut message: Live) {
        if message.retain && self.retained.apply(&message) {
            let (retained, log) = (self.retained.clone(), self.log.clone());
            tokio::task::spawn_blocking(move || retained.checkpoint(&log, false));
        }
        if self.hub.receiver_count() > 0 {
            message.shared_to = self.shares.pick(&message.topic);
            let _ = self.hub.send(Arc::new(message));
        }
    }

    /// Registers `client_id`; an older connection with the same id is told
    /// to close (MQTT's session takeover), and a delayed will of that id is
    /// cancelled.
    fn register(&self, client_id: &str, conn: u64) -> Arc<Notify> {
        self.wills.cancel(client_id);
        let kick = Arc::new(Notify::new());
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, old)) = clients.insert(client_id.to_string(), (conn, kick.clone())) {
            old.notify_one();
        }
        kick
    }

    fn unregister(&self, client_id: &str, conn: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.get(client_id).is_some_and(|(c, _)| *c == conn) {
            clients.remove(client_id);
        }
    }
}

/// The running listeners. Dropping it stops accepting (open connections end
/// with the runtime).
pub struct MqttServer {
    pub local_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// MQTT over WebSockets (`ws_listen`, `[mqtt.wss]`, see `ws.rs`).
    pub ws_addrs: [Option<SocketAddr>; 2],
    pub stats: Arc<MqttStats>,
    tasks: Vec<JoinHandle<()>>,
    live: Arc<live::Live>,
    log: Arc<Log>,
}

impl Drop for MqttServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The MQTT listener as a source of the gateway.
struct MqttSource(MqttConfig);

impl MqttConfig {
    /// The listener, unless `enabled = false`.
    pub fn source(&self) -> Option<Box<dyn Source>> {
        self.enabled
            .then(|| Box::new(MqttSource(self.clone())) as Box<dyn Source>)
    }
}

impl Source for MqttSource {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let server = start(&self.0, ctx.log, ctx.shutdown).await?;
            ctx.registry.register(server.stats.clone());
            Ok(Box::new(server) as Box<dyn Running>)
        })
    }
}

impl Running for MqttServer {
    fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut addresses = vec![("mqtt", self.local_addr)];
        addresses.extend(self.tls_addr.map(|tls| ("mqtts", tls)));
        let [ws, wss] = self.ws_addrs;
        addresses.extend(
            ws.map(|a| ("mqtt-ws", a))
                .into_iter()
                .chain(wss.map(|a| ("mqtt-wss", a))),
        );
        addresses
    }

    fn reload(&self, config: &crate::config::Config) -> Result<Vec<String>, String> {
        self.live
            .apply(&config.mqtt, &self.log)
            .map_err(|e| e.to_string())
    }
}

/// Binds the listeners and starts accepting until `shutdown`. Must run
/// inside a tokio runtime.
pub async fn start(
    config: &MqttConfig,
    log: Arc<Log>,
    shutdown: Shutdown,
) -> Result<MqttServer, StartError> {
    let mut config = config.clone();
    if config.resolve() {
        tracing::warn!(
            "mqtt: anonymous clients may publish to every topic (loopback-only listeners and no \
             anonymous_publish_acl configured); set mqtt.anonymous_publish_acl to restrict them"
        );
    }
    let config = &config;
    let router = Router::new(config, &log)?;
    let retained = tokio::task::spawn_blocking({
        let log = log.clone();
        move || retain::Retained::open(&log)
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))??;
    let recent = tokio::task::spawn_blocking({
        let log = log.clone();
        move || resend::Recent::from_log(&log)
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))?
    .map_err(|e| StartError::Task(format!("reading the log tail: {e}")))?;
    let stats = Arc::new(MqttStats::default());
    let sessions = tokio::task::spawn_blocking({
        let (log, stats) = (log.clone(), stats.clone());
        let (max, n) = (config.max_session_expiry_s, config.max_persistent_sessions);
        move || session::Sessions::open(&log, max, n, stats)
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))?;
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    let acceptor = tls.clone().map(TlsAcceptor::from);
    let wss = config.wss.as_ref().map(tls::server_config).transpose()?;
    let live = Arc::new(live::Live::new(
        config,
        router,
        acceptor,
        wss.map(TlsAcceptor::from),
    ));
    let shared = Arc::new(Shared {
        config: config.clone(),
        log: log.clone(),
        live: live.clone(),
        stats: stats.clone(),
        hub: broadcast::channel(HUB_CAPACITY).0,
        gate: Arc::new(gate::Gate::new(config, stats.clone())),
        clients: Mutex::new(HashMap::new()),
        wills: will::Delayed::default(),
        retained: Arc::new(retained),
        recent,
        sessions: sessions.clone(),
        shares: shares::Shares::default(),
        feeds: Arc::default(),
        next_conn: AtomicU64::new(1),
        max_connections: connection_budget(config.max_connections as u64),
    });
    let plain = bind(config.listen).await?;
    let local_addr = plain.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let every = Duration::from_millis(config.session_checkpoint_ms);
    let mut tasks = vec![
        tokio::spawn(accept_loop(plain, false, shared.clone(), shutdown.clone())),
        tokio::spawn(sessions.run(every)),
    ];
    let ws = ws::listen(config, &shared, &shutdown).await?;
    tasks.extend(ws.tasks);
    let mut tls_addr = None;
    if let (Some(tls_config), Some(_)) = (&config.tls, tls) {
        let listener = bind(tls_config.listen).await?;
        tls_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(accept_loop(listener, true, shared, shutdown)));
    }
    tracing::info!(%local_addr, tls = ?tls_addr, "mqtt listening");
    Ok(MqttServer {
        local_addr,
        tls_addr,
        ws_addrs: [ws.ws, ws.wss],
        stats,
        tasks,
        live,
        log,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Descriptors kept free for the log (two per segment, and segments keep
/// coming), the replicator and the HTTP endpoint: a quarter of the limit,
/// at least 64.
fn descriptor_headroom(limit: u64) -> u64 {
    (limit / 4).max(64)
}

/// `max_connections`, or less if the descriptor limit would run out first:
/// a segment roll that finds no descriptor fails the log, so connections
/// must leave the log its share.
fn connection_budget(max_connections: u64) -> u64 {
    let Some((limit, open)) = crate::net::descriptors() else {
        return max_connections;
    };
    let budget = limit.saturating_sub(open + descriptor_headroom(limit));
    if budget < max_connections {
        tracing::warn!(
            max_connections,
            budget,
            descriptor_limit = limit,
            open,
            "mqtt: fewer connections than max_connections: the descriptor limit leaves room for {budget} (raise LimitNOFILE)"
        );
    }
    budget.min(max_connections)
}

/// `tls`: this listener's connections start with a handshake, under the
/// certificate the last reload loaded.
async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) {
    let mut listener = Acceptor::new(listener, "mqtt");
    let mut full = RateLimitedWarning::new(Duration::from_secs(10));
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.requested() => {
                if !tls {
                    let (retained, log) = (shared.retained.clone(), shared.log.clone());
                    let _ = tokio::task::spawn_blocking(move || retained.checkpoint(&log, true)).await;
                    shared.sessions.write_now().await;
                }
                return;
            }
        };
        if !admitted(&shared, &socket, peer, &mut full, "mqtt connection refused") {
            continue;
        }
        let acceptor = if tls { shared.live.tls() } else { None };
        tokio::spawn(handle_socket(socket, peer, acceptor, shared.clone()));
    }
}

/// Whether a new connection fits under `max_connections` (or the
/// descriptor limit); counted either way. Every listener asks this.
fn admitted(
    shared: &Shared,
    socket: &TcpStream,
    peer: SocketAddr,
    full: &mut RateLimitedWarning,
    refused: &str,
) -> bool {
    let stats = &shared.stats;
    if MqttStats::get(&stats.connections_open) >= shared.max_connections {
        MqttStats::inc(&stats.connections_rejected);
        let limit = shared.max_connections;
        full.warn(
            refused,
            &format_args!("{limit} connections open (max_connections or the descriptor limit); last from {peer}"),
        );
        return false;
    }
    MqttStats::inc(&stats.connections_accepted);
    MqttStats::inc(&stats.connections_open);
    let _ = socket.set_nodelay(true);
    true
}

async fn handle_socket(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    // Boxed: a connection holds the state of the phase it is in (waiting
    // for CONNECT, connected), not that of the largest (a TLS stream's).
    match tls {
        None => Box::pin(serve(socket, peer, false, &shared)).await,
        Some(acceptor) => Box::pin(serve_tls(socket, peer, acceptor, &shared)).await,
    }
    shared
        .stats
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: &Arc<Shared>,
) {
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => {
            let cert = stream.get_ref().1.peer_certificates().is_some();
            Box::pin(serve(stream, peer, cert, shared)).await;
        }
        Ok(Err(e)) => tracing::info!(%peer, "mqtt tls handshake failed: {e}"),
        Err(_) => tracing::info!(%peer, "mqtt tls handshake timed out"),
    }
}

/// Runs one connection to its end and logs why it ended.
async fn serve<S>(stream: S, peer: SocketAddr, client_cert: bool, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = shared.conn_number();
    let mut client_id = String::new();
    let result = connect::run(stream, peer, client_cert, conn, shared, &mut client_id).await;
    if !client_id.is_empty() {
        shared.unregister(&client_id, conn);
    }
    match result {
        Ok(()) => tracing::debug!(%peer, client_id, "mqtt connection closed"),
        Err(ConnError::Io(e)) => tracing::debug!(%peer, client_id, "mqtt connection lost: {e}"),
        Err(e) => tracing::info!(%peer, client_id, "mqtt connection closed: {e}"),
    }
}
