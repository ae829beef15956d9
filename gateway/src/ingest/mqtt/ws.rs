//! MQTT over WebSockets (RFC 6455; MQTT 5.0 and 3.1.1, section 6), for
//! browser dashboards: the same CONNECT, passwords, client certificates,
//! ACLs and acknowledgements as on TCP, on listeners of their own
//! (`ws_listen`, and `[mqtt.wss]` with TLS).
//!
//! # Shape
//!
//! The HTTP upgrade is read (at most [`MAX_REQUEST_BYTES`], within
//! `connect_timeout_ms`) and must offer the subprotocol `mqtt`; anything
//! else is answered with an HTTP error and closed. Then a pump task turns
//! the frames into a byte stream: one end of an in-memory pipe
//! (`AsyncRead + AsyncWrite`) goes to the connection loop of `mod.rs`,
//! unchanged, and the pump moves bytes between the other end and the socket.
//!
//! ```text
//!  socket ── masked frames ──► pump ── payload bytes ──► pipe ──► connect::run
//!  socket ◄── binary frames ── pump ◄── MQTT bytes ───── pipe ◄──┘
//! ```
//!
//! MQTT packets need not line up with frames (the spec allows either way);
//! the MQTT codec behind the pipe finds the packet boundaries as on TCP.
//!
//! # Our own framing, not tungstenite
//!
//! A broker needs the server half of RFC 6455 only: one upgrade, masked
//! client frames in, unmasked binary frames out, ping, pong, close. That is
//! this file, built from crates the gateway links already (`httparse`,
//! `ring`'s SHA-1, `base64`), so the device binary gains no dependency, and
//! the bounds are ours to state:
//!
//! - a frame's length is read from its header and checked against
//!   `max_payload_bytes` plus [`OVERHEAD_BYTES`] before any of its payload
//!   is read; a fragmented message is checked the same way as its frames
//!   arrive (close 1009);
//! - a payload is never buffered whole: it streams through a
//!   [`CHUNK_BYTES`] buffer into the pipe, whose [`PIPE_BYTES`] push back
//!   on the client when the MQTT loop is not reading;
//! - control frames are at most 125 bytes (RFC 6455 5.5).
//!
//! Text frames, unmasked frames, reserved bits (no extension is
//! negotiated) and frames out of order close the connection (1003 or 1002).

use std::io::{self, Cursor};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{MqttConfig, Shared, StartError};
use crate::ingest::Shutdown;
use crate::net::{Acceptor, RateLimitedWarning};

/// The HTTP upgrade request, headers included.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
const MAX_HEADERS: usize = 32;
/// A frame or message may be this much larger than `max_payload_bytes`
/// (an MQTT packet's topic and properties), as the MQTT codec allows.
pub const OVERHEAD_BYTES: usize = 128 << 10;
/// Payload moves through a buffer of this size, never whole.
pub const CHUNK_BYTES: usize = 8 << 10;
/// The in-memory pipe between the pump and the MQTT loop, each way.
pub const PIPE_BYTES: usize = 64 << 10;
/// RFC 6455 4.2.2: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const SUBPROTOCOL: &str = "mqtt";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The bound WebSocket listeners and their accept tasks.
#[derive(Default)]
pub struct WsListeners {
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds `ws_listen` and `[mqtt.wss]`, if configured, and accepts until
/// `shutdown`.
pub async fn listen(
    config: &MqttConfig,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> Result<WsListeners, StartError> {
    let mut out = WsListeners::default();
    if let Some(addr) = config.ws_listen {
        let listener = super::bind(addr).await?;
        out.ws = listener.local_addr().ok();
        let task = accept_loop(listener, false, shared.clone(), shutdown.clone());
        out.tasks.push(tokio::spawn(task));
    }
    if let Some(wss) = &config.wss {
        let listener = super::bind(wss.listen).await?;
        out.wss = listener.local_addr().ok();
        let task = accept_loop(listener, true, shared.clone(), shutdown.clone());
        out.tasks.push(tokio::spawn(task));
    }
    Ok(out)
}

/// Why `ws_listen` or `[mqtt.wss]` would expose anonymous access to the
/// network, if they would (the same rule as for the TCP listeners).
pub fn anonymous_exposure(config: &MqttConfig) -> Option<String> {
    if !config.allow_anonymous {
        return None;
    }
    if let Some(addr) = config.ws_listen.filter(|a| !a.ip().is_loopback()) {
        return Some(format!(
            "ws_listen = {addr} is not a loopback address: set allow_anonymous = false and configure [[mqtt.users]]"
        ));
    }
    match &config.wss {
        Some(wss) if !wss.listen.ip().is_loopback() && wss.client_ca_file.is_none() => Some(format!(
            "wss.listen = {} is not a loopback address: set allow_anonymous = false and configure [[mqtt.users]], or require client certificates (wss.client_ca_file)",
            wss.listen
        )),
        _ => None,
    }
}

/// `tls`: this listener's connections start with a handshake, under the
/// certificate the last reload loaded.
async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) {
    let mut listener = Acceptor::new(listener, "mqtt-ws");
    let mut full = RateLimitedWarning::new(Duration::from_secs(10));
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.requested() => return,
        };
        if !super::admitted(
            &shared,
            &socket,
            peer,
            &mut full,
            "mqtt websocket connection refused",
        ) {
            continue;
        }
        let acceptor = if tls { shared.live.wss() } else { None };
        tokio::spawn(handle_socket(socket, peer, acceptor, shared.clone()));
    }
}

