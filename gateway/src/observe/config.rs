//! The `[http]` section: where the observability endpoint listens.
//!
//! ```toml
//! [http]
//! listen = "127.0.0.1:9464"   # port 0 picks a free port (printed in the ready line)
//! ```

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Set to false to run without the endpoint.
    pub enabled: bool,
    /// Loopback by default: the endpoint has no authentication. If the
    /// address is taken the gateway logs an error and runs without the
    /// endpoint: observability never stops ingest.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}
