//! The UDP, TCP and unix datagram listeners, and TCP framing (RFC 6587).

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::{Shared, Transport};

/// Largest datagram read (the UDP maximum); longer ones are cut by the kernel.
const DATAGRAM_BYTES: usize = 65_536;

type Started = (Vec<(&'static str, SocketAddr)>, Vec<AbortHandle>);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("syslog: cannot listen on {what} {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: String,
        error: std::io::Error,
    },
}

fn bind_error(
    what: &'static str,
    addr: impl ToString,
) -> impl FnOnce(std::io::Error) -> ListenError {
    let addr = addr.to_string();
    move |error| ListenError::Bind { what, addr, error }
}

pub async fn start(shared: &Arc<Shared>) -> Result<Started, ListenError> {
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    let mut listening = Vec::new();
    if let Some(addr) = shared.config.udp {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(bind_error("udp", addr))?;
        let local = socket.local_addr().map_err(bind_error("udp", addr))?;
        addresses.push(("syslog_udp", local));
        listening.push(format!("udp:{local}"));
        tasks.push(tokio::spawn(udp(socket, shared.clone())).abort_handle());
    }
    if let Some(addr) = shared.config.tcp {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(bind_error("tcp", addr))?;
        let local = listener.local_addr().map_err(bind_error("tcp", addr))?;
        addresses.push(("syslog_tcp", local));
        listening.push(format!("tcp:{local}"));
        tasks.push(tokio::spawn(tcp(listener, shared.clone())).abort_handle());
    }
    if let Some(path) = &shared.config.unix {
        let shown = path.display().to_string();
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let socket = UnixDatagram::bind(path).map_err(bind_error("unix", &shown))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(bind_error("unix", &shown))?;
        listening.push(format!("unix:{shown}"));
        tasks.push(tokio::spawn(unix(socket, shared.clone())).abort_handle());
    }
    *shared
        .stats
        .listening
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = listening;
    Ok((addresses, tasks))
}

/// A datagram cut at the limit: (kept bytes, whether it was cut).
fn cut(bytes: &[u8], max: usize) -> (&[u8], bool) {
    (&bytes[..bytes.len().min(max)], bytes.len() > max)
}

fn offer(shared: &Shared, record: crate::log::Record) {
    if let Err(TrySendError::Full(_)) = shared.tx.try_send(record) {
        shared
            .stats
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
    }
}

async fn udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if !shared.allowed(peer) {
            shared.stats.refused_peers.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (bytes, was_cut) = cut(&buf[..n], shared.config.max_message_bytes);
        let record = shared.record(bytes, was_cut, Transport::Udp, &peer.to_string());
        offer(&shared, record);
    }
}

async fn unix(socket: UnixDatagram, shared: Arc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let peer = peer
            .as_pathname()
            .map_or_else(|| "unix".to_string(), |p| format!("unix:{}", p.display()));
        let (bytes, was_cut) = cut(&buf[..n], shared.config.max_message_bytes);
        let record = shared.record(bytes, was_cut, Transport::Unix, &peer);
        offer(&shared, record);
    }
}