async fn handle_socket(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    match tls {
        None => Box::pin(serve_ws(socket, peer, false, &shared)).await,
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
            Ok(Ok(stream)) => {
                let cert = stream.get_ref().1.peer_certificates().is_some();
                Box::pin(serve_ws(stream, peer, cert, &shared)).await;
            }
            Ok(Err(e)) => tracing::info!(%peer, "mqtt wss handshake failed: {e}"),
            Err(_) => tracing::info!(%peer, "mqtt wss handshake timed out"),
        },
    }
    shared
        .stats
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

/// Upgrades, then runs the MQTT connection over the frames.
async fn serve_ws<S>(stream: S, peer: SocketAddr, client_cert: bool, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let leftover = match tokio::time::timeout(timeout, upgrade(&mut rd, &mut wr)).await {
        Ok(Ok(leftover)) => leftover,
        Ok(Err(e)) => {
            tracing::info!(%peer, "mqtt websocket upgrade refused: {e}");
            if let Some(response) = e.response() {
                let _ = wr.write_all(response.as_bytes()).await;
                let _ = wr.shutdown().await;
            }
            return;
        }
        Err(_) => return tracing::info!(%peer, "mqtt websocket upgrade timed out"),
    };
    let (mqtt_end, pump_end) = tokio::io::duplex(PIPE_BYTES);
    let max_frame = shared.config.max_payload_bytes + OVERHEAD_BYTES;
    let pump = tokio::spawn(pump(
        Cursor::new(leftover).chain(rd),
        wr,
        pump_end,
        max_frame,
    ));
    Box::pin(super::serve(mqtt_end, peer, client_cert, shared)).await;
    if let Ok(Err(e)) = pump.await {
        tracing::info!(%peer, "mqtt websocket closed: {e}");
    }
}

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("connection lost during the upgrade: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the upgrade request was complete")]
    Closed,
    #[error(
        "upgrade request longer than {MAX_REQUEST_BYTES} bytes or more than {MAX_HEADERS} headers"
    )]
    TooLarge,
    #[error("not a WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    #[error("Sec-WebSocket-Version {0:?} (13 only)")]
    Version(String),
    #[error("the client does not offer the WebSocket subprotocol \"mqtt\" (offered: {0:?})")]
    Subprotocol(String),
}

impl UpgradeError {
    /// The HTTP answer, if the client can still read one.
    fn response(&self) -> Option<String> {
        let (status, extra) = match self {
            UpgradeError::Io(_) | UpgradeError::Closed => return None,
            UpgradeError::TooLarge => ("431 Request Header Fields Too Large", ""),
            UpgradeError::Version(_) => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            UpgradeError::BadRequest(_) | UpgradeError::Subprotocol(_) => ("400 Bad Request", ""),
        };
        let body = format!("{self}\n");
        Some(format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        ))
    }
}

/// Reads and checks the upgrade request and answers 101; returns the bytes
/// read past the request (the first frames, if the client did not wait).
async fn upgrade<R, W>(rd: &mut R, wr: &mut W) -> Result<Vec<u8>, UpgradeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(UpgradeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(UpgradeError::TooLarge);
        }
    };
    if end > MAX_REQUEST_BYTES {
        return Err(UpgradeError::TooLarge);
    }
    let accept = check_request(&buf[..end])?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    );
    wr.write_all(response.as_bytes()).await?;
    wr.flush().await?;
    Ok(buf.split_off(end))
}

