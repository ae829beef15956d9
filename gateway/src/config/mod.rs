//! The configuration file and the embedded defaults.
//!
//! With no file, `tidewell run` uses the defaults: data in `./tidewell-data`,
//! one topic `ingest` with one partition, fsync `always`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub mod check;

use crate::log::{LogConfig, TopicConfig, DEFAULT_TOPIC};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), check::lines(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<check::Problem>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub index_interval_bytes: u64,
    pub min_free_bytes: u64,
    /// `"system"` (trust the wall clock) or `"ntp"` (only once the kernel
    /// reports it synchronised; see `log::clock`).
    pub clock: crate::log::clock::ClockTrust,
}

impl Default for LogSection {
    fn default() -> Self {
        let defaults = LogConfig::new(".");
        LogSection {
            index_interval_bytes: defaults.index_interval_bytes,
            min_free_bytes: defaults.min_free_bytes,
            clock: defaults.clock,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub log: LogSection,
    pub topics: BTreeMap<String, TopicConfig>,
    /// The MQTT listener (`[mqtt]`, see `mqtt::config`); on by default,
    /// loopback only.
    pub mqtt: crate::ingest::mqtt::MqttConfig,
    /// Bridges from other MQTT brokers (`[[bridge.brokers]]`, see
    /// `bridge::config`); none by default. They use the `[mqtt]` routes.
    pub bridge: crate::ingest::bridge::BridgeConfig,
    /// Serial ports (`[[serial.ports]]`, see `serial::config`); none by default.
    pub serial: crate::ingest::serial::SerialConfig,
    /// Modbus buses to poll (`[[modbus.buses]]`, see `modbus::config`); none by default.
    pub modbus: crate::ingest::modbus::ModbusConfig,
    /// The systemd journal (`[journal]`, see `journal::config`); off by default.
    pub journal: crate::ingest::journal::JournalConfig,
    /// The syslog listener (`[syslog]`, see `syslog::config`); off by default.
    pub syslog: crate::ingest::syslog::SyslogConfig,
    /// The observability endpoint (`[http]`); loopback by default.
    pub http: crate::observe::HttpConfig,
    /// HTTP ingest and read-back (`[http_ingest]`, see `ingest::http::config`); off by default.
    pub http_ingest: crate::ingest::http::HttpIngestConfig,
    /// This gateway's name upstream (default: `/etc/machine-id`, else the
    /// host name); it is in every replicated record's headers.
    pub gateway_id: Option<String>,
    /// Replication to Kafka (`[upstream]`, see `replicate::config`); none:
    /// buffer-only mode.
    pub upstream: Option<crate::replicate::UpstreamConfig>,
    /// The log filter (`"info"`, `"debug"`, `"tidewell::ingest=debug,info"`);
    /// unset: `TIDEWELL_LOG`, else `info`. A reload applies it.
    pub log_level: Option<String>,
    /// A periodic status record to a local topic (`[heartbeat]`, see
    /// `daemon::heartbeat`); off by default.
    pub heartbeat: crate::daemon::heartbeat::HeartbeatConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tidewell-data"),
            log: LogSection::default(),
            topics: BTreeMap::from([(DEFAULT_TOPIC.to_string(), TopicConfig::default())]),
            mqtt: crate::ingest::mqtt::MqttConfig::default(),
            bridge: crate::ingest::bridge::BridgeConfig::default(),
            serial: crate::ingest::serial::SerialConfig::default(),
            modbus: crate::ingest::modbus::ModbusConfig::default(),
            journal: crate::ingest::journal::JournalConfig::default(),
            syslog: crate::ingest::syslog::SyslogConfig::default(),
            http: crate::observe::HttpConfig::default(),
            http_ingest: crate::ingest::http::HttpIngestConfig::default(),
            gateway_id: None,
            upstream: None,
            log_level: None,
            heartbeat: crate::daemon::heartbeat::HeartbeatConfig::default(),
        }
    }
}

