//! Reload on SIGHUP (`systemctl reload tidewell`): re-read the file, check
//! it as `tidewell config check` does, and apply what can change while
//! running; a file that fails the check changes nothing.
//!
//! Applied at once: the log level (`log_level`), each topic's
//! `retention_bytes`, `retention_ms` and `when_full` (the log writer runs
//! retention with them right away), and what each source's
//! [`Running::reload`](crate::ingest::Running::reload) takes (MQTT: users,
//! hashes, ACLs, anonymous access, routes, the TLS certificate and key for
//! new connections; the same for `[mqtt.wss]`), HTTP ingest's users,
//! ACLs, anonymous access and HTTPS certificate, and the upstream credentials and certificates
//! (`[upstream.security]`, or a file it names that changed: the session is
//! rebuilt with them). Everything else needs a restart: such changes are
//! named in the log, and the running values stay.

use std::path::Path;
use std::sync::OnceLock;

use crate::config::Config;
use crate::ingest::Running;
use crate::log::Log;

type FilterReloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<FilterReloader> = OnceLock::new();

/// Installed by the binary's logging set-up: replaces the log filter.
pub fn set_log_filter_reloader(reload: FilterReloader) {
    let _ = LOG_FILTER.set(reload);
}

/// Applies `log_level` (when set) to the running log filter.
pub fn apply_log_level(config: &Config) -> Result<bool, String> {
    match (&config.log_level, LOG_FILTER.get()) {
        (Some(level), Some(reload)) => reload(level).map(|()| true),
        _ => Ok(false),
    }
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<String>,
    /// Changed keys that keep their running values until a restart.
    pub restart_needed: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to re-read (started on the embedded defaults)")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Source(String),
    #[error("applying the topic limits: {0}")]
    Log(#[from] crate::log::AppendError),
}

/// Checks `path` and applies it over `running`; on success `running` holds
/// the new configuration, restart-only keys kept at their running values.
pub fn reload(
    path: Option<&Path>,
    running: &mut Config,
    log: &Log,
    sources: &[Box<dyn Running>],
) -> Result<Outcome, ReloadError> {
    let new = Config::load(path.ok_or(ReloadError::NoFile)?)?;
    let mut outcome = Outcome {
        restart_needed: restart_needed(running, &new),
        ..Outcome::default()
    };
    for source in sources {
        outcome
            .applied
            .extend(source.reload(&new).map_err(ReloadError::Source)?);
    }
    for (name, topic) in &new.topics {
        if log.set_limits(name, topic.limits())? {
            outcome
                .applied
                .push(format!("topics.{name}: quota, age limit, when_full"));
        }
    }
    if new.log_level != running.log_level {
        match apply_log_level(&new) {
            Ok(true) => outcome.applied.push("log_level".into()),
            Ok(false) => outcome
                .restart_needed
                .push("log_level (unset: TIDEWELL_LOG applies at start)".into()),
            Err(e) => outcome.restart_needed.push(format!("log_level: {e}")),
        }
    }
    adopt(running, new);
    Ok(outcome)
}

/// Keeps what was applied from `new`, and the running values of the rest.
fn adopt(running: &mut Config, new: Config) {
    let mut topics = running.topics.clone();
    for (name, topic) in &mut topics {
        if let Some(t) = new.topics.get(name) {
            topic.retention_bytes = t.retention_bytes;
            topic.retention_ms = t.retention_ms;
            topic.when_full = t.when_full;
        }
    }
    let mut mqtt = running.mqtt.clone();
    mqtt.users = new.mqtt.users.clone();
    mqtt.allow_anonymous = new.mqtt.allow_anonymous;
    mqtt.anonymous_publish_acl = new.mqtt.anonymous_publish_acl.clone();
    mqtt.anonymous_subscribe_acl = new.mqtt.anonymous_subscribe_acl.clone();
    mqtt.routes = new.mqtt.routes.clone();
    mqtt.default_topic = new.mqtt.default_topic.clone();
    for (tls, new_tls) in [
        (&mut mqtt.tls, &new.mqtt.tls),
        (&mut mqtt.wss, &new.mqtt.wss),
    ] {
        if let (Some(tls), Some(new_tls)) = (tls, new_tls) {
            tls.cert_file = new_tls.cert_file.clone();
            tls.key_file = new_tls.key_file.clone();
            tls.client_ca_file = new_tls.client_ca_file.clone();
        }
    }
    let mut http = running.http_ingest.clone();
    http.allow_anonymous = new.http_ingest.allow_anonymous;
    http.anonymous_publish_acl = new.http_ingest.anonymous_publish_acl.clone();
    http.anonymous_read_acl = new.http_ingest.anonymous_read_acl.clone();
    if let (Some(tls), Some(new_tls)) = (&mut http.tls, &new.http_ingest.tls) {
        tls.cert_file = new_tls.cert_file.clone();
        tls.key_file = new_tls.key_file.clone();
        tls.client_ca_file = new_tls.client_ca_file.clone();
    }
    running.http_ingest = http;
    if let (Some(up), Some(new_up)) = (&mut running.upstream, &new.upstream) {
        up.security = new_up.security.clone();
    }
    running.topics = topics;
    running.mqtt = mqtt;
    running.log_level = new.log_level;
}

/// The keys that differ between `running` and `new` and that only a
/// restart applies. Compared through `Debug`, with the reloadable keys of
/// `new` first set to the running values, so that whatever remains is a
/// restart-only change.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut probe = new.clone();
    adopt(&mut probe, running.clone());
    // `adopt` copies running's reloadable keys into probe only where both
    // have them; what is left differing needs a restart.
    let mut out = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check("data_dir", probe.data_dir != running.data_dir);
    check("log", differs(&probe.log, &running.log));
    check("gateway_id", probe.gateway_id != running.gateway_id);
    check("upstream", differs(&probe.upstream, &running.upstream));
    check("http", differs(&probe.http, &running.http));
    check("serial", differs(&probe.serial, &running.serial));
    check("modbus", differs(&probe.modbus, &running.modbus));
    check("journal", differs(&probe.journal, &running.journal));
    check("syslog", differs(&probe.syslog, &running.syslog));
    check("bridge", differs(&probe.bridge, &running.bridge));
    check(
        "http_ingest",
        differs(&probe.http_ingest, &running.http_ingest),
    );
    check("heartbeat", probe.heartbeat != running.heartbeat);
    check("mqtt (other than users, ACLs, routes, tls cert/key)", {
        differs(&probe.mqtt, &running.mqtt)
    });
    for (name, topic) in &probe.topics {
        match running.topics.get(name) {
            None => check(&format!("topics.{name} (added)"), true),
            Some(t) => check(
                &format!("topics.{name} (partitions, fsync, compression, segment size)"),
                t != topic,
            ),
        }
    }
    for name in running.topics.keys() {
        check(
            &format!("topics.{name} (removed)"),
            !probe.topics.contains_key(name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloadable_keys_are_not_reported_as_needing_a_restart() {
        let running = Config::default();
        let mut new = running.clone();
        new.mqtt.allow_anonymous = false;
        new.log_level = Some("debug".into());
        if let Some(t) = new.topics.get_mut("ingest") {
            t.retention_bytes = Some(1 << 20);
        }
        assert_eq!(restart_needed(&running, &new), Vec::<String>::new());
    }

    #[test]
    fn restart_only_keys_are_named() {
        let running = Config::default();
        let mut new = running.clone();
        new.data_dir = "elsewhere".into();
        new.mqtt.listen = "127.0.0.1:1".parse().unwrap();
        if let Some(t) = new.topics.get_mut("ingest") {
            t.partitions = 4;
        }
        new.topics.insert("more".into(), Default::default());
        let keys = restart_needed(&running, &new);
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(
            keys[0] == "data_dir" && keys[1].starts_with("mqtt"),
            "{keys:?}"
        );
    }
}
