//! The `[journal]` section of the configuration file.
//!
//! ```toml
//! [topics.journal]
//! retention_bytes = 268435456   # its own quota: a log storm cannot take the sensors' room
//! when_full = "drop_oldest"
//! fsync = { interval_ms = 1000 }
//!
//! [journal]
//! enabled = true
//! units = ["ssh.service"]          # only these (all when empty)
//! max_priority = 6                 # info and more urgent
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// Where a first start (no cursor in the log yet) begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest entry the journal still has.
    #[default]
    Head,
    /// Entries written from now on.
    Now,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    pub enabled: bool,
    /// Log topic (one partition: the journal's order and the resume point
    /// live in it).
    pub topic: String,
    /// The `journalctl` to run.
    pub journalctl: PathBuf,
    /// Read the journal files in this directory instead of the system's.
    pub directory: Option<PathBuf>,
    /// Only entries of these units (`_SYSTEMD_UNIT`); all when empty.
    pub units: Vec<String>,
    /// Never entries of these units.
    pub exclude_units: Vec<String>,
    /// Only entries with these `SYSLOG_IDENTIFIER`s; all when empty.
    pub identifiers: Vec<String>,
    /// Only entries of this priority or more urgent (0 emerg .. 7 debug).
    pub max_priority: Option<u8>,
    /// Only entries of the current boot.
    pub current_boot_only: bool,
    /// Journal fields kept as record headers.
    pub fields: Vec<String>,
    pub start_at: StartAt,
    /// Longest field value kept (the message included); longer ones are cut,
    /// named in a `journal.truncated` header and counted.
    pub max_field_bytes: usize,
    /// Entries a second kept on average; more are dropped and counted. 0: no limit.
    pub rate_limit_per_s: u32,
    /// Entries allowed in a burst above the rate.
    pub rate_limit_burst: u32,
}

pub const DEFAULT_FIELDS: &[&str] = &[
    "_SYSTEMD_UNIT",
    "SYSLOG_IDENTIFIER",
    "PRIORITY",
    "_BOOT_ID",
    "_HOSTNAME",
    "_PID",
];

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: false,
            topic: "journal".into(),
            journalctl: PathBuf::from("journalctl"),
            directory: None,
            units: Vec::new(),
            exclude_units: Vec::new(),
            identifiers: Vec::new(),
            max_priority: None,
            current_boot_only: false,
            fields: DEFAULT_FIELDS.iter().map(ToString::to_string).collect(),
            start_at: StartAt::Head,
            max_field_bytes: 256 << 10,
            rate_limit_per_s: 1000,
            rate_limit_burst: 10_000,
        }
    }
}

impl JournalConfig {
    /// Checks what the types cannot: returns (key path, problem).
    pub fn validate(&self, topics: &[(&str, u32)]) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        let key = |field: &str| format!("journal.{field}");
        match topics.iter().find(|(name, _)| *name == self.topic) {
            None => {
                return Err((
                    key("topic"),
                    format!(
                        "no topic {:?} is configured under [topics] (give the journal its own topic, quota and when_full)",
                        self.topic
                    ),
                ))
            }
            Some((_, partitions)) if *partitions != 1 => {
                return Err((
                    key("topic"),
                    format!(
                        "topic {:?} has {partitions} partitions; the journal needs 1 (its order and resume cursor live in it)",
                        self.topic
                    ),
                ))
            }
            Some(_) => {}
        }
        if self.max_priority.is_some_and(|p| p > 7) {
            return Err((key("max_priority"), "0 (emerg) to 7 (debug)".into()));
        }
        if self.max_field_bytes < 64 {
            return Err((key("max_field_bytes"), "must be at least 64".into()));
        }
        if self.rate_limit_per_s > 0 && self.rate_limit_burst == 0 {
            return Err((key("rate_limit_burst"), "must be at least 1".into()));
        }
        let bad = self
            .fields
            .iter()
            .chain(&self.units)
            .chain(&self.identifiers)
            .find(|f| f.is_empty() || f.contains(['=', '\n']));
        if let Some(bad) = bad {
            return Err((key("fields"), format!("{bad:?}: no '=' or newline")));
        }
        Ok(())
    }
}
