//! The `[http_ingest]` section of the configuration file (`[http]` is the
//! observability endpoint).
//!
//! ```toml
//! [http_ingest]
//! enabled = true
//! listen = "127.0.0.1:8180"          # non-loopback needs allow_anonymous = false
//! allow_anonymous = true             # loopback clients without credentials
//! anonymous_publish_acl = ["#"]      # log topics they may POST to
//! anonymous_read_acl = ["#"]         # log topics they may read back
//! max_body_bytes = 1048576           # larger requests get 413 before the body is read
//! max_connections = 256
//! idempotency_keys = 16384           # keys remembered (the newest)
//! idempotency_scan_records = 262144  # tail of each partition rescanned for keys at start
//!
//! [http_ingest.tls]                  # optional HTTPS listener (same files as [mqtt.tls])
//! listen = "0.0.0.0:8443"
//! cert_file = "/etc/tidewell/server.pem"
//! key_file = "/etc/tidewell/server.key"
//! ```
//!
//! Users, their argon2 hashes and their ACLs are those of `[[mqtt.users]]`:
//! `publish_acl` decides which log topics a user may POST to, `subscribe_acl`
//! which it may read back (patterns are matched against the log topic name;
//! `{client_id}` and `{username}` both stand for the username).

use std::net::SocketAddr;

use serde::Deserialize;

use crate::ingest::mqtt::config::TlsConfig;
use crate::log::MAX_APPEND_BYTES;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpIngestConfig {
    pub enabled: bool,
    /// Plain HTTP listener; anything but loopback needs `allow_anonymous = false`.
    pub listen: SocketAddr,
    /// An HTTPS listener besides the plain one.
    pub tls: Option<TlsConfig>,
    /// Requests without credentials are served (with the anonymous ACLs);
    /// only allowed on loopback listeners.
    pub allow_anonymous: bool,
    pub anonymous_publish_acl: Vec<String>,
    pub anonymous_read_acl: Vec<String>,
    /// Largest request body; a larger one is answered 413 before it is read.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Idempotency keys remembered in memory, the newest kept.
    pub idempotency_keys: usize,
    /// At start, keys are rebuilt from this many newest records of every
    /// partition.
    pub idempotency_scan_records: u64,
    /// A connection idle this long between requests is closed.
    pub idle_timeout_ms: u64,
    /// Longest `wait_ms` a read may ask for.
    pub max_wait_ms: u64,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        HttpIngestConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8180)),
            tls: None,
            allow_anonymous: true,
            anonymous_publish_acl: vec!["#".into()],
            anonymous_read_acl: vec!["#".into()],
            max_body_bytes: 1 << 20,
            max_connections: 256,
            idempotency_keys: 16384,
            idempotency_scan_records: 262_144,
            idle_timeout_ms: 60_000,
            max_wait_ms: 60_000,
        }
    }
}

impl HttpIngestConfig {
    /// Checks what the types cannot: returns (key path, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        let key = |field: &str| format!("http_ingest.{field}");
        if self.allow_anonymous {
            let open = [Some(self.listen), self.tls.as_ref().map(|t| t.listen)]
                .into_iter()
                .flatten()
                .find(|a| !a.ip().is_loopback());
            if let Some(addr) = open {
                return Err((
                    key("allow_anonymous"),
                    format!("{addr} is not a loopback address: set allow_anonymous = false and configure [[mqtt.users]]"),
                ));
            }
        }
        let patterns = self
            .anonymous_publish_acl
            .iter()
            .chain(&self.anonymous_read_acl);
        if let Some(bad) = patterns
            .into_iter()
            .find(|p| !crate::ingest::mqtt::acl::valid_acl_pattern(p))
        {
            return Err((
                key("anonymous_publish_acl"),
                format!("{bad:?} is not a valid topic pattern"),
            ));
        }
        // Headroom for the framing the log counts per record.
        let most = MAX_APPEND_BYTES / 2;
        if self.max_body_bytes == 0 || self.max_body_bytes > most {
            return Err((key("max_body_bytes"), format!("must be 1..={most}")));
        }
        for (name, value) in [
            ("max_connections", self.max_connections),
            ("idempotency_keys", self.idempotency_keys),
        ] {
            if value == 0 {
                return Err((key(name), "must be positive".into()));
            }
        }
        Ok(())
    }
}