/// Checks an upgrade request (RFC 6455 4.2.1, plus the `mqtt` subprotocol);
/// returns the `Sec-WebSocket-Accept` value.
pub fn check_request(head: &[u8]) -> Result<String, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(UpgradeError::TooLarge),
        _ => return Err(UpgradeError::BadRequest("malformed HTTP request")),
    }
    if request.method != Some("GET") {
        return Err(UpgradeError::BadRequest("the method must be GET"));
    }
    let values = |name: &str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect()
    };
    if !values("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return Err(UpgradeError::BadRequest("no \"Upgrade: websocket\""));
    }
    if !values("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"))
    {
        return Err(UpgradeError::BadRequest("no \"Connection: Upgrade\""));
    }
    let version = values("sec-websocket-version").join(",");
    if version != "13" {
        return Err(UpgradeError::Version(version));
    }
    let protocols = values("sec-websocket-protocol");
    if !protocols.contains(&SUBPROTOCOL) {
        return Err(UpgradeError::Subprotocol(protocols.join(", ")));
    }
    let key = values("sec-websocket-key");
    let key = match key.as_slice() {
        [key]
            if base64::engine::general_purpose::STANDARD
                .decode(key)
                .is_ok_and(|k| k.len() == 16) =>
        {
            *key
        }
        _ => {
            return Err(UpgradeError::BadRequest(
                "Sec-WebSocket-Key is not 16 bytes in base64",
            ))
        }
    };
    Ok(accept_key(key))
}

/// RFC 6455 4.2.2: base64 of the SHA-1 of the key and the GUID.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Why the pump closed a connection; the close code sent for it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("text frame: MQTT travels in binary frames")]
    Text,
    #[error("frame or message of {len} bytes, more than {max}")]
    TooLarge { len: u64, max: usize },
}

impl FrameError {
    /// The close code to send (none when the connection is gone).
    fn close_code(&self) -> Option<u16> {
        match self {
            FrameError::Io(_) => None,
            FrameError::Protocol(_) => Some(1002),
            FrameError::Text => Some(1003),
            FrameError::TooLarge { .. } => Some(1009),
        }
    }
}

/// A frame header as read from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub len: u64,
    pub mask: [u8; 4],
}

/// Reads a client frame's header; refuses it, before any payload is read,
/// if it is longer than `max`, unmasked, or otherwise malformed.
pub async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> Result<Header, FrameError> {
    let mut b = [0u8; 2];
    rd.read_exact(&mut b).await?;
    if b[0] & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    if b[1] & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0F);
    let len = match b[1] & 0x7F {
        126 => u64::from(rd.read_u16().await?),
        127 => rd.read_u64().await?,
        n => u64::from(n),
    };
    if opcode >= OP_CLOSE && (len > 125 || !fin) {
        return Err(FrameError::Protocol(
            "control frame fragmented or longer than 125 bytes",
        ));
    }
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut mask = [0u8; 4];
    rd.read_exact(&mut mask).await?;
    Ok(Header {
        fin,
        opcode,
        len,
        mask,
    })
}

/// Writes one unmasked server frame of `payload` into `out` (cleared first).
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8); // < 126: fits
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// XORs `data` with the mask, `offset` bytes into the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[((offset + i as u64) % 4) as usize];
    }
}

/// What the reading half asks the writing half to send.
enum Control {
    Pong(Vec<u8>),
    Close(u16),
}

/// Moves bytes both ways until either side ends.
async fn pump<R, W, P>(rd: R, wr: W, pipe: P, max: usize) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let (pipe_rd, pipe_wr) = tokio::io::split(pipe);
    let (control_tx, control_rx) = mpsc::channel(4);
    let inbound = inbound(rd, pipe_wr, control_tx, max);
    let outbound = outbound(pipe_rd, wr, control_rx);
    tokio::pin!(inbound, outbound);
    tokio::select! {
        result = &mut inbound => {
            // The client is done (or broke the protocol): the MQTT loop has
            // its end of input; let the writer send what is queued and close.
            let _ = outbound.await;
            result
        }
        // The MQTT loop closed the connection: the close frame is out.
        result = &mut outbound => result.map_err(FrameError::Io),
    }
}

