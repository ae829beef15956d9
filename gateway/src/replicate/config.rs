//! The `[upstream]` section: where the log is mirrored to, and how.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Upstream Kafka cluster and mirror rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `host:port[,host:port...]` of the cluster.
    pub bootstrap_servers: String,
    pub security: Security,
    pub compression: UpstreamCompression,
    /// Which local topics go where. Empty: every local topic to
    /// `{gateway_id}.{topic}`, same partition numbers.
    pub mirror: Vec<MirrorRule>,
    pub priority: Priority,
    /// Upstream bandwidth cap for metered links, in bytes per second on the
    /// wire: what the kernel sent on the broker connections, after
    /// compression, with every request, framing and TLS (not TCP/IP
    /// headers). At most one second's worth goes out in a burst.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Records sent and not yet acknowledged, per local partition.
    pub max_in_flight_records: usize,
    /// Bytes sent and not yet acknowledged, all partitions together. With
    /// the record cap this bounds librdkafka's queue: the log is the buffer.
    pub max_in_flight_bytes: u64,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    /// A record not acknowledged within this time fails and the session is
    /// rebuilt (0: librdkafka retries forever).
    pub message_timeout_ms: u64,
    /// One request without an answer for this long counts as a dead
    /// connection (half-open TCP): librdkafka closes it and reconnects.
    pub request_timeout_ms: u64,
    /// First delay before reconnecting or rebuilding the session, doubled
    /// per failure up to `backoff_max_ms`, with jitter.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Floor of the delay after errors that retrying soon will not fix
    /// (authorization, missing topic, too few partitions).
    pub slow_retry_ms: u64,
    /// How often the replication cursor is persisted.
    pub checkpoint_interval_ms: u64,
    /// Records read back from the end of each remote partition at start-up
    /// (and after a session is rebuilt) to skip what is already there.
    pub dedupe_tail_records: u64,
    /// Extra librdkafka properties, set last (for what has no key here).
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            bootstrap_servers: String::new(),
            security: Security::default(),
            compression: UpstreamCompression::Lz4,
            mirror: Vec::new(),
            priority: Priority::OldestFirst,
            bandwidth_bytes_per_s: None,
            max_in_flight_records: 20_000,
            max_in_flight_bytes: 8 << 20,
            linger_ms: 5,
            batch_bytes: 1 << 20,
            message_timeout_ms: 120_000,
            request_timeout_ms: 15_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            slow_retry_ms: 30_000,
            checkpoint_interval_ms: 1000,
            dedupe_tail_records: 50_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamCompression {
    None,
    Lz4,
    Zstd,
}

impl UpstreamCompression {
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            UpstreamCompression::None => "none",
            UpstreamCompression::Lz4 => "lz4",
            UpstreamCompression::Zstd => "zstd",
        }
    }
}

/// Which backlog goes first when the uplink returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Every partition drains strictly oldest record first (the default).
    OldestFirst,
    /// Partitions that are caught up (live data) are served before
    /// partitions with a backlog; inside a partition the order stays
    /// oldest first, because a remote partition must see one local
    /// partition's records in order.
    LiveFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// TLS and SASL toward the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    pub protocol: SecurityProtocol,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read the SASL password from this file instead (first line).
    pub password_file: Option<PathBuf>,
    /// CA bundle that signs the brokers' certificates (default: system store).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for clusters that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Security {
    /// What a session's credentials depend on: these settings and the
    /// contents of the files they name (which configuration management may
    /// rotate in place). A reload that changes it rebuilds the session.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{self:?}").hash(&mut h);
        let files = [
            &self.password_file,
            &self.ca_file,
            &self.cert_file,
            &self.key_file,
        ];
        for file in files.into_iter().flatten() {
            std::fs::read(file).ok().hash(&mut h);
        }
        h.finish()
    }
}

