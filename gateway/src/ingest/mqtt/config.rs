//! The `[mqtt]` section of the configuration file.
//!
//! ```toml
//! [mqtt]
//! listen = "127.0.0.1:1883"        # port 0 picks a free port (printed in the ready line)
//! allow_anonymous = true           # refused on a non-loopback listener
//! max_payload_bytes = 262144
//! receive_maximum = 64
//! keep_alive_max_s = 300
//! max_connections = 4096
//! max_auth_checks = 0              # argon2 checks at once; 0 = one per core
//! max_auth_waiting = 1024          # CONNECTs waiting for a check; more get "server busy"
//! credential_cache_s = 600         # a verified credential is not re-checked for this long
//! max_session_expiry_s = 604800     # persistent sessions end this long after their client left
//! max_persistent_sessions = 1000    # more get CONNACK "quota exceeded" (3.1.1: 0x03)
//! session_checkpoint_ms = 5000      # session positions saved this often while they move
//! anonymous_publish_acl = ["devices/{client_id}/#"]  # default: every topic on loopback-only listeners
//! anonymous_subscribe_acl = ["#"]
//!
//! [mqtt.tls]
//! listen = "0.0.0.0:8883"
//! cert_file = "/etc/tidewell/server.pem"
//! key_file = "/etc/tidewell/server.key"
//! client_ca_file = "/etc/tidewell/clients-ca.pem"   # optional: require client certificates
//!
//! # MQTT over WebSockets (subprotocol `mqtt`), see ws.rs:
//! # ws_listen = "127.0.0.1:8080" under [mqtt]; [mqtt.wss] has the keys of [mqtt.tls]
//!
//! [[mqtt.users]]
//! username = "sensor-17"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."  # `tidewell mqtt hash-password`
//! publish_acl = ["devices/{client_id}/#"]
//!
//! [[mqtt.routes]]
//! filter = "devices/+/telemetry"
//! topic = "ingest"
//! key = "segment:1"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::acl::valid_acl_pattern;
use super::route::KeySpec;
use crate::log::DEFAULT_TOPIC;

