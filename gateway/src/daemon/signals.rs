//! The stop signals: SIGTERM (systemd's stop) and SIGINT (Ctrl-C); and
//! SIGHUP, the reload (`ExecReload=/bin/kill -HUP $MAINPID`).

pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
pub enum Asked {
    Stop,
    Reload,
}

impl StopSignals {
    /// Must run inside the runtime. Installed before anything announces
    /// readiness, so a stop request right after `ready` is a clean stop.
    pub fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Stop,
            _ = self.int.recv() => Asked::Stop,
            _ = self.hup.recv() => Asked::Reload,
        }
    }
}
