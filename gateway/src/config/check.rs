//! `tidewell config check`: everything wrong with a configuration file, each
//! problem with its key path and line. `tidewell run` refuses to start on the
//! same problems.
//!
//! Beyond types, ranges and unknown keys (the parser's part) it checks that
//! certificate files can be read, that no MQTT route is unreachable behind an
//! earlier one, and that the partition count of a topic already on disk is
//! not being changed.

use std::fmt;
use std::path::Path;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `topics.ingest.partitions` or `mqtt.routes[1].filter`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// One problem a line, indented, for error messages.
pub fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn check_file(path: &Path) -> Result<Config, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![problem("", None, format!("cannot read: {e}"))])?;
    let mut config: Config = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| line_of(&text, span.start));
        vec![problem("", line, e.message().to_string())]
    })?;
    apply_env(&mut config, |name| std::env::var_os(name));
    let mut problems: Vec<Problem> = config
        .problems()
        .into_iter()
        .map(|(k, m)| problem(&k, None, m))
        .collect();
    problems.extend(unreadable_files(&config));
    problems.extend(shadowed_routes(&config));
    problems.extend(changed_partition_counts(&config));
    for p in &mut problems {
        p.line = p.line.or_else(|| locate(&text, &p.key));
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Secrets may come from the environment (systemd `LoadCredential=`,
/// `EnvironmentFile=`) rather than the shared file: these variables override
/// their keys.
pub const ENV_OVERRIDES: [&str; 5] = [
    "TIDEWELL_UPSTREAM_PASSWORD",
    "TIDEWELL_UPSTREAM_PASSWORD_FILE",
    "TIDEWELL_UPSTREAM_KEY_FILE",
    "TIDEWELL_MQTT_TLS_CERT_FILE",
    "TIDEWELL_MQTT_TLS_KEY_FILE",
];

pub fn apply_env(config: &mut Config, var: impl Fn(&str) -> Option<std::ffi::OsString>) {
    if let Some(upstream) = &mut config.upstream {
        let security = &mut upstream.security;
        if let Some(v) = var(ENV_OVERRIDES[0]) {
            security.password = Some(v.to_string_lossy().into_owned());
        }
        if let Some(v) = var(ENV_OVERRIDES[1]) {
            security.password_file = Some(v.into());
        }
        if let Some(v) = var(ENV_OVERRIDES[2]) {
            security.key_file = Some(v.into());
        }
    }
    if let Some(tls) = &mut config.mqtt.tls {
        if let Some(v) = var(ENV_OVERRIDES[3]) {
            tls.cert_file = v.into();
        }
        if let Some(v) = var(ENV_OVERRIDES[4]) {
            tls.key_file = v.into();
        }
    }
}

fn problem(key: &str, line: Option<usize>, message: String) -> Problem {
    Problem {
        key: key.to_string(),
        line,
        message,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line where `key` (or its nearest present parent) is written.
fn locate(text: &str, key: &str) -> Option<usize> {
    use toml_edit::TableLike;
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut start = None;
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some(item) = table.get(name) else { break };
        start = item.span().map(|s| s.start).or(start);
        let next: Option<&dyn TableLike> = match index {
            Some(i) => {
                let element = item.as_array_of_tables().and_then(|a| a.get(i));
                start = element
                    .and_then(toml_edit::Table::span)
                    .map(|s| s.start)
                    .or(start);
                element.map(|t| t as &dyn TableLike)
            }
            None => item.as_table_like(),
        };
        match next {
            Some(next) => table = next,
            None => break,
        }
    }
    start.map(|offset| line_of(text, offset))
}

fn unreadable_files(config: &Config) -> Vec<Problem> {
    let mut files = Vec::new();
    if let Some(tls) = &config.mqtt.tls {
        files.push(("mqtt.tls.cert_file", Some(&tls.cert_file)));
        files.push(("mqtt.tls.key_file", Some(&tls.key_file)));
        files.push(("mqtt.tls.client_ca_file", tls.client_ca_file.as_ref()));
    }
    if let Some(upstream) = &config.upstream {
        let security = &upstream.security;
        files.push((
            "upstream.security.password_file",
            security.password_file.as_ref(),
        ));
        files.push(("upstream.security.ca_file", security.ca_file.as_ref()));
        files.push(("upstream.security.cert_file", security.cert_file.as_ref()));
        files.push(("upstream.security.key_file", security.key_file.as_ref()));
    }
    files
        .into_iter()
        .filter_map(|(key, path)| {
            let path = path?;
            let error = std::fs::File::open(path).err()?;
            Some(problem(
                key,
                None,
                format!("cannot read {}: {error}", path.display()),
            ))
        })
        .collect()
}

/// A route no publish can reach because an earlier route's filter matches
/// everything it matches (the first matching route wins).
fn shadowed_routes(config: &Config) -> Vec<Problem> {
    let routes = &config.mqtt.routes;
    let mut out = Vec::new();
    for (j, later) in routes.iter().enumerate() {
        if let Some((i, earlier)) = routes[..j]
            .iter()
            .enumerate()
            .find(|(_, e)| covers(&e.filter, &later.filter))
        {
            out.push(problem(
                &format!("mqtt.routes[{j}].filter"),
                None,
                format!(
                    "{:?} can never match: routes[{i}] ({:?}) takes every publish it would",
                    later.filter, earlier.filter
                ),
            ));
        }
    }
    out
}

/// Whether every topic matched by filter `b` is matched by filter `a`.
pub fn covers(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    for (i, level) in a.iter().enumerate() {
        match (*level, b.get(i).copied()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some(other)) if other != "#" => {}
            (mine, Some(other)) if mine == other && mine != "#" && mine != "+" => {}
            _ => return false,
        }
    }
    a.len() == b.len()
}

fn changed_partition_counts(config: &Config) -> Vec<Problem> {
    let on_disk = crate::log::topic_partitions_on_disk(&config.data_dir);
    on_disk
        .into_iter()
        .filter_map(|(topic, partitions)| {
            let configured = config.topics.get(&topic)?.partitions;
            (configured != partitions).then(|| {
                problem(
                    &format!("topics.{topic}.partitions"),
                    None,
                    format!("{} holds this topic with {partitions} partitions; changing the count would move keys between partitions and break per-key order, so it is refused (create a new topic instead)", config.data_dir.display()),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_override_secrets() {
        let text = "[upstream]\nbootstrap_servers = \"k:9092\"\n[upstream.security]\npassword = \"in-file\"\n[mqtt.tls]\nlisten = \"127.0.0.1:8883\"\ncert_file = \"a\"\nkey_file = \"b\"\n";
        let mut config: Config = toml::from_str(text).unwrap();
        apply_env(&mut config, |name| match name {
            "TIDEWELL_UPSTREAM_PASSWORD" => Some("from-env".into()),
            "TIDEWELL_MQTT_TLS_KEY_FILE" => Some("/run/credentials/tidewell/key".into()),
            _ => None,
        });
        let upstream = config.upstream.as_ref().unwrap();
        assert_eq!(upstream.security.password.as_deref(), Some("from-env"));
        let tls = config.mqtt.tls.as_ref().unwrap();
        assert_eq!(
            tls.key_file,
            std::path::PathBuf::from("/run/credentials/tidewell/key")
        );
        assert_eq!(tls.cert_file, std::path::PathBuf::from("a"));
    }

    #[test]
    fn filter_cover_follows_mqtt_wildcards() {
        assert!(covers("devices/#", "devices/+/telemetry"));
        assert!(covers("#", "a/b"));
        assert!(covers("devices/+/telemetry", "devices/d1/telemetry"));
        assert!(!covers("devices/+/telemetry", "devices/#"));
        assert!(!covers("devices/d1/telemetry", "devices/+/telemetry"));
        assert!(!covers("a/b", "a/b/c"));
        assert!(covers("a/+", "a/+"));
    }
}
