//! What replication really puts on the wire: the bytes this process's TCP
//! sockets to the cluster's brokers have sent, read from the kernel.
//!
//! The bandwidth cap is about the bill of a metered link, so it must count
//! bytes after librdkafka compressed and framed them, plus every other
//! request (metadata, the start-up tail reads, TLS records). librdkafka
//! compresses inside its own threads, so the replicator cannot weigh a
//! request before it leaves. Instead it asks the kernel: `TCP_INFO` carries
//! `tcpi_bytes_sent` (Linux 4.19 and later; retransmissions included, as a
//! metered link bills them) or, on older kernels, `tcpi_bytes_acked`. The
//! sockets are those [`super::reset`] finds, keyed by their inode, so a
//! reused descriptor number is a new socket.
//!
//! What it misses: the bytes a socket sent after the last sample and before
//! it was closed (the runner samples at least once a second while a session
//! is up, and just before a session's connections are dropped), and TCP/IP
//! headers, which no counter at this level sees.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::reset;

/// Offsets in Linux's `struct tcp_info` (include/uapi/linux/tcp.h): 8 bytes
/// of u8 fields, 24 u32 fields, then u64 `pacing_rate`, `max_pacing_rate`,
/// `bytes_acked` at 120; `bytes_sent` sits at 200 after the fields added up
/// to Linux 4.19. The test below pins both against a real socket.
const BYTES_ACKED_AT: usize = 120;
const BYTES_SENT_AT: usize = 200;
const TCP_INFO_LEN: usize = 256;

/// Counts bytes sent to the brokers across samples.
#[derive(Debug, Default)]
pub struct WireMeter {
    /// Per socket inode: its count at the last sample.
    last: HashMap<u64, u64>,
    /// Everything counted so far.
    pub total: u64,
}

impl WireMeter {
    /// Bytes sent to `brokers` since the last sample (a new socket counts
    /// from its start); adds them to `total`.
    pub fn sample(&mut self, brokers: &HashSet<SocketAddr>) -> u64 {
        let mut now = HashMap::new();
        let mut delta = 0;
        for (fd, inode) in reset::broker_sockets(brokers) {
            if now.contains_key(&inode) {
                continue; // another descriptor of the same socket
            }
            let Some(sent) = bytes_sent(fd) else {
                continue;
            };
            let before = self.last.get(&inode).copied().unwrap_or(0);
            delta += sent.saturating_sub(before);
            now.insert(inode, sent);
        }
        self.last = now;
        self.total += delta;
        delta
    }
}

/// The bytes `fd` (a TCP socket) has sent, as the kernel counts them.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn bytes_sent(fd: i32) -> Option<u64> {
    let mut info = [0u8; TCP_INFO_LEN];
    let mut len = TCP_INFO_LEN as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes
    // at most `len` bytes and stores how many in `len`. A descriptor that is
    // not a TCP socket only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let len = len as usize;
    let at = if len >= BYTES_SENT_AT + 8 {
        BYTES_SENT_AT
    } else if len >= BYTES_ACKED_AT + 8 {
        BYTES_ACKED_AT
    } else {
        return None;
    };
    let field: [u8; 8] = info[at..at + 8].try_into().ok()?;
    Some(u64::from_ne_bytes(field))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    /// The offsets are right: a socket that wrote N bytes (all read by the
    /// peer, so all acknowledged on loopback) reports N.
    #[test]
    fn a_socket_reports_the_bytes_it_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let payload = vec![7u8; 12_345];
        client.write_all(&payload).unwrap();
        let mut got = vec![0u8; payload.len()];
        server.read_exact(&mut got).unwrap();
        // The peer read everything; the ack may still be on its way.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bytes_sent(client.as_raw_fd()) != Some(12_345) && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        assert_eq!(bytes_sent(client.as_raw_fd()), Some(12_345));
        assert_eq!(bytes_sent(server.as_raw_fd()), Some(0));
    }

    /// The meter counts a broker's sockets from their start, once (also
    /// when two descriptors share a socket), and ignores sockets to other peers.
    #[test]
    fn the_meter_counts_each_broker_socket_once() {
        let broker = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut to_broker = TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let mut to_other = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (mut b, _) = broker.accept().unwrap();
        let (mut o, _) = other.accept().unwrap();
        let brokers = HashSet::from([broker.local_addr().unwrap()]);
        let _second_descriptor = to_broker.try_clone().unwrap();
        let mut meter = WireMeter::default();
        to_broker.write_all(&[1u8; 1000]).unwrap();
        to_other.write_all(&[1u8; 500]).unwrap();
        let mut sink = [0u8; 1000];
        b.read_exact(&mut sink).unwrap();
        o.read_exact(&mut sink[..500]).unwrap();
        assert_eq!(meter.sample(&brokers), 1000);
        assert_eq!(meter.sample(&brokers), 0, "nothing new");
        to_broker.write_all(&[1u8; 300]).unwrap();
        b.read_exact(&mut sink[..300]).unwrap();
        assert_eq!(meter.sample(&brokers), 300);
        assert_eq!(meter.total, 1300);
    }
}