/// The ACL a client gets when the configuration names none: its own subtree.
pub const DEFAULT_PUBLISH_ACL: &str = "devices/{client_id}/#";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Set to false to run without any MQTT listener.
    pub enabled: bool,
    /// Plain TCP listener. Anything but a loopback address requires
    /// authentication (`allow_anonymous = false` and at least one user).
    pub listen: SocketAddr,
    /// Optional TLS listener (rustls).
    pub tls: Option<TlsConfig>,
    /// Optional MQTT over WebSocket listener (subprotocol `mqtt`, see `ws.rs`).
    pub ws_listen: Option<SocketAddr>,
    /// Optional MQTT over secure WebSocket listener (keys as for `tls`).
    pub wss: Option<TlsConfig>,
    /// Clients without username may connect (loopback listeners, or TLS
    /// listeners that verify client certificates, only).
    pub allow_anonymous: bool,
    /// Topic patterns anonymous clients may publish to; `{client_id}` and
    /// `{username}` are substituted, then `+` and `#` match as in MQTT.
    /// Unset: every topic while all listeners are loopback (a new user's
    /// first `mosquitto_pub -t sensors/temp` works), else
    /// `devices/{client_id}/#`. Resolved by [`MqttConfig::resolve`].
    #[serde(rename = "anonymous_publish_acl")]
    pub anonymous_publish_acl_set: Option<Vec<String>>,
    /// What anonymous clients may publish to, once resolved.
    #[serde(skip)]
    pub anonymous_publish_acl: Vec<String>,
    /// Topic filters anonymous clients may subscribe within.
    pub anonymous_subscribe_acl: Vec<String>,
    pub users: Vec<UserConfig>,
    /// First matching route wins; a publish matching none goes to
    /// `default_topic`, keyed by its MQTT topic.
    pub routes: Vec<RouteConfig>,
    /// Log topic for publishes that match no route.
    pub default_topic: String,
    /// Largest PUBLISH payload accepted; larger ones are refused with 0x95
    /// (MQTT 5) or a disconnect (3.1.1). Also bounds every packet we read.
    pub max_payload_bytes: usize,
    /// QoS 1/2 publishes a client may have unacknowledged (and publishes of
    /// any QoS we hold per connection): reading stops when it is reached, so a
    /// fast client cannot grow our memory.
    pub receive_maximum: u16,
    /// Keep-alive enforced on clients asking for none or a longer one, so a
    /// half-open TCP connection is dropped within 1.5 times this.
    pub keep_alive_max_s: u16,
    /// A new connection must send CONNECT within this (slow-loris guard).
    pub connect_timeout_ms: u64,
    /// Connections beyond this are closed at accept. Also capped by the
    /// descriptor limit, so connections cannot take the descriptors the log
    /// needs (see `mqtt/mod.rs`).
    pub max_connections: usize,
    /// Password checks (argon2: tens of ms of CPU, 19 MiB each) run at once;
    /// 0 = one per core.
    pub max_auth_checks: usize,
    /// Connections that may wait for a password check; more are refused with
    /// "server unavailable" (3.1.1) or "server busy" (MQTT 5).
    pub max_auth_waiting: usize,
    /// A credential verified in the last this many seconds is not checked
    /// again (0: check every CONNECT). A changed or removed user is never
    /// let in by it.
    pub credential_cache_s: u64,
    /// Longest a persistent session (3.1.1 `clean_session = 0`, MQTT 5
    /// session expiry) outlives its connection; 3.1.1 sessions get this.
    pub max_session_expiry_s: u32,
    /// Persistent sessions kept at once; a new one beyond this is refused.
    pub max_persistent_sessions: usize,
    /// How often moving session positions are saved (after a crash, QoS 1
    /// messages delivered since are delivered again; subscriptions and QoS
    /// 2 state are saved before they are acknowledged).
    pub session_checkpoint_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain of the server, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, TLS clients must present a certificate
    /// signed by one of them; such clients count as authenticated and may
    /// connect without username (with the anonymous ACLs).
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    /// Argon2 PHC string (`tidewell mqtt hash-password`); never the password.
    pub password_hash: String,
    /// Topic patterns this user may publish to (`{client_id}`, `{username}`
    /// substituted).
    #[serde(default = "default_publish_acl")]
    pub publish_acl: Vec<String>,
    /// Topic filters this user may subscribe within (default: none).
    #[serde(default)]
    pub subscribe_acl: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter (`+`, `#`).
    pub filter: String,
    /// Log topic the matching publishes are appended to.
    pub topic: String,
    /// Record key, which picks the partition (per-key order is kept):
    /// `topic` (the whole MQTT topic, default), `client_id`, `none`, or
    /// `segment:N` (the N-th level of the MQTT topic, from 0).
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_publish_acl() -> Vec<String> {
    vec![DEFAULT_PUBLISH_ACL.to_string()]
}

fn default_key() -> String {
    "topic".to_string()
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls: None,
            ws_listen: None,
            wss: None,
            allow_anonymous: true,
            anonymous_publish_acl_set: None,
            anonymous_publish_acl: default_publish_acl(),
            anonymous_subscribe_acl: vec!["#".to_string()],
            users: Vec::new(),
            routes: Vec::new(),
            default_topic: DEFAULT_TOPIC.to_string(),
            max_payload_bytes: 256 << 10,
            receive_maximum: 64,
            keep_alive_max_s: 300,
            connect_timeout_ms: 10_000,
            max_connections: 4096,
            max_auth_checks: 0,
            max_auth_waiting: 1024,
            credential_cache_s: 600,
            max_session_expiry_s: 7 * 24 * 3600,
            max_persistent_sessions: 1000,
            session_checkpoint_ms: 5000,
        }
    }
}

