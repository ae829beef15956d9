//! Resetting a failed session's broker connections, so that nothing it
//! still had in a kernel socket buffer can reach the broker later.
//!
//! A TCP socket closed the ordinary way (FIN) leaves its unsent bytes with
//! the kernel, which keeps retransmitting them for minutes after the
//! process let go. On a cut link those bytes can be produce requests of the
//! failed session: when the link returns they reach the broker and are
//! appended, after the next session has read the remote tail, so they
//! would be duplicates. With `SO_LINGER {on, 0}` a close discards the send
//! queue and sends RST instead.
//!
//! librdkafka makes its sockets itself (rdkafka offers no socket hook), so
//! the replicator finds this process's TCP sockets whose peer is a broker
//! of the cluster and sets the option on them: once a second while records
//! are in flight (librdkafka also closes connections itself, on a request
//! timeout, and reconnects), and at teardown before the producer is
//! destroyed. The next session reads the remote tails only after that
//! destroy has finished, so by then every connection of the failed session
//! is gone, and so is everything it had not yet delivered.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

/// The addresses `bootstrap.servers` resolves to (`host:port` entries,
/// optionally with a `scheme://` prefix).
pub fn bootstrap_addrs(servers: &str) -> HashSet<SocketAddr> {
    servers
        .split(',')
        .map(|s| s.trim().rsplit("://").next().unwrap_or(""))
        .filter(|s| !s.is_empty())
        .flat_map(|s| s.to_socket_addrs().into_iter().flatten())
        .collect()
}

/// The addresses a broker of the cluster metadata resolves to.
pub fn broker_addrs(host: &str, port: i32) -> Vec<SocketAddr> {
    u16::try_from(port)
        .ok()
        .and_then(|port| (host, port).to_socket_addrs().ok())
        .into_iter()
        .flatten()
        .collect()
}

/// Makes every TCP socket of this process connected to one of `brokers`
/// reset (and drop its unsent bytes) when it is closed. Returns how many.
pub fn reset_on_close(brokers: &HashSet<SocketAddr>) -> usize {
    broker_sockets(brokers)
        .into_iter()
        .filter(|&(fd, _)| set_linger_zero(fd))
        .count()
}

/// This process's TCP sockets connected to one of `brokers`: each
/// descriptor with its socket's inode (which, unlike the descriptor
/// number, is never reused while the socket lives).
pub fn broker_sockets(brokers: &HashSet<SocketAddr>) -> Vec<(i32, u64)> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let inode = socket_inode(&std::fs::read_link(entry.path()).ok()?)?;
            Some((fd, inode))
        })
        .filter(|&(fd, _)| peer(fd).is_some_and(|p| brokers.contains(&unmapped(p))))
        .collect()
}

/// The inode of a `/proc/self/fd` link target of the form `socket:[N]`.
fn socket_inode(target: &std::path::Path) -> Option<u64> {
    let name = target.to_str()?;
    name.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// An IPv4-mapped IPv6 peer as the IPv4 address it is.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(v4.into(), v6.port())),
        v4 => v4,
    }
}

/// The peer of `fd` when it is a connected TCP/IP socket.
#[allow(unsafe_code)] // audited: see the SAFETY comments inside
fn peer(fd: i32) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is a writable sockaddr_storage of `len` bytes; a
    // descriptor that is not a connected socket only makes the call fail.
    let rc = unsafe {
        libc::getpeername(
            fd,
            std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    sockaddr(&storage)
}

#[allow(unsafe_code)] // audited: see the SAFETY comments inside
fn sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// `SO_LINGER {on, 0}` on `fd`: its close resets the connection.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
fn set_linger_zero(fd: i32) -> bool {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a valid linger struct and its size; the descriptor is
    // a socket (getpeername succeeded) that librdkafka owns and closes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast::<libc::c_void>(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;

    #[test]
    fn bootstrap_servers_resolve_with_or_without_a_scheme() {
        let addrs = bootstrap_addrs("127.0.0.1:9092, PLAINTEXT://127.0.0.2:9093,");
        assert!(addrs.contains(&"127.0.0.1:9092".parse().unwrap()));
        assert!(addrs.contains(&"127.0.0.2:9093".parse().unwrap()));
        assert_eq!(addrs.len(), 2);
    }

    /// A socket to a "broker" is found and its close resets the connection
    /// (the peer reads ECONNRESET, not an orderly end), while a socket to
    /// another address is left alone.
    #[test]
    fn sockets_to_a_broker_reset_on_close_and_others_do_not() {
        let broker = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let to_broker = TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let to_other = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (mut broker_side, _) = broker.accept().unwrap();
        let (mut other_side, _) = other.accept().unwrap();
        let brokers = HashSet::from([broker.local_addr().unwrap()]);
        assert_eq!(reset_on_close(&brokers), 1, "exactly the broker socket");
        drop(to_broker);
        drop(to_other);
        broker_side
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        other_side
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 8];
        let reset = broker_side.read(&mut buf).unwrap_err();
        assert_eq!(reset.kind(), ErrorKind::ConnectionReset);
        assert_eq!(other_side.read(&mut buf).unwrap(), 0, "an orderly close");
        let _ = other_side.write_all(b"x");
    }
}