impl Config {
    /// Reads, parses and checks a configuration file; every problem found is
    /// reported, each with its key path and line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        check::check_file(path).map_err(|problems| ConfigError::Invalid {
            path: path.into(),
            problems,
        })
    }

    /// Every problem the types cannot catch, as (key path, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (name, topic) in &self.topics {
            if !crate::log::config::valid_topic_name(name) {
                problems.push((
                    format!("topics.{name}"),
                    "topic names use 1-200 characters of [A-Za-z0-9._-]".into(),
                ));
            }
            if topic.partitions == 0 {
                problems.push((
                    format!("topics.{name}.partitions"),
                    "must be at least 1".into(),
                ));
            }
            if topic.max_segment_bytes < 4096 {
                problems.push((
                    format!("topics.{name}.max_segment_bytes"),
                    "must be at least 4096".into(),
                ));
            }
        }
        let topics: Vec<&str> = self.topics.keys().map(String::as_str).collect();
        problems.extend(self.mqtt.validate().err());
        problems.extend(self.bridge.validate());
        if self.mqtt.enabled || !self.bridge.brokers.is_empty() {
            // A disabled listener routes nothing: its default topic need not exist.
            problems.extend(self.unknown_mqtt_topics(&topics));
        }
        problems.extend(self.serial.validate(&topics).err());
        problems.extend(self.modbus.validate(&topics));
        let partitions: Vec<(&str, u32)> = self
            .topics
            .iter()
            .map(|(n, t)| (n.as_str(), t.partitions))
            .collect();
        problems.extend(self.journal.validate(&partitions).err());
        problems.extend(self.syslog.validate(&topics).err());
        problems.extend(self.http_ingest.validate().err());
        problems.extend(self.heartbeat.validate(&topics));
        if let Some(upstream) = &self.upstream {
            problems.extend(upstream.validate(&topics).err());
        }
        if let Some(id) = &self.gateway_id {
            if !crate::log::config::valid_topic_name(id) {
                problems.push((
                    "gateway_id".into(),
                    "use 1-200 characters of [A-Za-z0-9._-]".into(),
                ));
            }
        }
        if let Some(level) = &self.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                problems.push(("log_level".into(), format!("{level:?}: {e}")));
            }
        }
        if self.log.index_interval_bytes == 0 {
            problems.push((
                "log.index_interval_bytes".into(),
                "must be at least 1".into(),
            ));
        }
        problems
    }

    /// MQTT routes (and the default route) must name a configured topic,
    /// or `run` would refuse to start.
    fn unknown_mqtt_topics(&self, topics: &[&str]) -> Vec<(String, String)> {
        let missing = |t: &str| !topics.contains(&t);
        let mut out: Vec<(String, String)> = self
            .mqtt
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| missing(&r.topic))
            .map(|(i, r)| {
                let msg = format!(
                    "no such topic {:?} (configure [topics.{}])",
                    r.topic, r.topic
                );
                (format!("mqtt.routes[{i}].topic"), msg)
            })
            .collect();
        let default = &self.mqtt.default_topic;
        if missing(default) {
            out.push((
                "mqtt.default_topic".into(),
                format!("no such topic {default:?}: publishes no route matches go there (configure [topics.{default}] or set default_topic)"),
            ));
        }
        out
    }

    pub fn log_config(&self) -> LogConfig {
        let mut config = LogConfig::new(&self.data_dir);
        config.topics = self.topics.clone();
        config.index_interval_bytes = self.log.index_interval_bytes;
        config.min_free_bytes = self.log.min_free_bytes;
        config.clock = self.log.clock;
        config.replication_enabled = self.upstream.is_some();
        config
    }

    /// The configured gateway id, or the machine's.
    pub fn gateway_id(&self) -> String {
        self.gateway_id
            .clone()
            .unwrap_or_else(crate::replicate::config::default_gateway_id)
    }
}
