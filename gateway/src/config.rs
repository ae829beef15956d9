//! The configuration file and the embedded defaults.
//!
//! With no file, `tidewell run` uses the defaults: data in `./tidewell-data`,
//! one topic `ingest` with one partition, fsync `always`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::log::{LogConfig, TopicConfig};

pub const DEFAULT_TOPIC: &str = "ingest";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub index_interval_bytes: u64,
    pub min_free_bytes: u64,
}

impl Default for LogSection {
    fn default() -> Self {
        let defaults = LogConfig::new(".");
        LogSection {
            index_interval_bytes: defaults.index_interval_bytes,
            min_free_bytes: defaults.min_free_bytes,
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
    pub mqtt: crate::mqtt::MqttConfig,
    /// Serial ports (`[[serial.ports]]`, see `serial::config`); none by default.
    pub serial: crate::serial::SerialConfig,
    /// The observability endpoint (`[http]`); loopback by default.
    pub http: crate::http::HttpConfig,
    /// This gateway's name upstream (default: `/etc/machine-id`, else the
    /// host name); it is in every replicated record's headers.
    pub gateway_id: Option<String>,
    /// Replication to Kafka (`[upstream]`, see `replicate::config`); none:
    /// buffer-only mode.
    pub upstream: Option<crate::replicate::UpstreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tidewell-data"),
            log: LogSection::default(),
            topics: BTreeMap::from([(DEFAULT_TOPIC.to_string(), TopicConfig::default())]),
            mqtt: crate::mqtt::MqttConfig::default(),
            serial: crate::serial::SerialConfig::default(),
            http: crate::http::HttpConfig::default(),
            gateway_id: None,
            upstream: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            path: path.into(),
            key,
            message: message.into(),
        };
        for (name, topic) in &self.topics {
            if !crate::log::config::valid_topic_name(name) {
                return Err(invalid(
                    format!("topics.{name}"),
                    "topic names use 1-200 characters of [A-Za-z0-9._-]",
                ));
            }
            if topic.partitions == 0 {
                return Err(invalid(
                    format!("topics.{name}.partitions"),
                    "must be at least 1",
                ));
            }
            if topic.max_segment_bytes < 4096 {
                return Err(invalid(
                    format!("topics.{name}.max_segment_bytes"),
                    "must be at least 4096",
                ));
            }
        }
        self.mqtt
            .validate()
            .map_err(|(key, message)| invalid(key, &message))?;
        let topics: Vec<&str> = self.topics.keys().map(String::as_str).collect();
        self.serial
            .validate(&topics)
            .map_err(|(key, message)| invalid(key, &message))?;
        if let Some(upstream) = &self.upstream {
            upstream
                .validate(&topics)
                .map_err(|(key, message)| invalid(key, &message))?;
        }
        if let Some(id) = &self.gateway_id {
            if !crate::log::config::valid_topic_name(id) {
                return Err(invalid(
                    "gateway_id".into(),
                    "use 1-200 characters of [A-Za-z0-9._-]",
                ));
            }
        }
        if self.log.index_interval_bytes == 0 {
            return Err(invalid(
                "log.index_interval_bytes".into(),
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn log_config(&self) -> LogConfig {
        let mut config = LogConfig::new(&self.data_dir);
        config.topics = self.topics.clone();
        config.index_interval_bytes = self.log.index_interval_bytes;
        config.min_free_bytes = self.log.min_free_bytes;
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
