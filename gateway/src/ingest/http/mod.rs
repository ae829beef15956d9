//! HTTP ingest and read-back: webhooks and scripts POST records, local apps
//! read the log back from an offset. One listener (plain, and optionally
//! TLS), its own port; not the loopback observability endpoint.
//!
//! # What "acknowledged" means
//!
//! `POST /v1/topics/{topic}` is answered `200` only after the append
//! ticket of its records resolved: under `fsync = "always"`, after the
//! fdatasync that covers them. A batch (NDJSON lines, or a JSON array) is
//! one append: all of it is durable, or none of it was accepted (`400` for
//! a malformed batch appends nothing). See `post.rs` for the request shape
//! and `idempotency.rs` for `Idempotency-Key` and its window.
//!
//! # Shape
//!
//! hyper 1's HTTP/1.1 server under our own accept loop (bounded by
//! `max_connections`, the shared [`Acceptor`]): hyper does keep-alive,
//! chunked bodies, `Expect: 100-continue` (the `100` goes out only once the
//! handler reads the body, so a `413` decided from `Content-Length` is sent
//! before any of the body is read) and the header read timeout. One task
//! per connection; one task per streamed read (`read.rs`), which ends when
//! the client goes away or the gateway stops.
//!
//! Users, argon2 hashes and ACLs are MQTT's (`auth.rs`), checked through a
//! [`Gate`] of this listener's own (bounded, cached, slowed after failures).

mod auth;
pub mod client;
pub mod config;
pub mod idempotency;
mod observe;
mod post;
mod read;
pub mod reply;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub use config::HttpIngestConfig;
pub use observe::HttpIngestStats;

use crate::ingest::mqtt::acl::Acl;
use crate::ingest::mqtt::config::UserConfig;
use crate::ingest::mqtt::gate::Gate;
use crate::ingest::mqtt::{MqttConfig, MqttStats};
use crate::ingest::serial::AbortOnDrop;
use crate::ingest::{Context, Running, Shutdown, Source, Starting};
use crate::log::Log;
use crate::net::Acceptor;
use idempotency::Keys;
use reply::Reply;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at a stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("http_ingest: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http_ingest: {0}")]
    Tls(#[from] crate::ingest::mqtt::StartError),
}

/// What every connection shares.
pub struct Shared {
    pub config: HttpIngestConfig,
    /// Who may do what: swapped whole by a reload.
    access: RwLock<Arc<AccessConfig>>,
    /// The HTTPS listener's certificate (new connections get a reload's).
    tls: RwLock<Option<TlsAcceptor>>,
    pub log: Arc<Log>,
    pub gate: Gate,
    pub keys: Arc<Keys>,
    pub stats: Arc<HttpIngestStats>,
    pub shutdown: Shutdown,
}

/// The reloadable part: `[[mqtt.users]]` (this listener's users too) and
/// the anonymous access of `[http_ingest]`.
pub struct AccessConfig {
    pub users: Vec<UserConfig>,
    pub allow_anonymous: bool,
    /// Each user's ACL with its placeholders filled in, once per reload
    /// rather than once per request.
    pub acls: HashMap<String, Arc<Acl>>,
    pub anonymous_acl: Arc<Acl>,
}

impl AccessConfig {
    fn new(config: &HttpIngestConfig, mqtt: &MqttConfig) -> AccessConfig {
        let acls = mqtt
            .users
            .iter()
            .map(|u| {
                let name = &u.username;
                let acl = Acl::new(&u.publish_acl, &u.subscribe_acl, name, Some(name));
                (name.clone(), Arc::new(acl))
            })
            .collect();
        let anonymous_acl = Acl::new(
            &config.anonymous_publish_acl,
            &config.anonymous_read_acl,
            "anonymous",
            None,
        );
        AccessConfig {
            users: mqtt.users.clone(),
            allow_anonymous: config.allow_anonymous,
            acls,
            anonymous_acl: Arc::new(anonymous_acl),
        }
    }
}

