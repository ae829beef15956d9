//! The gateway's lifecycle: start (the log, replication, every source, the
//! observability endpoint), readiness, the systemd watchdog, the stop
//! signals, and a stop that loses nothing acknowledged.
//!
//! `tidewell run` is [`Gateway::start`], [`Gateway::announce_ready`],
//! [`Gateway::wait_for_stop_signal`] and [`Gateway::stop`]; an in-process
//! test can call the same.

pub mod heartbeat;
#[cfg(feature = "test-hooks")]
mod hooks;
mod log_section;
pub mod reload;
mod signals;
pub mod systemd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ingest::{Context, Running, Shutdown, Source, SourceError};
use crate::log::{Log, OpenError, Storage};
use crate::observe::{HttpServer, Registry};
use crate::replicate::{Replicator, UpstreamError};
use log_section::LogSection;
use signals::StopSignals;

/// Every configured source, in start order. A new source is one entry here.
fn sources(config: &Config) -> impl Iterator<Item = Box<dyn Source>> {
    [
        config.serial.source(),
        config.modbus.source(),
        config.mqtt.source(),
        config.bridge.source(&config.mqtt),
        config.journal.source(),
        config.syslog.source(),
        config.http_ingest.source(&config.mqtt),
    ]
    .into_iter()
    .flatten()
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the log in {}: {source}", dir.display())]
    Log { dir: PathBuf, source: OpenError },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing the signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A started gateway.
pub struct Gateway {
    runtime: tokio::runtime::Runtime,
    log: Arc<Log>,
    replicator: Option<Replicator>,
    sources: Vec<Box<dyn Running>>,
    http: Option<HttpServer>,
    registry: Arc<Registry>,
    signals: Option<StopSignals>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The configuration in force (reloads update what they applied).
    config: Config,
    /// [`Security::fingerprint`](crate::replicate::config::Security::fingerprint)
    /// of the upstream credentials the session uses.
    upstream_credentials: Option<u64>,
}

impl Gateway {
    /// Opens the log on `storage`, starts replication (when configured), the
    /// runtime, every source and the observability endpoint.
    pub fn start(config: &Config, storage: Arc<dyn Storage>) -> Result<Gateway, StartError> {
        crate::net::raise_fd_limit();
        return_large_frees_to_the_os();
        let log =
            Log::open(storage.clone(), config.log_config()).map_err(|source| StartError::Log {
                dir: config.data_dir.clone(),
                source,
            })?;
        let log = Arc::new(log);
        let replicator = start_replicator(config, &log)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build()
            .map_err(StartError::Runtime)?;
        let signals = runtime
            .block_on(async { StopSignals::install() })
            .map_err(StartError::Signals)?;
        let mut registry = Registry::default();
        registry.register(Arc::new(LogSection(log.clone())));
        let (shutdown, stop_requested) = Shutdown::new();
        let mut running = Vec::new();
        for source in sources(config) {
            let ctx = Context {
                log: log.clone(),
                shutdown: stop_requested.clone(),
                registry: &mut registry,
            };
            let source_name = source.name();
            let started = runtime.block_on(source.start(ctx));
            running.push(started.map_err(|error| SourceError { source_name, error })?);
            tracing::debug!(source = source_name, "source started");
        }
        if let Some(replicator) = &replicator {
            registry.register(Arc::new(replicator.observer()));
        }
        let heartbeat_stats = Arc::new(heartbeat::HeartbeatStats::default());
        if config.heartbeat.enabled {
            registry.register(heartbeat_stats.clone());
        }
        let registry = Arc::new(registry);
        if config.heartbeat.enabled {
            let hb = heartbeat::Heartbeat {
                config: config.heartbeat.clone(),
                gateway_id: config.gateway_id(),
                clock: config.log.clock,
                data_dir: config.data_dir.clone(),
                storage: storage.clone(),
                log: log.clone(),
            };
            runtime.spawn(heartbeat::run(
                hb,
                registry.clone(),
                heartbeat_stats,
                stop_requested.clone(),
            ));
        }
        let http = runtime.block_on(start_http(config, registry.clone()));
        Ok(Gateway {
            runtime,
            log,
            replicator,
            sources: running,
            http,
            registry,
            signals: Some(signals),
            shutdown,
            config: config.clone(),
            upstream_credentials: config.upstream.as_ref().map(|u| u.security.fingerprint()),
        })
    }

    /// Hands changed upstream credentials to the replicator, which
    /// rebuilds its session with them.
    fn reload_upstream_credentials(&mut self) -> Option<String> {
        let (replicator, upstream) = (self.replicator.as_ref()?, self.config.upstream.as_ref()?);
        let now = upstream.security.fingerprint();
        if self.upstream_credentials == Some(now) {
            return None;
        }
        self.upstream_credentials = Some(now);
        replicator.reload_security(upstream.security.clone());
        Some("upstream.security (credentials, certificates): session rebuilt".into())
    }

    /// The bound addresses, in the `ready` line's order: each source's, then
    /// the endpoint's.
    pub fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut all: Vec<_> = self.sources.iter().flat_map(|s| s.addresses()).collect();
        all.extend(self.http.as_ref().map(|h| ("http", h.local_addr)));
        all
    }

    /// Marks the gateway ready: `/readyz` answers 200, systemd gets
    /// `READY=1` (and watchdog pings while healthy), and the `ready` line
    /// (which scripts and tests wait for) names the bound addresses.
    pub fn announce_ready(&self) {
        self.registry.set_ready();
        let mut line = String::from("tidewell: ready");
        for (name, addr) in self.addresses() {
            line.push_str(&format!(" {name}={addr}"));
        }
        eprintln!("{line}");
        if let Err(e) = systemd::notify("READY=1") {
            tracing::warn!("systemd notify failed: {e}");
        }
        if let Some(every) = systemd::watchdog_interval() {
            self.runtime.spawn(watchdog(every, self.registry.clone()));
        }
    }

    /// Blocks until SIGTERM or SIGINT; each SIGHUP meanwhile re-reads
    /// `config_path` ([`reload`]).
    pub fn wait_for_stop_signal(&mut self, config_path: Option<&Path>) {
        let Some(mut signals) = self.signals.take() else {
            return;
        };
        while let signals::Asked::Reload = self.runtime.block_on(signals.next()) {
            self.reload(config_path);
        }
    }

    /// Re-reads and applies the configuration; on failure nothing changes.
    /// systemd is told RELOADING=1, then READY=1, either way.
    pub fn reload(&mut self, config_path: Option<&Path>) {
        let _ = systemd::notify("RELOADING=1");
        tracing::info!("reload: re-reading the configuration");
        match reload::reload(config_path, &mut self.config, &self.log, &self.sources) {
            Ok(mut outcome) => {
                outcome.applied.extend(self.reload_upstream_credentials());
                for key in &outcome.restart_needed {
                    tracing::warn!(
                        "reload: {key} changed: needs a restart; the running value stays"
                    );
                }
                tracing::info!(applied = ?outcome.applied, "reload: done");
                eprintln!(
                    "tidewell: reloaded ({} applied, {} need a restart)",
                    outcome.applied.len(),
                    outcome.restart_needed.len()
                );
            }
            Err(e) => {
                tracing::error!("reload refused, nothing changed: {e}");
                eprintln!("tidewell: reload refused");
            }
        }
        let _ = systemd::notify("READY=1");
    }

    /// Stops intake, lets in-flight appends finish, syncs and closes the log.
    pub fn stop(self) {
        let _ = systemd::notify("STOPPING=1");
        tracing::info!("stopping: syncing the log");
        let _ = self.shutdown.send(true);
        drop(self.http);
        drop(self.sources);
        self.runtime.shutdown_timeout(Duration::from_secs(2));
        if let Some(replicator) = self.replicator {
            replicator.stop();
        }
        drop(self.registry); // the sections' views of the log; their tasks are gone
        match Arc::try_unwrap(self.log) {
            Ok(log) => log.close(),
            // A task still holds it; dropping the last handle closes it the same way.
            Err(_) => tracing::warn!("log still referenced at stop"),
        }
    }
}

