//! The bridge: Tidewell as a client of an existing MQTT broker (Mosquitto
//! under Home Assistant or Zigbee2MQTT, say), subscribing and appending
//! what it receives through the MQTT listener's routes.
//!
//! # What "acknowledged" means
//!
//! rumqttc runs with manual acks: a PUBACK (QoS 1) or PUBREC (QoS 2) goes
//! back to the broker only after the append ticket of the publish resolved,
//! i.e. once the record is durable under its topic's fsync policy. The
//! session is persistent (a stable client id, `clean_session = false`, or
//! MQTT 5 `clean_start = false` with a session expiry), so whatever we had
//! not acknowledged when the link dropped or the gateway died is kept and
//! redelivered by the broker.
//!
//! # Shape
//!
//! Two tasks per broker joined by a bounded FIFO (`max_inflight`):
//!
//! ```text
//!  broker ──► link (link.rs): poll rumqttc, route, log.append() → ticket
//!                 │  FIFO of (ticket, packet id, connection), arrival order
//!                 ▼
//!             acker (acker.rs): await each ticket in order ──► PUBACK/PUBREC
//! ```
//!
//! Acks leave ahead of reads: one at a time through rumqttc's request queue
//! as a wake-up, the rest written into its buffer by the link once that one
//! is out (`acker.rs` says why). A stop writes the acks of everything
//! appended, then a DISCONNECT (dropping [`Bridge`] waits for it).
//!
//! # Redeliveries
//!
//! `inflight.rs` keeps, by packet id, what was appended and not finished; a
//! PUBLISH under a held id with the same content is acknowledged once the
//! first append is durable, never appended again. An ack is only sent on
//! the connection its publish came in on (`link::Shared::generation`): a
//! stale ack could otherwise reach the next connection, where the id may
//! name a new message. The README lists what can still duplicate.

mod acker;
mod client;
pub mod config;
mod inflight;
mod link;
mod observe;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub use config::BridgeConfig;
pub use observe::{BridgeStats, LinkStats};

use crate::ingest::mqtt::route::{Router, UnknownTopic};
use crate::ingest::mqtt::MqttConfig;
use crate::ingest::serial::AbortOnDrop;
use crate::ingest::{Context, Running, Shutdown, Source, Starting};
use config::BrokerConfig;

/// Why the bridge did not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge {broker:?}: {message}")]
    Config { broker: String, message: String },
    #[error("bridge {broker:?}: reading the password file {}: {source}", path.display())]
    Password {
        broker: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bridge: {0}")]
    Route(#[from] UnknownTopic),
}

struct BridgeSource {
    config: BridgeConfig,
    /// The listener's section: its routes and default topic are ours too.
    mqtt: MqttConfig,
}

impl BridgeConfig {
    /// The bridge, when a broker is configured.
    pub fn source(&self, mqtt: &MqttConfig) -> Option<Box<dyn Source>> {
        (!self.brokers.is_empty()).then(|| {
            Box::new(BridgeSource {
                config: self.clone(),
                mqtt: mqtt.clone(),
            }) as Box<dyn Source>
        })
    }
}

/// The running links. Dropping it stops them: each writes the acks of
/// what it appended and disconnects (at most `link::STOP_FLUSH`), then
/// what is left is aborted.
struct Bridge {
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Disconnected once every link task has ended.
    ended: std::sync::mpsc::Receiver<()>,
    _tasks: AbortOnDrop,
}

impl Running for Bridge {}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Blocks the dropping thread (the daemon's main thread, at a stop)
        // while the runtime's workers finish the links.
        let deadline = link::STOP_FLUSH + Duration::from_millis(500);
        let _ = self.ended.recv_timeout(deadline);
    }
}

impl Source for BridgeSource {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn start<'a>(self: Box<Self>, ctx: Context<'a>) -> Starting<'a> {
        Box::pin(async move {
            let router = Arc::new(Router::new(&self.mqtt, &ctx.log).map_err(BridgeError::from)?);
            let mut stats = BridgeStats::default();
            let mut tasks = Vec::new();
            let (stop_tx, stop) = Shutdown::new();
            let stop_tx = Arc::new(stop_tx);
            let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
            for broker in &self.config.brokers {
                let link_stats = Arc::new(LinkStats::new(&broker.name, &broker.address));
                stats.links.push(link_stats.clone());
                let shared = Arc::new(link::Shared {
                    broker: broker.clone(),
                    log: ctx.log.clone(),
                    router: router.clone(),
                    stats: link_stats,
                    inflight: Mutex::new(inflight::Inflight::default()),
                    acks: Mutex::new(acker::Acks::default()),
                    relink: AtomicBool::new(false),
                });
                let (client, events) = client::build(broker, password(broker)?)?;
                let (tx, rx) = mpsc::channel(usize::from(broker.max_inflight));
                let acker = tokio::spawn(acker::run(rx, shared.clone(), client.clone()));
                let link = link::Link::new(shared, client, tx);
                let (stop, ended) = (stop.clone(), ended_tx.clone());
                let poll = tokio::spawn(async move {
                    link.run(events, stop).await;
                    drop(ended);
                });
                tasks.extend([acker.abort_handle(), poll.abort_handle()]);
            }
            drop(ended_tx);
            let forward = tokio::spawn(forward_stop(ctx.shutdown, stop_tx.clone()));
            tasks.push(forward.abort_handle());
            ctx.registry.register(Arc::new(stats));
            Ok(Box::new(Bridge {
                stop: stop_tx,
                ended,
                _tasks: AbortOnDrop(tasks),
            }) as Box<dyn Running>)
        })
    }
}

/// The gateway's stop stops the links too (as dropping [`Bridge`] does).
async fn forward_stop(mut shutdown: Shutdown, stop: Arc<tokio::sync::watch::Sender<bool>>) {
    shutdown.requested().await;
    let _ = stop.send(true);
}

fn password(broker: &BrokerConfig) -> Result<Option<String>, BridgeError> {
    let Some(path) = &broker.password_file else {
        return Ok(broker.password.clone());
    };
    let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Password {
        broker: broker.name.clone(),
        path: path.clone(),
        source,
    })?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}