impl Shared {
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn access(&self) -> Arc<AccessConfig> {
        self.access
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn tls(&self) -> Option<TlsAcceptor> {
        self.tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A reload: new users, hashes, ACLs and anonymous access at once; a
    /// new certificate and key (and client CA) for new HTTPS connections.
    /// Connections and requests under way are not touched.
    fn apply(&self, config: &HttpIngestConfig, mqtt: &MqttConfig) -> Result<Vec<String>, String> {
        let mut changes = Vec::new();
        if let (Some(new_tls), Some(_)) = (&config.tls, self.tls()) {
            let server =
                crate::ingest::mqtt::tls::server_config(new_tls).map_err(|e| e.to_string())?;
            *self
                .tls
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(TlsAcceptor::from(server));
            changes.push("http_ingest tls certificate and key (new connections)".into());
        }
        *self
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(AccessConfig::new(config, mqtt));
        changes.push("http_ingest users, ACLs and anonymous access".into());
        Ok(changes)
    }
}

struct HttpIngestSource {
    config: HttpIngestConfig,
    mqtt: MqttConfig,
}

impl HttpIngestConfig {
    /// The listener, when `enabled`; `mqtt` supplies the users.
    pub fn source(&self, mqtt: &MqttConfig) -> Option<Box<dyn Source>> {
        self.enabled.then(|| {
            Box::new(HttpIngestSource {
                config: self.clone(),
                mqtt: mqtt.clone(),
            }) as Box<dyn Source>
        })
    }
}

struct HttpIngestHandle {
    addresses: Vec<(&'static str, SocketAddr)>,
    shared: Arc<Shared>,
    _tasks: AbortOnDrop,
}

impl Running for HttpIngestHandle {
    fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        self.addresses.clone()
    }

    fn reload(&self, config: &crate::config::Config) -> Result<Vec<String>, String> {
        self.shared.apply(&config.http_ingest, &config.mqtt)
    }
}

impl Source for HttpIngestSource {
    fn name(&self) -> &'static str {
        "http_ingest"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let stats = Arc::new(HttpIngestStats::default());
            ctx.registry.register(stats.clone());
            let handle = start(*self, ctx.log, ctx.shutdown, stats).await?;
            Ok(Box::new(handle) as Box<dyn Running>)
        })
    }
}

async fn start(
    source: HttpIngestSource,
    log: Arc<Log>,
    shutdown: Shutdown,
    stats: Arc<HttpIngestStats>,
) -> Result<HttpIngestHandle, StartError> {
    let tls = match &source.config.tls {
        Some(t) => Some((t.listen, crate::ingest::mqtt::tls::server_config(t)?)),
        None => None,
    };
    let keys = rebuild_keys(&log, &source.config).await;
    let gate = Gate::new(&source.mqtt, Arc::new(MqttStats::default()));
    let slots = Arc::new(Semaphore::new(source.config.max_connections));
    let shared = Arc::new(Shared {
        access: RwLock::new(Arc::new(AccessConfig::new(&source.config, &source.mqtt))),
        tls: RwLock::new(tls.as_ref().map(|(_, c)| TlsAcceptor::from(c.clone()))),
        config: source.config,
        log,
        gate,
        keys: Arc::new(keys),
        stats,
        shutdown,
    });
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    let listeners = [(shared.config.listen, false)]
        .into_iter()
        .chain(tls.map(|(addr, _)| (addr, true)));
    for (addr, https) in listeners {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let name = if https { "https_ingest" } else { "http_ingest" };
        addresses.push((name, bound));
        lock_listening(&shared).push(format!("{name}={bound}"));
        let task = tokio::spawn(accept_loop(listener, https, shared.clone(), slots.clone()));
        tasks.push(task.abort_handle());
    }
    tracing::info!(
        ?addresses,
        keys = shared.keys.len(),
        "http ingest listening"
    );
    Ok(HttpIngestHandle {
        addresses,
        shared,
        _tasks: AbortOnDrop(tasks),
    })
}