/// The disk the log is opened on: the operating system's (with the
/// `test-hooks` feature, a faulty one when `TIDEWELL_FAULT_EIO` asks).
pub fn storage() -> Result<Arc<dyn Storage>, String> {
    #[cfg(feature = "test-hooks")]
    if let Some(faulty) = hooks::faulty_storage()? {
        return Ok(faulty);
    }
    Ok(Arc::new(crate::log::OsStorage))
}

/// glibc serves an allocation above its mmap threshold (128 KiB) with its
/// own mapping, but raises the threshold to the size of each such block
/// freed, up to 32 MiB: after the first argon2 check its 19 MiB blocks come
/// from per-thread heaps that keep them. Pinning the threshold keeps large
/// blocks in mappings that are returned to the OS when freed, so a burst of
/// password checks does not stay resident.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread of ours exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Starts replication when `[upstream]` is configured.
fn start_replicator(config: &Config, log: &Arc<Log>) -> Result<Option<Replicator>, StartError> {
    let Some(upstream) = &config.upstream else {
        tracing::info!(data_dir = %config.data_dir.display(), "log open; buffer-only mode (no upstream configured)");
        return Ok(None);
    };
    let gateway_id = config.gateway_id();
    tracing::info!(data_dir = %config.data_dir.display(), %gateway_id, servers = %upstream.bootstrap_servers, "log open; replicating upstream");
    Ok(Some(Replicator::start(
        log.clone(),
        upstream.clone(),
        &gateway_id,
    )?))
}

/// Starts the observability endpoint. It is never a reason to stop
/// ingesting: if its address is taken, the gateway runs without it and says so.
async fn start_http(config: &Config, registry: Arc<Registry>) -> Option<HttpServer> {
    if !config.http.enabled {
        return None;
    }
    match crate::observe::start(&config.http, registry).await {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::error!(listen = %config.http.listen, "HTTP endpoint off: cannot listen: {e}");
            None
        }
    }
}

/// Pings the systemd watchdog while the gateway is healthy. A log that
/// refuses writes stops the pings: systemd restarts the gateway, and
/// reopening the log recovers it.
async fn watchdog(every: Duration, registry: Arc<Registry>) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if registry.is_ready() {
            let _ = systemd::notify("WATCHDOG=1");
        } else {
            tracing::error!(
                "not healthy ({}); withholding the watchdog ping",
                registry.unhealthy().unwrap_or_default()
            );
        }
    }
}