async fn tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if !shared.allowed(peer) {
            shared.stats.refused_peers.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared
                .stats
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            let why = connection(stream, peer, &shared).await;
            shared
                .stats
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = why {
                tracing::debug!(%peer, "syslog: connection closed: {e}");
            }
            drop(slot);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut framer = Framer::new(shared.config.max_message_bytes);
    let mut buf = vec![0u8; 16 << 10];
    let peer = peer.to_string();
    loop {
        let n = stream.read(&mut buf).await?;
        let mut frames = Vec::new();
        if n == 0 {
            framer.finish(&mut frames);
        } else {
            framer.push(&buf[..n], &mut frames);
        }
        for (bytes, was_cut) in frames {
            let record = shared.record(&bytes, was_cut, Transport::Tcp, &peer);
            // A stream can wait: a full queue stops reading this peer.
            if shared.tx.send(record).await.is_err() {
                return Ok(());
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Between frames: the next byte decides (a digit: octet counting).
    Start,
    /// Octet counting: the length's digits so far.
    Length(usize),
    /// `LEN SP` read: octet counting if a `<PRI>` follows, else a line.
    Counted(usize),
    /// Octet counting: bytes of the message still to come.
    Octets(usize),
    /// Newline framing, up to the next `\n`.
    Line,
}

/// Splits a TCP byte stream into messages, detecting the framing of each:
/// `LEN SP <PRI>...` (RFC 6587 octet counting) when it starts with digits,
/// a space and `<`, else a line. Messages are cut at `max` bytes (the rest is read and
/// discarded) and flagged.
pub struct Framer {
    max: usize,
    state: Frame,
    current: Vec<u8>,
    cut: bool,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            max,
            state: Frame::Start,
            current: Vec::new(),
            cut: false,
        }
    }

    pub fn push(&mut self, data: &[u8], out: &mut Vec<(Vec<u8>, bool)>) {
        for &b in data {
            self.state = match self.state {
                Frame::Start if matches!(b, b'\n' | b'\r' | b'\0' | b' ') => Frame::Start,
                Frame::Start if b.is_ascii_digit() => Frame::Length(usize::from(b - b'0')),
                Frame::Start => {
                    self.keep(b);
                    Frame::Line
                }
                Frame::Length(n) => self.length_byte(n, b),
                Frame::Counted(n) if b == b'<' => {
                    self.keep(b);
                    if n == 1 {
                        self.emit(out);
                        Frame::Start
                    } else {
                        Frame::Octets(n - 1)
                    }
                }
                Frame::Counted(n) => {
                    // `2024 was a year`: digits and a space began a line.
                    self.current.extend_from_slice(format!("{n} ").as_bytes());
                    self.keep(b);
                    Frame::Line
                }
                Frame::Octets(left) => {
                    self.keep(b);
                    if left == 1 {
                        self.emit(out);
                        Frame::Start
                    } else {
                        Frame::Octets(left - 1)
                    }
                }
                Frame::Line if b == b'\n' => {
                    self.emit(out);
                    Frame::Start
                }
                Frame::Line => {
                    self.keep(b);
                    Frame::Line
                }
            };
        }
    }

    fn length_byte(&mut self, n: usize, b: u8) -> Frame {
        match b {
            b'0'..=b'9' if n < 100_000_000 => Frame::Length(n * 10 + usize::from(b - b'0')),
            b' ' if n > 0 => Frame::Counted(n),
            _ => {
                // Not a length after all: the digits began a line.
                self.current.extend_from_slice(n.to_string().as_bytes());
                self.keep(b);
                Frame::Line
            }
        }
    }

    /// The stream ended: a last line without its newline is a message.
    pub fn finish(&mut self, out: &mut Vec<(Vec<u8>, bool)>) {
        if self.state == Frame::Line && !self.current.is_empty() {
            self.emit(out);
        }
        self.state = Frame::Start;
    }

    fn keep(&mut self, b: u8) {
        if self.current.len() < self.max {
            self.current.push(b);
        } else {
            self.cut = true;
        }
    }

    fn emit(&mut self, out: &mut Vec<(Vec<u8>, bool)>) {
        let mut message = std::mem::take(&mut self.current);
        if message.last() == Some(&b'\r') {
            message.pop();
        }
        if !message.is_empty() || self.cut {
            out.push((message, std::mem::take(&mut self.cut)));
        }
        self.cut = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(input: &[u8], max: usize, chunk: usize) -> Vec<(Vec<u8>, bool)> {
        let mut framer = Framer::new(max);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            framer.push(c, &mut out);
        }
        framer.finish(&mut out);
        out
    }

    #[test]
    fn octet_counting_and_lines_are_detected_per_message() {
        let got = frames(b"11 <13>1 hello<13>line one\r\n5 <a\nb\n<14>last", 100, 3);
        let want: Vec<(Vec<u8>, bool)> = vec![
            (b"<13>1 hello".to_vec(), false),
            (b"<13>line one".to_vec(), false),
            (b"<a\nb\n".to_vec(), false),
            (b"<14>last".to_vec(), false),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn oversize_messages_are_cut_and_flagged_in_both_framings() {
        let got = frames(b"10 <123456789<13>abcdefgh\nok\n", 4, 5);
        assert_eq!(
            got,
            vec![
                (b"<123".to_vec(), true),
                (b"<13>".to_vec(), true),
                (b"ok".to_vec(), false)
            ]
        );
    }

    #[test]
    fn a_line_starting_with_digits_is_a_line() {
        assert_eq!(
            frames(b"2024 was a year\n", 100, 100),
            vec![(b"2024 was a year".to_vec(), false)]
        );
        assert_eq!(
            frames(b"12:30 ok\n", 100, 100),
            vec![(b"12:30 ok".to_vec(), false)]
        );
    }

    proptest! {
        #[test]
        fn chunking_never_changes_octet_counted_frames(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10), chunk in 1usize..20) {
            let msgs: Vec<Vec<u8>> = bodies.into_iter().map(|b| [b"<".to_vec(), b].concat()).collect();
            let mut input = Vec::new();
            for m in &msgs {
                input.extend_from_slice(format!("{} ", m.len()).as_bytes());
                input.extend_from_slice(m);
            }
            let got = frames(&input, 1000, chunk);
            let want: Vec<(Vec<u8>, bool)> = msgs.iter().map(|m| {
                let mut m = m.clone();
                if m.last() == Some(&b'\r') { m.pop(); }
                (m, false)
            }).filter(|(m, _)| !m.is_empty()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
