//! The settings a reload (SIGHUP) may change while connections stay up:
//! users, password hashes, ACLs and anonymous access (read at each
//! CONNECT), the routes (read at each publish) and the TLS certificates and
//! keys of `[mqtt.tls]` and `[mqtt.wss]` (read at each TLS accept). Each is an `Arc` swapped whole, so a
//! connection sees the old or the new settings, never a mix.
//!
//! A connection's ACL is fixed at CONNECT. A reload that removes a user or
//! changes its hash or ACLs closes that user's connections (MQTT 5:
//! DISCONNECT 0x8E), so its next CONNECT meets the new settings; the
//! connections of unchanged users are not touched.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::config::MqttConfig;
use super::error::StartError;
use super::route::{Router, UnknownTopic};
use crate::log::Log;

/// The swappable part of the listener's settings.
pub struct Live {
    auth: RwLock<Arc<MqttConfig>>,
    router: RwLock<Arc<Router>>,
    tls: RwLock<Option<TlsAcceptor>>,
    /// The same for `[mqtt.wss]`.
    wss: RwLock<Option<TlsAcceptor>>,
    /// Open connections by number.
    sessions: Mutex<HashMap<u64, Watch>>,
}

/// An open connection's user, and the signal that closes it.
type Watch = (Option<String>, Arc<Notify>);

/// Why a reload of the MQTT settings was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Route(#[from] UnknownTopic),
    #[error(transparent)]
    Tls(#[from] StartError),
}

/// Unregisters its connection when dropped.
pub struct Watched<'a>(&'a Live, u64);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        lock(&self.0.sessions).remove(&self.1);
    }
}

impl Live {
    pub fn new(
        config: &MqttConfig,
        router: Router,
        tls: Option<TlsAcceptor>,
        wss: Option<TlsAcceptor>,
    ) -> Live {
        Live {
            auth: RwLock::new(Arc::new(config.clone())),
            router: RwLock::new(Arc::new(router)),
            tls: RwLock::new(tls),
            wss: RwLock::new(wss),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The settings CONNECT is checked against (users, anonymous access).
    pub fn auth(&self) -> Arc<MqttConfig> {
        read(&self.auth).clone()
    }

    pub fn router(&self) -> Arc<Router> {
        read(&self.router).clone()
    }

    /// The acceptor for a new TLS connection.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        read(&self.tls).clone()
    }

    /// The acceptor for a new `wss` connection.
    pub fn wss(&self) -> Option<TlsAcceptor> {
        read(&self.wss).clone()
    }

    /// Registers an authenticated connection, so a reload that revokes or
    /// changes its user can close it.
    pub fn watch(&self, conn: u64, username: Option<&str>, kick: Arc<Notify>) -> Watched<'_> {
        lock(&self.sessions).insert(conn, (username.map(String::from), kick));
        Watched(self, conn)
    }

    /// Applies `new`: everything is built first (routes against the log,
    /// the TLS files re-read even when their paths are unchanged, so a
    /// certificate renewed in place is picked up), then swapped. Returns
    /// what changed, for the log.
    pub fn apply(&self, new: &MqttConfig, log: &Log) -> Result<Vec<String>, LiveError> {
        let mut new = new.clone();
        new.resolve();
        let new = &new;
        let router = Router::new(new, log)?;
        let tls = match (&new.tls, self.tls().is_some()) {
            (Some(tls), true) => Some(TlsAcceptor::from(super::tls::server_config(tls)?)),
            _ => None,
        };
        let wss = match (&new.wss, self.wss().is_some()) {
            (Some(wss), true) => Some(TlsAcceptor::from(super::tls::server_config(wss)?)),
            _ => None,
        };
        let old = self.auth();
        let mut changes = Vec::new();
        let revoked = changed_users(&old, new);
        if !revoked.is_empty() {
            changes.push(format!("mqtt users changed or removed: {revoked:?}"));
        }
        if format!("{:?}", old.routes) != format!("{:?}", new.routes)
            || old.default_topic != new.default_topic
        {
            changes.push("mqtt routes".into());
        }
        if let Some(tls) = tls {
            *write(&self.tls) = Some(tls);
            changes.push("mqtt tls certificate and key (new connections)".into());
        }
        if let Some(wss) = wss {
            *write(&self.wss) = Some(wss);
            changes.push("mqtt wss certificate and key (new connections)".into());
        }
        *write(&self.router) = Arc::new(router);
        *write(&self.auth) = Arc::new(new.clone());
        let closed = self.close_sessions_of(&revoked);
        if closed > 0 {
            changes.push(format!("closed {closed} connection(s) of changed users"));
        }
        Ok(changes)
    }

    fn close_sessions_of(&self, users: &BTreeSet<Option<String>>) -> usize {
        let sessions = lock(&self.sessions);
        let mut closed = 0;
        for (user, kick) in sessions.values() {
            if users.contains(user) {
                kick.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Users removed or changed in any way (hash, ACLs); `None` stands for the
/// anonymous clients, when their access or ACLs changed.
fn changed_users(old: &MqttConfig, new: &MqttConfig) -> BTreeSet<Option<String>> {
    let entry = |c: &MqttConfig, name: &str| {
        c.users
            .iter()
            .find(|u| u.username == name)
            .map(|u| format!("{u:?}"))
    };
    let mut out: BTreeSet<Option<String>> = old
        .users
        .iter()
        .filter(|u| entry(new, &u.username) != Some(format!("{u:?}")))
        .map(|u| Some(u.username.clone()))
        .collect();
    let anonymous = |c: &MqttConfig| {
        (
            c.allow_anonymous,
            c.anonymous_publish_acl.clone(),
            c.anonymous_subscribe_acl.clone(),
        )
    };
    if anonymous(old) != anonymous(new) {
        out.insert(None);
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
