//! The `[bridge]` section of the configuration file.
//!
//! ```toml
//! [[bridge.brokers]]
//! name = "site"                      # /status key, metrics label, `mqtt.bridge` header
//! address = "192.168.1.10:1883"
//! protocol = "3.1.1"                 # or "5"
//! client_id = "tidewell-gw17"        # stable: the broker keeps our session under it
//! username = "tidewell"
//! password_file = "/etc/tidewell/bridge-site.password"
//! subscriptions = [
//!   { filter = "zigbee2mqtt/#", qos = 1 },
//!   { filter = "shellies/+/relay/0", qos = 2 },
//! ]
//!
//! [bridge.brokers.tls]
//! ca_file = "/etc/tidewell/site-ca.pem"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// One link per broker; none: the bridge does not run.
    pub brokers: Vec<BrokerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[serde(rename = "3.1.1")]
    V4,
    #[serde(rename = "5")]
    V5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Names the link in `/status`, in the metrics' `broker` label and in
    /// each record's `mqtt.bridge` header; also the record key under a
    /// `client_id` route.
    pub name: String,
    /// `host:port` of the broker.
    pub address: String,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// The broker keeps the session (subscriptions, unacknowledged
    /// messages) under this id: keep it stable, and unique per gateway.
    pub client_id: String,
    pub username: Option<String>,
    /// The password, inline (prefer `password_file`).
    pub password: Option<String>,
    /// A file holding the password (one line; a trailing newline is cut).
    pub password_file: Option<PathBuf>,
    pub tls: Option<BridgeTls>,
    pub subscriptions: Vec<Subscription>,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u16,
    /// MQTT 5 session expiry: how long the broker keeps the session (and
    /// queues for it) while the link is down. 3.1.1 sessions never expire.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// Messages appended and not yet acknowledged to the broker, at most;
    /// reading stops at this (MQTT 5 also tells the broker as its receive
    /// maximum).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Largest packet accepted from the broker.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// First reconnect delay after a lost link; doubles (with jitter) up to
    /// `reconnect_max_ms`, and starts again once a link held a minute.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// First delay after the broker refused our credentials; doubles up to
    /// `auth_retry_max_ms`, so a wrong password is retried slowly.
    #[serde(default = "default_auth_retry_min_ms")]
    pub auth_retry_min_ms: u64,
    #[serde(default = "default_auth_retry_max_ms")]
    pub auth_retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// PEM CA certificates the broker's certificate must chain to.
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
    /// PEM client certificate chain and key, when the broker wants one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// MQTT topic filter (`+`, `#`).
    pub filter: String,
    /// 0, 1 or 2: the most the broker delivers this subscription with.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_protocol() -> Protocol {
    Protocol::V4
}
fn default_keep_alive_s() -> u16 {
    30
}
fn default_session_expiry_s() -> u32 {
    7 * 24 * 3600
}
fn default_max_inflight() -> u16 {
    64
}
fn default_max_packet_bytes() -> usize {
    256 << 10
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_auth_retry_min_ms() -> u64 {
    10_000
}
fn default_auth_retry_max_ms() -> u64 {
    600_000
}
fn default_ca_file() -> PathBuf {
    PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
}
fn default_qos() -> u8 {
    1
}

impl BrokerConfig {
    /// `(host, port)` of `address`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then_some(())?;
        Some((host.to_string(), port.parse().ok()?))
    }
}

impl BridgeConfig {
    /// Checks the section; each problem is `(key, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, broker) in self.brokers.iter().enumerate() {
            let key = |k: &str| format!("bridge.brokers[{i}].{k}");
            if self.brokers[..i].iter().any(|b| b.name == broker.name) {
                problems.push((key("name"), format!("{:?} is used twice", broker.name)));
            }
            if let Some((k, message)) = broker.problem() {
                problems.push((key(k), message));
            }
        }
        problems
    }
}