fn lock_listening(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<String>> {
    shared
        .stats
        .listening
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The idempotency window from the log's tail, read off the runtime.
async fn rebuild_keys(log: &Arc<Log>, config: &HttpIngestConfig) -> Keys {
    let (log, capacity, scan) = (
        log.clone(),
        config.idempotency_keys,
        config.idempotency_scan_records,
    );
    tokio::task::spawn_blocking(move || Keys::from_log(&log, capacity, scan))
        .await
        .unwrap_or_else(|_| Keys::new(capacity))
}

async fn accept_loop(
    listener: TcpListener,
    https: bool,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
) {
    let mut listener = Acceptor::new(listener, "http_ingest");
    let mut shutdown = shared.shutdown.clone();
    loop {
        // A free slot first: clients over max_connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.requested() => return,
        };
        let _ = socket.set_nodelay(true);
        // The certificate the last reload loaded.
        let tls = if https { shared.tls() } else { None };
        let shared = shared.clone();
        tokio::spawn(async move {
            Shared::count(&shared.stats.connections_accepted, 1);
            Shared::count(&shared.stats.connections_open, 1);
            connection(socket, peer, tls, &shared).await;
            shared
                .stats
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Arc<Shared>,
) {
    let Some(acceptor) = tls else {
        return serve(socket, peer, shared).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => serve(stream, peer, shared).await,
        Ok(Err(e)) => tracing::debug!(%peer, "http ingest tls handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "http ingest tls handshake timed out"),
    }
}

/// One connection's requests, until it closes, idles out or the gateway stops.
async fn serve<S>(stream: S, peer: SocketAddr, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let for_requests = shared.clone();
    let service = service_fn(move |req| {
        let shared = for_requests.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
    });
    let idle = Duration::from_millis(shared.config.idle_timeout_ms);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "http ingest connection ended: {e}");
            }
        }
        () = shutdown.requested() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// Which handler a path and method name.
enum Route {
    Append(String),
    Read(String, String),
    WrongMethod(&'static str),
    Unknown,
}

fn route(method: &Method, path: &str) -> Route {
    // The longest known path has six parts: no allocation per request.
    let mut parts = [""; 6];
    let mut n = 0;
    for part in path.trim_start_matches('/').split('/') {
        let Some(slot) = parts.get_mut(n) else {
            return Route::Unknown;
        };
        *slot = part;
        n += 1;
    }
    match &parts[..n] {
        ["v1", "topics", topic] if *method == Method::POST => Route::Append(topic.to_string()),
        ["v1", "topics", _] => Route::WrongMethod("POST"),
        ["v1", "topics", topic, "partitions", p, "records"] if *method == Method::GET => {
            Route::Read(topic.to_string(), p.to_string())
        }
        ["v1", "topics", _, "partitions", _, "records"] => Route::WrongMethod("GET"),
        _ => Route::Unknown,
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    Shared::count(&shared.stats.requests, 1);
    let route = route(req.method(), req.uri().path());
    match route {
        Route::Unknown => {
            shared.stats.refused("not_found");
            return reply::error(
                StatusCode::NOT_FOUND,
                "no such path: see /v1/topics/{topic}",
            );
        }
        Route::WrongMethod(allowed) => {
            shared.stats.refused("method");
            let mut r = reply::error(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}"));
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return r;
        }
        Route::Append(_) | Route::Read(..) => {}
    }
    let access = match auth::authenticate(shared, req.headers(), peer).await {
        Ok(access) => access,
        Err(reply) => return reply,
    };
    match route {
        Route::Append(topic) => post::post(shared, req, &topic, &access).await,
        Route::Read(topic, p) => read::get(shared, req, &topic, &p, &access).await,
        Route::WrongMethod(_) | Route::Unknown => {
            reply::error(StatusCode::NOT_FOUND, "no such path")
        }
    }
}
