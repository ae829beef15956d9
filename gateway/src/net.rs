//! Accepting TCP connections under overload: no spinning on accept errors,
//! clean refusals when descriptors run out, and warnings at a bounded rate.
//!
//! When the process is out of descriptors (`EMFILE`, `ENFILE`), `accept`
//! fails and the waiting connection stays in the kernel's backlog, so a
//! loop that retries at once spins on one core while the client hangs.
//! [`Acceptor`] keeps one descriptor in reserve: on exhaustion it gives the
//! reserve up, accepts the waiting connection, closes it at once (the client
//! sees the connection closed, not a hang) and takes the reserve back. The
//! connections already open are not touched, and once descriptors free up
//! accepting works again by itself.

use std::fs::File;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Pause after an accept error that shedding did not clear.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Logs one warning per `every`, with the count of the ones held back.
#[derive(Debug)]
pub struct RateLimitedWarning {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimitedWarning {
    pub fn new(every: Duration) -> RateLimitedWarning {
        RateLimitedWarning {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Logs `message` if the last warning is older than `every`; returns
    /// whether it did.
    pub fn warn(&mut self, what: &str, message: &dyn std::fmt::Display) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.held_back += 1;
            return false;
        }
        let held_back = std::mem::take(&mut self.held_back);
        tracing::warn!(held_back, "{what}: {message}");
        self.last = Some(now);
        true
    }
}

pub struct Acceptor {
    listener: TcpListener,
    /// Closed to make room for accepting (and closing) a connection when
    /// the process is out of descriptors.
    reserve: Option<File>,
    name: &'static str,
    warning: RateLimitedWarning,
}

impl Acceptor {
    pub fn new(listener: TcpListener, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            reserve: open_reserve(),
            name,
            warning: RateLimitedWarning::new(Duration::from_secs(10)),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection. Errors are logged (at a bounded rate) and waited
    /// out, never returned: a listener must outlive them.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(e) if out_of_descriptors(&e) => {
                    let shed = self.shed().await;
                    let what = format!("{} accept: out of descriptors", self.name);
                    let message =
                        "refusing new connections until some close (open ones are served)";
                    self.warning.warn(&what, &message);
                    if !shed {
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
                Err(e) => {
                    self.warning
                        .warn(&format!("{} accept failed", self.name), &e);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Refuses the connection at the head of the backlog by accepting and
    /// closing it with the reserve descriptor; whether it could.
    async fn shed(&mut self) -> bool {
        if self.reserve.take().is_none() {
            self.reserve = open_reserve();
            return false;
        }
        let accepted = tokio::time::timeout(ERROR_PAUSE, self.listener.accept()).await;
        drop(accepted);
        self.reserve = open_reserve();
        self.reserve.is_some()
    }
}

fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The soft limit on open descriptors, and how many are open now.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn descriptors() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    #[allow(clippy::useless_conversion)] // rlim_t is u32 on 32-bit ARM (armhf)
    let soft = u64::from(limit.rlim_cur);
    Some((soft, open))
}

/// Many idle sensors each hold a socket, and every segment of the log keeps
/// its files open: lift the soft descriptor limit to the hard one (best
/// effort; the accept loop copes with EMFILE anyway). the gateway calls it
/// before opening the log, so a log that grew under a raised limit can
/// be reopened.
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warnings_are_held_back_within_the_period_and_counted() {
        let mut w = RateLimitedWarning::new(Duration::from_secs(10));
        assert!(w.warn("x", &"first"));
        for _ in 0..100 {
            assert!(!w.warn("x", &"again"));
        }
        assert_eq!(w.held_back, 100);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(w.warn("x", &"later"));
        assert_eq!(w.held_back, 0);
    }
}
