//! The `[serial]` section of the configuration file.
//!
//! ```toml
//! [[serial.ports]]
//! # Prefer the stable /dev/serial/by-id/... name over /dev/ttyUSB0, which
//! # changes with the order devices are plugged in.
//! path = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
//! baud = 115200
//! topic = "ingest"        # log topic; records are keyed by the device id from Hello
//! format = "frames"       # firmware-proto frames; or "lines" for text sensors (CSV, NMEA)
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::log::DEFAULT_TOPIC;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialConfig {
    pub ports: Vec<PortConfig>,
}

/// What arrives on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `firmware-proto` frames, acknowledged once durable.
    #[default]
    Frames,
    /// Newline-terminated text, one record per line, keyed by the port name.
    Lines,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub path: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub format: Format,
    /// Longest line accepted in `lines` format; longer ones are dropped and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_baud() -> u32 {
    115_200
}

fn default_topic() -> String {
    DEFAULT_TOPIC.to_string()
}

fn default_max_line_bytes() -> usize {
    4096
}

impl SerialConfig {
    /// Checks what the types cannot: returns (key path, problem).
    pub fn validate(&self, topics: &[&str]) -> Result<(), (String, String)> {
        for (i, port) in self.ports.iter().enumerate() {
            let key = |field: &str| format!("serial.ports[{i}].{field}");
            if port.baud == 0 {
                return Err((key("baud"), "must be positive".into()));
            }
            if !topics.contains(&port.topic.as_str()) {
                return Err((
                    key("topic"),
                    format!("no topic {:?} is configured under [topics]", port.topic),
                ));
            }
            if port.max_line_bytes == 0 {
                return Err((key("max_line_bytes"), "must be positive".into()));
            }
            let duplicate = self.ports[..i].iter().any(|p| p.path == port.path);
            if duplicate {
                return Err((
                    key("path"),
                    format!("{} is configured twice", port.path.display()),
                ));
            }
        }
        Ok(())
    }
}
