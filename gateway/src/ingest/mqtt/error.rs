//! Errors of the MQTT listener: starting it, and why a connection ended.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

/// The listener could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("mqtt: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("mqtt.tls: {path}: {message}")]
    TlsFile { path: PathBuf, message: String },
    #[error("mqtt.tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Route(#[from] super::route::UnknownTopic),
    #[error(transparent)]
    Retained(#[from] super::retain::RetainError),
    #[error("mqtt: a start-up task failed: {0}")]
    Task(String),
}

/// A frame that cannot be decoded or encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet of {bytes} bytes exceeds the maximum of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("cannot encode packet: {0}")]
    Encode(String),
}

/// Why a connection was closed by the server (logged with the peer address
/// and client id).
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no CONNECT within {0} ms")]
    ConnectTimeout(u64),
    #[error("no packet within {0} ms (1.5 x keep-alive)")]
    KeepAliveTimeout(u64),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused at CONNECT: {0}")]
    Refused(String),
    #[error("publish refused ({0}); MQTT 3.1.1 has no negative ack, so the connection is closed")]
    RefusedV4(String),
    #[error("another connection took over client id")]
    TakenOver,
    #[error("reading the log for a persistent session: {0}")]
    SessionRead(#[from] crate::log::ReadError),
    #[error("writing to the client timed out")]
    WriteTimeout,
    #[error("the gateway is shutting down")]
    Shutdown,
}
