//! The `[syslog]` section of the configuration file.
//!
//! ```toml
//! [topics.syslog]
//! retention_bytes = 134217728
//!
//! [syslog]
//! enabled = true
//! udp = "0.0.0.0:514"
//! tcp = "0.0.0.0:514"
//! unix = "/run/tidewell/syslog.sock"
//! allowed_peers = ["192.168.10.0/24"]   # required for a non-loopback bind
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    pub enabled: bool,
    pub topic: String,
    /// UDP listener (RFC 5426); none when absent.
    pub udp: Option<SocketAddr>,
    /// TCP listener (RFC 6587: octet counting or newline framing, detected
    /// per message); none when absent.
    pub tcp: Option<SocketAddr>,
    /// Unix datagram socket a local rsyslog or busybox syslogd forwards to.
    pub unix: Option<PathBuf>,
    /// Networks (CIDR, or single addresses) allowed to send over UDP and
    /// TCP; others are dropped and counted. Required for a non-loopback bind.
    pub allowed_peers: Vec<String>,
    /// Longest message kept; longer ones are cut here and counted.
    pub max_message_bytes: usize,
    /// TCP connections served at once; more are refused and counted.
    pub max_connections: usize,
    /// Messages read but not yet handed to the log; past it UDP and unix
    /// datagrams are dropped and counted, TCP senders wait.
    pub queue_messages: usize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            enabled: false,
            topic: "syslog".into(),
            udp: None,
            tcp: None,
            unix: None,
            allowed_peers: Vec::new(),
            max_message_bytes: 16 << 10,
            max_connections: 64,
            queue_messages: 4096,
        }
    }
}

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// IPv4 networks are kept as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    net: u128,
    prefix: u32,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u32>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let (net, max, offset) = match addr {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 32, 96),
            IpAddr::V6(v6) => (u128::from(v6), 128, 0),
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        let prefix = prefix + offset;
        Some(Cidr {
            net: net & mask(prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(u128::from(v6), |v4| u128::from(v4.to_ipv6_mapped())),
        };
        ip & mask(self.prefix) == self.net
    }
}

fn mask(prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl SyslogConfig {
    pub fn peers(&self) -> Vec<Cidr> {
        self.allowed_peers
            .iter()
            .filter_map(|p| Cidr::parse(p))
            .collect()
    }

    /// Checks what the types cannot: returns (key path, problem).
    pub fn validate(&self, topics: &[&str]) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        let key = |field: &str| format!("syslog.{field}");
        if !topics.contains(&self.topic.as_str()) {
            return Err((
                key("topic"),
                format!("no topic {:?} is configured under [topics]", self.topic),
            ));
        }
        if self.udp.is_none() && self.tcp.is_none() && self.unix.is_none() {
            return Err((
                key("udp"),
                "enabled, but no udp, tcp or unix listener".into(),
            ));
        }
        if let Some(bad) = self.allowed_peers.iter().find(|p| Cidr::parse(p).is_none()) {
            return Err((
                key("allowed_peers"),
                format!("{bad:?} is not an address or CIDR network"),
            ));
        }
        let open = [("udp", self.udp), ("tcp", self.tcp)]
            .into_iter()
            .find(|(_, a)| a.is_some_and(|a| !a.ip().is_loopback()));
        if let (Some((name, _)), true) = (open, self.allowed_peers.is_empty()) {
            return Err((
                key(name),
                "syslog has no authentication: a non-loopback listener needs allowed_peers (e.g. [\"192.168.1.0/24\"])".into(),
            ));
        }
        for (name, value) in [
            ("max_message_bytes", self.max_message_bytes),
            ("max_connections", self.max_connections),
            ("queue_messages", self.queue_messages),
        ] {
            if value == 0 {
                return Err((key(name), "must be positive".into()));
            }
        }
        if self.max_message_bytes > 1 << 20 {
            return Err((key("max_message_bytes"), "at most 1048576".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_networks_contain_their_addresses_in_both_families() {
        let lan = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(lan.contains("192.168.1.77".parse().unwrap()));
        assert!(lan.contains("::ffff:192.168.1.77".parse().unwrap()));
        assert!(!lan.contains("192.168.2.1".parse().unwrap()));
        let one = Cidr::parse("10.0.0.5").unwrap();
        assert!(
            one.contains("10.0.0.5".parse().unwrap()) && !one.contains("10.0.0.6".parse().unwrap())
        );
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(
            v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap())
        );
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense"), None);
    }
}