impl BrokerConfig {
    fn problem(&self) -> Option<(&'static str, String)> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid_name {
            return Some(("name", "use [A-Za-z0-9._-], at least one".into()));
        }
        if self.host_port().is_none() {
            return Some(("address", format!("{:?} is not host:port", self.address)));
        }
        if self.client_id.is_empty() || self.client_id.len() > 23 && self.protocol == Protocol::V4 {
            return Some((
                "client_id",
                "1 to 23 characters under 3.1.1 (a broker may refuse longer ones)".into(),
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Some((
                "password_file",
                "set password or password_file, not both".into(),
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Some(("username", "a password needs a username".into()));
        }
        self.limits_problem()
            .or_else(|| self.subscriptions_problem())
    }

    fn limits_problem(&self) -> Option<(&'static str, String)> {
        if self.max_inflight == 0 {
            return Some(("max_inflight", "must be at least 1".into()));
        }
        if self.keep_alive_s < 5 {
            return Some(("keep_alive_s", "must be at least 5".into()));
        }
        if self.max_packet_bytes < 1024 || self.max_packet_bytes > crate::log::MAX_APPEND_BYTES / 2
        {
            let most = crate::log::MAX_APPEND_BYTES / 2;
            return Some(("max_packet_bytes", format!("must be 1024..={most}")));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Some((
                "reconnect_min_ms",
                "must be at least 1 and at most reconnect_max_ms".into(),
            ));
        }
        if self.auth_retry_min_ms == 0 || self.auth_retry_min_ms > self.auth_retry_max_ms {
            return Some((
                "auth_retry_min_ms",
                "must be at least 1 and at most auth_retry_max_ms".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Some(("tls.key_file", "set cert_file and key_file together".into()));
            }
        }
        None
    }

    fn subscriptions_problem(&self) -> Option<(&'static str, String)> {
        if self.subscriptions.is_empty() {
            return Some(("subscriptions", "subscribe to at least one filter".into()));
        }
        for s in &self.subscriptions {
            if !rumqttd::protocol::valid_filter(&s.filter) || s.filter.starts_with("$share/") {
                return Some((
                    "subscriptions",
                    format!("invalid topic filter {:?}", s.filter),
                ));
            }
            if s.qos > 2 {
                return Some((
                    "subscriptions",
                    format!("qos {} of {:?}: use 0, 1 or 2", s.qos, s.filter),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(text: &str) -> BrokerConfig {
        let base = "name = \"b\"\naddress = \"127.0.0.1:1883\"\nclient_id = \"gw\"\nsubscriptions = [{ filter = \"a/#\" }]\n";
        toml::from_str(&format!("{base}{text}")).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_persistent() {
        let b = broker("");
        assert_eq!(b.problem(), None);
        assert_eq!(b.protocol, Protocol::V4);
        assert_eq!(b.subscriptions[0].qos, 1);
        assert_eq!(b.host_port(), Some(("127.0.0.1".into(), 1883)));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("password = \"x\"\n", "username"),
            ("max_inflight = 0\n", "max_inflight"),
            ("reconnect_min_ms = 90000\n", "reconnect_min_ms"),
            (
                "subscriptions = [{ filter = \"a/#/b\" }]\n",
                "subscriptions",
            ),
            (
                "subscriptions = [{ filter = \"a\", qos = 3 }]\n",
                "subscriptions",
            ),
        ];
        for (text, key) in cases {
            let b: BrokerConfig = if text.starts_with("subscriptions") {
                let base = "name = \"b\"\naddress = \"h:1\"\nclient_id = \"gw\"\n";
                toml::from_str(&format!("{base}{text}")).unwrap()
            } else {
                broker(text)
            };
            assert_eq!(b.problem().map(|p| p.0), Some(key), "{text}");
        }
        let mut b = broker("");
        b.address = "nohost".into();
        assert_eq!(b.problem().map(|p| p.0), Some("address"));
    }

    #[test]
    fn names_must_be_unique() {
        let config = BridgeConfig {
            brokers: vec![broker(""), broker("")],
        };
        assert_eq!(config.validate()[0].0, "bridge.brokers[1].name");
    }
}
