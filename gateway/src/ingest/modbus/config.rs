//! The `[modbus]` section of the configuration file: buses → devices →
//! groups → points. See this folder's README for every key.
//!
//! Addresses are the 0-based protocol addresses that go on the wire
//! (holding register "40001" in a vendor's table is `address = 0`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::log::DEFAULT_TOPIC;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    pub buses: Vec<BusConfig>,
}

/// How the bus is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Modbus RTU on a local serial port (RS-485 adapter).
    Rtu,
    /// Modbus TCP (MBAP header, no CRC).
    Tcp,
    /// RTU frames through a TCP serial server (a transparent gateway).
    RtuOverTcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    /// The Modbus serial line specification's default.
    #[default]
    Even,
    Odd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub name: String,
    pub transport: Transport,
    /// The serial port (`rtu`).
    pub path: Option<PathBuf>,
    /// `host:port` (`tcp`, `rtu_over_tcp`).
    pub address: Option<String>,
    /// The line's baud rate (`rtu`; for `rtu_over_tcp` the serial server's
    /// line, used to estimate what the bus can serve).
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Silence after a response before the next request, on top of the
    /// protocol's 3.5 character times.
    #[serde(default = "default_pause_ms")]
    pub pause_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts of a request that timed out or arrived damaged.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The record key; unique across all buses.
    pub name: String,
    /// The Modbus unit id (slave address).
    pub unit: u8,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub interval_ms: u64,
    #[serde(default)]
    pub points: Vec<PointConfig>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Coil,
    DiscreteInput,
    HoldingRegister,
    InputRegister,
}

impl Kind {
    pub fn is_bits(self) -> bool {
        matches!(self, Kind::Coil | Kind::DiscreteInput)
    }

    /// The read function code.
    pub fn function(self) -> u8 {
        match self {
            Kind::Coil => 1,
            Kind::DiscreteInput => 2,
            Kind::HoldingRegister => 3,
            Kind::InputRegister => 4,
        }
    }

    /// Most items one read may ask for (the protocol's limits).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
    String,
}

impl DataType {
    /// Registers a value takes (strings: see [`PointConfig::count`]).
    fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::Int16 | DataType::Uint16 | DataType::String => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String)
    }
}

/// Byte and word order, naming the value's big-endian bytes A (most
/// significant) to D as they arrive: `ABCD` big-endian, `CDAB` words
/// swapped, `BADC` bytes swapped in each register, `DCBA` little-endian.
/// For 64-bit values the same two swaps apply to all four registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Order {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl Order {
    pub fn swaps_bytes(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }

    pub fn swaps_words(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub name: String,
    pub kind: Kind,
    /// 0-based protocol address.
    pub address: u32,
    /// Default: `bool` for coils and discrete inputs, `uint16` for registers.
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    #[serde(default)]
    pub order: Order,
    /// `value = raw * scale + offset` (numeric types only).
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// Engineering unit, documentation only (e.g. "kWh").
    pub unit: Option<String>,
    /// For `type = "bool"` on a register: the bit, 0 = least significant.
    pub bit: Option<u8>,
    /// For `type = "string"`: its length in bytes (two per register).
    pub length: Option<u16>,
    /// Report by exception: send when the value moved more than this since
    /// it was last sent.
    pub deadband: Option<f64>,
    /// As `deadband`, in percent of the value last sent.
    pub deadband_percent: Option<f64>,
    /// With a deadband: send anyway once this long has passed.
    pub max_interval_ms: Option<u64>,
}

impl PointConfig {
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.kind.is_bits() {
            DataType::Bool
        } else {
            DataType::Uint16
        })
    }

    /// Items read: bits for coils and discrete inputs, else registers.
    pub fn count(&self) -> u16 {
        match self.data_type() {
            _ if self.kind.is_bits() => 1,
            DataType::String => self.length.unwrap_or(0).div_ceil(2),
            t => t.registers(),
        }
    }

    pub fn has_deadband(&self) -> bool {
        self.deadband.is_some() || self.deadband_percent.is_some()
    }
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_pause_ms() -> u64 {
    20
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    1
}
fn default_topic() -> String {
    DEFAULT_TOPIC.to_string()
}

impl BusConfig {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        let parity = u32::from(self.parity != Parity::None);
        1 + u32::from(self.data_bits) + parity + u32::from(self.stop_bits)
    }

    /// Whether frames carry a CRC and 3.5-character gaps (RTU framing).
    pub fn is_rtu(&self) -> bool {
        self.transport != Transport::Tcp
    }
}