/// Client frames to the pipe; pings answered through `control`.
async fn inbound<R, P>(
    mut rd: R,
    mut pipe: P,
    control: mpsc::Sender<Control>,
    max: usize,
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    P: AsyncWrite + Unpin,
{
    let result = frames_to_pipe(&mut rd, &mut pipe, &control, max).await;
    let code = match &result {
        Ok(()) => Some(1000),
        Err(e) => e.close_code(),
    };
    if let Some(code) = code {
        let _ = control.send(Control::Close(code)).await;
    }
    let _ = pipe.shutdown().await;
    result
}

/// Until the client's close frame (`Ok`) or an error.
async fn frames_to_pipe<R, P>(
    rd: &mut R,
    pipe: &mut P,
    control: &mpsc::Sender<Control>,
    max: usize,
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    P: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK_BYTES];
    // Bytes of the data message in progress, if one is (not yet FIN).
    let mut message: Option<u64> = None;
    loop {
        let header = read_header(rd, max).await?;
        match header.opcode {
            OP_BINARY | OP_CONTINUATION => {
                let so_far = match (header.opcode, message) {
                    (OP_BINARY, None) => 0,
                    (OP_CONTINUATION, Some(so_far)) => so_far,
                    (OP_BINARY, Some(_)) => {
                        return Err(FrameError::Protocol(
                            "a new message before the last one ended",
                        ))
                    }
                    _ => return Err(FrameError::Protocol("continuation frame without a message")),
                };
                let total = so_far + header.len;
                if total > max as u64 {
                    return Err(FrameError::TooLarge { len: total, max });
                }
                copy_payload(rd, pipe, &header, &mut buf).await?;
                message = (!header.fin).then_some(total);
            }
            OP_TEXT => return Err(FrameError::Text),
            OP_CLOSE => return Ok(()),
            OP_PING => {
                let mut payload = vec![0u8; header.len as usize]; // <= 125, checked in read_header
                rd.read_exact(&mut payload).await?;
                unmask(&mut payload, header.mask, 0);
                if control.send(Control::Pong(payload)).await.is_err() {
                    return Ok(());
                }
            }
            OP_PONG => {
                let mut sink = [0u8; 125];
                rd.read_exact(&mut sink[..header.len as usize]).await?; // <= 125
            }
            _ => return Err(FrameError::Protocol("unknown opcode")),
        }
    }
}

/// One frame's payload, unmasked, into the pipe, `buf` at a time.
async fn copy_payload<R, P>(
    rd: &mut R,
    pipe: &mut P,
    header: &Header,
    buf: &mut [u8],
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    P: AsyncWrite + Unpin,
{
    let mut done = 0u64;
    while done < header.len {
        let want = usize::try_from(header.len - done).map_or(buf.len(), |left| left.min(buf.len()));
        let n = rd.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        unmask(&mut buf[..n], header.mask, done);
        pipe.write_all(&buf[..n]).await?;
        done += n as u64;
    }
    Ok(())
}

/// MQTT bytes from the pipe to the client as binary frames, and the
/// control frames `inbound` asks for; a close frame last.
async fn outbound<P, W>(
    mut pipe: P,
    mut wr: W,
    mut control: mpsc::Receiver<Control>,
) -> io::Result<()>
where
    P: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut frame = Vec::with_capacity(CHUNK_BYTES + 10);
    let code = loop {
        tokio::select! {
            n = pipe.read(&mut buf) => match n? {
                0 => break 1000,
                n => encode_frame(OP_BINARY, &buf[..n], &mut frame),
            },
            Some(message) = control.recv() => match message {
                Control::Pong(payload) => encode_frame(OP_PONG, &payload, &mut frame),
                Control::Close(code) => break code,
            },
        }
        wr.write_all(&frame).await?;
    };
    encode_frame(OP_CLOSE, &code.to_be_bytes(), &mut frame);
    wr.write_all(&frame).await?;
    wr.shutdown().await
}

/// The fuzz target `mqtt_ws_stream`: the first byte picks the frame limit;
/// up to the first blank line is an upgrade request, the rest client
/// frames, pumped into a sink. Never panics, whatever the bytes.
pub fn fuzz_stream(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(knobs) * 64;
    let (head, mut frames) = match rest.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => rest.split_at(at + 4),
        None => (rest, &[][..]),
    };
    let _ = check_request(head);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let (control, mut pongs) = mpsc::channel(4);
        let run = async move {
            let _ = frames_to_pipe(&mut frames, &mut tokio::io::sink(), &control, max).await;
        };
        let drain = async { while pongs.recv().await.is_some() {} };
        tokio::join!(run, drain);
    });
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