impl MqttConfig {
    /// Checks the section; the error is `(key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("mqtt.{key}"), message));
        if !self.enabled {
            return Ok(());
        }
        if let Some(problem) = self
            .anonymous_exposure()
            .or_else(|| super::ws::anonymous_exposure(self))
        {
            return bad("allow_anonymous", problem);
        }
        if !self.allow_anonymous && self.users.is_empty() && !self.client_certs() {
            return bad(
                "users",
                "anonymous access is off and no user is configured: nobody could connect".into(),
            );
        }
        if self.receive_maximum == 0 {
            return bad("receive_maximum", "must be at least 1".into());
        }
        if self.keep_alive_max_s == 0 {
            return bad("keep_alive_max_s", "must be at least 1".into());
        }
        if self.session_checkpoint_ms == 0 {
            return bad("session_checkpoint_ms", "must be at least 1".into());
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > crate::log::MAX_APPEND_BYTES / 2
        {
            return bad(
                "max_payload_bytes",
                format!("must be 1..={}", crate::log::MAX_APPEND_BYTES / 2),
            );
        }
        self.validate_lists()
    }

    fn validate_lists(&self) -> Result<(), (String, String)> {
        let acls = self
            .users
            .iter()
            .flat_map(|u| u.publish_acl.iter().chain(&u.subscribe_acl))
            .chain(self.anonymous_publish_acl_set.iter().flatten())
            .chain(&self.anonymous_subscribe_acl);
        for pattern in acls {
            if !valid_acl_pattern(pattern) {
                return Err((
                    "mqtt acl".into(),
                    format!("invalid topic pattern {pattern:?}"),
                ));
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            if let Err(e) = argon2::PasswordHash::new(&user.password_hash) {
                return Err((
                    format!("mqtt.users[{i}].password_hash"),
                    format!("not an argon2 PHC string ({e}); make one with `tidewell mqtt hash-password`"),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !valid_acl_pattern(&route.filter) {
                return Err((
                    format!("mqtt.routes[{i}].filter"),
                    "invalid topic filter".into(),
                ));
            }
            if let Err(e) = route.key.parse::<KeySpec>() {
                return Err((format!("mqtt.routes[{i}].key"), e));
            }
        }
        Ok(())
    }

    /// Fills in `anonymous_publish_acl`; says whether it was widened to
    /// every topic because nothing was configured and every listener is
    /// loopback (the embedded defaults).
    pub fn resolve(&mut self) -> bool {
        let loopback_only = self.listen.ip().is_loopback()
            && [&self.tls, &self.wss]
                .into_iter()
                .flatten()
                .all(|t| t.listen.ip().is_loopback())
            && self.ws_listen.is_none_or(|a| a.ip().is_loopback());
        let (acl, open) = match &self.anonymous_publish_acl_set {
            Some(acl) => (acl.clone(), false),
            None if loopback_only => (vec!["#".to_string()], true),
            None => (default_publish_acl(), false),
        };
        self.anonymous_publish_acl = acl;
        open && self.allow_anonymous
    }

    /// Why anonymous access would be reachable from the network, if it would.
    fn anonymous_exposure(&self) -> Option<String> {
        if !self.allow_anonymous {
            return None;
        }
        if !self.listen.ip().is_loopback() {
            return Some(format!(
                "listen = {} is not a loopback address: set allow_anonymous = false and configure [[mqtt.users]]",
                self.listen
            ));
        }
        match &self.tls {
            Some(tls) if !tls.listen.ip().is_loopback() && tls.client_ca_file.is_none() => Some(format!(
                "tls.listen = {} is not a loopback address: set allow_anonymous = false and configure [[mqtt.users]], or require client certificates (tls.client_ca_file)",
                tls.listen
            )),
            _ => None,
        }
    }

    fn client_certs(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_clients_may_publish_anywhere_only_on_unconfigured_loopback() {
        let mut loopback = MqttConfig::default();
        assert!(loopback.resolve());
        assert_eq!(loopback.anonymous_publish_acl, ["#"]);
        let mut configured = MqttConfig {
            anonymous_publish_acl_set: Some(vec!["sensors/#".into()]),
            ..MqttConfig::default()
        };
        assert!(!configured.resolve());
        assert_eq!(configured.anonymous_publish_acl, ["sensors/#"]);
        let mut network = MqttConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            allow_anonymous: false,
            ..MqttConfig::default()
        };
        assert!(!network.resolve());
        assert_eq!(network.anonymous_publish_acl, [DEFAULT_PUBLISH_ACL]);
    }
}
