//! A TCP proxy that counts the bytes its clients send through it: the
//! bytes a producer puts on the wire toward a broker, measured outside the
//! producer (the broker advertises the proxy's address, so every connection
//! a Kafka client makes after the bootstrap one goes through it too).
//!
//! Two copying threads per connection; the threads of a connection end
//! when either side closes. Dropping the proxy stops accepting.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct CountingProxy {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Listens on `listen` (port 0: a free one) and forwards to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<CountingProxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(&client, &server, Some(count.clone()));
                pipe(&server, &client, None);
            }
        });
        Ok(CountingProxy { addr, sent, stop })
    }

    /// Bytes clients sent through the proxy so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// Copies `from` to `to` on a thread of its own, counting into `count`.
fn pipe(from: &TcpStream, to: &TcpStream, count: Option<Arc<AtomicU64>>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Counted before it is passed on: once the peer answered, the
            // count includes what it answered.
            if let Some(c) = &count {
                c.fetch_add(n as u64, Ordering::AcqRel);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}