impl Default for Security {
    fn default() -> Self {
        Security {
            protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// How a local partition's records pick their remote partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Remote partition = local partition number.
    #[default]
    Same,
    /// Kafka's default partitioner (murmur2 of the key), so a device lands in
    /// the same remote partition whoever produces it; keyless records use
    /// the local partition number.
    Key,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRule {
    /// Local topic.
    pub local: String,
    /// Remote topic: a name, or a template with `{gateway_id}` and `{topic}`.
    #[serde(default = "default_template")]
    pub remote: String,
    #[serde(default)]
    pub partitioning: Partitioning,
    /// How upstream records say where they come from (see `shape`).
    #[serde(default)]
    pub provenance: super::shape::Provenance,
    /// `raw` (the default) or `json_envelope` (see `shape`).
    #[serde(default)]
    pub value_format: super::shape::ValueFormat,
    /// Which ingest headers go upstream: "all" (default), "none", or names
    /// (a trailing `*` matches a prefix).
    #[serde(default)]
    pub headers: super::shape::HeaderChoice,
    /// Live records wait up to this long to go out together, in fewer and
    /// larger (better compressed) requests, for metered links; a backlog of
    /// 5,000 records or more goes at once. 0: sent as they come.
    #[serde(default)]
    pub linger_ms: u64,
}

impl MirrorRule {
    /// Every local topic's rule when none is configured.
    pub fn default_for(local: &str) -> MirrorRule {
        MirrorRule {
            local: local.to_string(),
            remote: DEFAULT_TEMPLATE.to_string(),
            partitioning: Partitioning::Same,
            provenance: super::shape::Provenance::default(),
            value_format: super::shape::ValueFormat::default(),
            headers: super::shape::HeaderChoice::default(),
            linger_ms: 0,
        }
    }

    /// The record shape of this rule's remote records.
    pub fn shape(&self) -> super::shape::Shape {
        super::shape::Shape {
            provenance: self.provenance,
            value_format: self.value_format,
            headers: self.headers.clone(),
            implies_gateway: self.remote.contains("{gateway_id}"),
            implies_topic: self.remote.contains("{topic}"),
            linger: (self.linger_ms > 0).then(|| std::time::Duration::from_millis(self.linger_ms)),
        }
    }
}

pub const DEFAULT_TEMPLATE: &str = "{gateway_id}.{topic}";

fn default_template() -> String {
    DEFAULT_TEMPLATE.to_string()
}

/// Expands a remote topic template.
pub fn remote_topic(template: &str, gateway_id: &str, topic: &str) -> String {
    template
        .replace("{gateway_id}", gateway_id)
        .replace("{topic}", topic)
}

impl UpstreamConfig {
    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self, local_topics: &[&str]) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: &str| Err((format!("upstream.{key}"), msg.to_string()));
        if self.bootstrap_servers.trim().is_empty() {
            return bad("bootstrap_servers", "required (host:port[,host:port])");
        }
        for (i, rule) in self.mirror.iter().enumerate() {
            if let Err(msg) = rule.headers.validate() {
                return bad(&format!("mirror[{i}].headers"), &msg);
            }
            if rule.linger_ms > 60_000 {
                return bad(
                    &format!("mirror[{i}].linger_ms"),
                    "at most 60000 (a minute); latency grows with it",
                );
            }
            if !local_topics.contains(&rule.local.as_str()) {
                return bad(
                    "mirror.local",
                    &format!("{:?} is not a configured topic", rule.local),
                );
            }
            let example = remote_topic(&rule.remote, "gw", &rule.local);
            if !crate::log::config::valid_topic_name(&example) || example.contains('{') {
                return bad(
                    "mirror.remote",
                    &format!("{:?} does not expand to a Kafka topic name", rule.remote),
                );
            }
        }
        if self.max_in_flight_records == 0 || self.max_in_flight_bytes < 1024 {
            return bad(
                "max_in_flight_records",
                "must allow at least 1 record and 1 KiB",
            );
        }
        if self.bandwidth_bytes_per_s == Some(0) {
            return bad(
                "bandwidth_bytes_per_s",
                "must be at least 1 (omit it for no cap)",
            );
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return bad(
                "backoff_max_ms",
                "needs 0 < backoff_initial_ms <= backoff_max_ms",
            );
        }
        self.security.validate()
    }
}

impl Security {
    fn validate(&self) -> Result<(), (String, String)> {
        let sasl = matches!(
            self.protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        let err = |key: &str, msg: &str| Err((format!("upstream.security.{key}"), msg.to_string()));
        if sasl && self.sasl_mechanism.is_none() {
            return err(
                "sasl_mechanism",
                "required with a SASL protocol (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)",
            );
        }
        if !sasl && self.sasl_mechanism.is_some() {
            return err(
                "protocol",
                "sasl_mechanism needs protocol sasl_plaintext or sasl_ssl",
            );
        }
        if sasl && self.username.is_none() {
            return err("username", "required with SASL");
        }
        if sasl && self.password.is_none() == self.password_file.is_none() {
            return err("password", "set exactly one of password and password_file");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return err("cert_file", "cert_file and key_file go together");
        }
        Ok(())
    }
}

/// The gateway's identity upstream: `/etc/machine-id`, else the host name.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn default_gateway_id() -> String {
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "tidewell".to_string(),
    }
}
