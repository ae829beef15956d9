//! Benchmarks: each measures Tidewell and the peer named in its issue side by
//! side in one run, on this machine, and prints ratios.

pub mod bridge;
#[cfg(feature = "bench-mqtt")]
pub mod catchup;
pub mod connect;
#[cfg(feature = "bench-mqtt")]
pub mod fanout;
pub mod http;
pub mod journal;
pub mod log;
pub mod modbus;
#[cfg(feature = "bench-mqtt")]
pub mod mqtt;
pub mod open;
pub mod proxy;
pub mod replicate;
#[cfg(feature = "sim")]
pub mod serial;
#[cfg(feature = "bench-mqtt")]
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use anyhow::Context;

/// Starts `tidewell run --config CONFIG` (this binary) and waits, at most
/// 30 s, for its `ready` line; returns the child and its MQTT address (none
/// when MQTT is off). Its stderr is drained after that.
pub fn start_gateway(config: &std::path::Path) -> anyhow::Result<(Child, Option<SocketAddr>)> {
    let (child, ready) = start_gateway_ready(config)?;
    Ok((child, ready.addr("mqtt")?))
}

/// The gateway's `ready` line: `tidewell: ready mqtt=ADDR http=ADDR ...`.
pub struct Ready(String);

impl Ready {
    /// The address named `name` (`mqtt`, `http`, ...), if the line has one.
    pub fn addr(&self, name: &str) -> anyhow::Result<Option<SocketAddr>> {
        let prefix = format!("{name}=");
        Ok(self
            .0
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .map(str::parse)
            .transpose()?)
    }
}

/// As [`start_gateway`], returning the whole ready line.
pub fn start_gateway_ready(config: &std::path::Path) -> anyhow::Result<(Child, Ready)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(config)
        .env("TIDEWELL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting tidewell")?;
    match wait_ready(&mut child) {
        Ok(line) => Ok((child, Ready(line))),
        Err(e) => {
            stop(&mut child);
            Err(e)
        }
    }
}

/// Reads the child's stderr up to its `ready` line (other lines are passed
/// on) and returns it.
fn wait_ready(child: &mut Child) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("tidewell: ready") {
                let _ = tx.send(line);
            } else {
                eprintln!("{line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("tidewell did not print its ready line")
}

/// A gateway started by [`with_tidewell`].
pub struct Tidewell {
    pub pid: u32,
    pub mqtt: SocketAddr,
    /// Its observability endpoint (`/metrics`, `/status`).
    pub http: SocketAddr,
}

impl Tidewell {
    /// The unlabelled sample `name` of its `/metrics`.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = crate::observe::get(&self.http.to_string(), "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }
}

/// Runs `body` against a gateway of its own: `tidewell run` on a fresh
/// directory `DIR/NAME-PID` (removed afterwards) with the embedded defaults
/// (fsync `always`, anonymous loopback clients may publish and subscribe
/// any topic) but for free loopback ports and room for payloads of
/// `payload_bytes`. Stopped with SIGTERM when `body` returns.
pub fn with_tidewell<T>(
    dir: &std::path::Path,
    name: &str,
    payload_bytes: usize,
    body: impl FnOnce(&Tidewell) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let root = dir.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = (|| {
        let config = root.join("tidewell.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_payload_bytes = {}\n",
                root.join("data"),
                payload_bytes.max(1024)
            ),
        )?;
        let (mut child, ready) = start_gateway_ready(&config)?;
        let addrs = ready
            .addr("mqtt")
            .and_then(|m| Ok((m, ready.addr("http")?)));
        let result = match addrs {
            Ok((Some(mqtt), Some(http))) => body(&Tidewell {
                pid: child.id(),
                mqtt,
                http,
            }),
            Ok(_) => Err(anyhow::anyhow!(
                "no mqtt= or http= address in the ready line"
            )),
            Err(e) => Err(e),
        };
        stop(&mut child);
        result
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// Runs `body` against a Mosquitto 2 of its own ([`start_mosquitto`]),
/// stopped when `body` returns.
pub fn with_mosquitto<T>(
    body: impl FnOnce(&Child, SocketAddr) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (mut child, addr) = start_mosquitto()?;
    let result = body(&child, addr);
    stop(&mut child);
    result
}

/// `GET path` on the gateway's loopback HTTP port, as JSON.
pub fn http_get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = crate::observe::get(&addr.to_string(), path)?;
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}

#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A socat pseudo-terminal pair in `dir`: the gateway's end (`ttyGW`) and
/// the device's end (`ttyDEV`), both there when this returns.
pub fn pty_pair(
    dir: &std::path::Path,
) -> anyhow::Result<(KillOnDrop, std::path::PathBuf, std::path::PathBuf)> {
    let (gw_end, dev_end) = (dir.join("ttyGW"), dir.join("ttyDEV"));
    let socat = KillOnDrop(
        std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", gw_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", dev_end.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting socat (apt-get install socat)")?,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(gw_end.exists() && dev_end.exists()) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("socat made no pseudo-terminals in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20)); // socat has no ready signal
    }
    Ok((socat, gw_end, dev_end))
}

/// User plus system CPU time of a process so far (`/proc/PID/stat`).
#[allow(unsafe_code)] // audited: see the SAFETY comment inside
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(11) + field(12)) / per_second)
}

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Mosquitto 2 with its defaults (no persistence, anonymous loopback
/// clients) on a free loopback port, once it listens.
pub fn start_mosquitto() -> anyhow::Result<(Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            stop(&mut child);
            anyhow::bail!("mosquitto did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

/// rumqttc clients shared by the MQTT benches (`mqtt`, `fanout`, `catchup`):
/// every wait on the broker is bounded, and a refusal is a typed error.
#[cfg(feature = "bench-mqtt")]
pub mod clients {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use rumqttc::{
        AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
        Packet, QoS, SubscribeReasonCode,
    };

    /// How long one handshake step (CONNACK, SUBACK, the close after
    /// DISCONNECT) may take.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Why a bench client could not do its part.
    #[derive(Debug, thiserror::Error)]
    pub enum PeerError {
        #[error("{client}: CONNACK 0x{code:02x} ({reason})")]
        Refused {
            client: String,
            code: u8,
            reason: &'static str,
        },
        #[error("{client}: SUBACK refused {filter}")]
        SubscribeRefused { client: String, filter: String },
        #[error("{client}: no {awaited} within {timeout_ms} ms")]
        Timeout {
            client: String,
            awaited: &'static str,
            timeout_ms: u128,
        },
        #[error("{client}: {source}")]
        Connection {
            client: String,
            #[source]
            source: ConnectionError,
        },
        #[error("{client}: {source}")]
        Request {
            client: String,
            #[source]
            source: rumqttc::ClientError,
        },
    }

    /// QoS from its number (the benches' `--qos` is checked to be 0..=2).
    pub fn qos(level: u8) -> QoS {
        match level {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// MQTT 3.1.1 options for client `id` of `addr`: 60 s keep-alive,
    /// packets of `payload_bytes` plus 1 KiB of header room both ways.
    pub fn options(id: &str, addr: SocketAddr, payload_bytes: usize) -> MqttOptions {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        options.set_max_packet_size(payload_bytes + 1024, payload_bytes + 1024);
        options
    }

    /// A connected client, its event loop and the CONNACK's session present flag.
    pub struct Connected {
        pub client: AsyncClient,
        pub events: EventLoop,
        pub session_present: bool,
    }

    /// Connects with `options` (requests queue up to `capacity`) and waits,
    /// at most [`HANDSHAKE_TIMEOUT`], for an accepting CONNACK.
    pub async fn connect(options: MqttOptions, capacity: usize) -> Result<Connected, PeerError> {
        let id = options.client_id();
        let (client, mut events) = AsyncClient::new(options, capacity);
        loop {
            match next_event(&mut events, &id, HANDSHAKE_TIMEOUT, "CONNACK").await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return Ok(Connected {
                        client,
                        events,
                        session_present: ack.session_present,
                    })
                }
                Ok(_) => {}
                Err(PeerError::Connection {
                    source: ConnectionError::ConnectionRefused(code),
                    ..
                }) => return Err(refused(id, code)),
                Err(e) => return Err(e),
            }
        }
    }

    fn refused(client: String, code: ConnectReturnCode) -> PeerError {
        let reason = match code {
            ConnectReturnCode::Success => "accepted",
            ConnectReturnCode::RefusedProtocolVersion => "protocol version",
            ConnectReturnCode::BadClientId => "client id rejected",
            ConnectReturnCode::ServiceUnavailable => "server unavailable",
            ConnectReturnCode::BadUserNamePassword => "bad user name or password",
            ConnectReturnCode::NotAuthorized => "not authorized",
        };
        PeerError::Refused {
            client,
            code: code as u8,
            reason,
        }
    }

    /// Subscribes to `filter` and waits, at most [`HANDSHAKE_TIMEOUT`], for
    /// a granting SUBACK.
    pub async fn subscribe(peer: &mut Connected, filter: &str, qos: QoS) -> Result<(), PeerError> {
        let id = peer.events.mqtt_options.client_id();
        let request = |source| PeerError::Request {
            client: id.clone(),
            source,
        };
        peer.client.try_subscribe(filter, qos).map_err(request)?;
        loop {
            let event = next_event(&mut peer.events, &id, HANDSHAKE_TIMEOUT, "SUBACK").await?;
            if let Event::Incoming(Packet::SubAck(ack)) = event {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    return Err(PeerError::SubscribeRefused {
                        client: id,
                        filter: filter.into(),
                    });
                }
                return Ok(());
            }
        }
    }

    /// Sends DISCONNECT and waits, at most [`HANDSHAKE_TIMEOUT`], for the
    /// broker to close the connection: what was queued before it has left.
    pub async fn disconnect(mut peer: Connected) -> Result<(), PeerError> {
        let id = peer.events.mqtt_options.client_id();
        peer.client
            .try_disconnect()
            .map_err(|source| PeerError::Request {
                client: id.clone(),
                source,
            })?;
        loop {
            match next_event(&mut peer.events, &id, HANDSHAKE_TIMEOUT, "close").await {
                Ok(_) => {}
                Err(PeerError::Connection { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event of `events`, waiting at most `timeout` for it.
    pub async fn next_event(
        events: &mut EventLoop,
        client: &str,
        timeout: Duration,
        awaited: &'static str,
    ) -> Result<Event, PeerError> {
        match tokio::time::timeout(timeout, events.poll()).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(source)) => Err(PeerError::Connection {
                client: client.into(),
                source,
            }),
            Err(_) => Err(PeerError::Timeout {
                client: client.into(),
                awaited,
                timeout_ms: timeout.as_millis(),
            }),
        }
    }

    /// The head of every bench payload: when it was handed to the client
    /// (microseconds since the run's base instant), by which publisher,
    /// its number there. Little-endian, 16 bytes; the rest is padding.
    #[derive(Debug, Clone, Copy)]
    pub struct Stamp {
        pub sent_us: u64,
        pub publisher: u32,
        pub seq: u32,
    }

    impl Stamp {
        pub const LEN: usize = 16;

        /// A payload of `size` bytes (at least [`Stamp::LEN`]) starting with this stamp.
        pub fn payload(&self, size: usize) -> Vec<u8> {
            let mut payload = Vec::with_capacity(size.max(Self::LEN));
            payload.extend_from_slice(&self.sent_us.to_le_bytes());
            payload.extend_from_slice(&self.publisher.to_le_bytes());
            payload.extend_from_slice(&self.seq.to_le_bytes());
            payload.resize(size.max(Self::LEN), b'x');
            payload
        }

        pub fn read(payload: &[u8]) -> Option<Stamp> {
            let head = payload.get(..Self::LEN)?;
            let (sent_us, rest) = head.split_at(8);
            let (publisher, seq) = rest.split_at(4);
            Some(Stamp {
                sent_us: u64::from_le_bytes(sent_us.try_into().ok()?),
                publisher: u32::from_le_bytes(publisher.try_into().ok()?),
                seq: u32::from_le_bytes(seq.try_into().ok()?),
            })
        }
    }

    /// Microseconds from `base` to now.
    pub fn micros_since(base: Instant) -> u64 {
        base.elapsed().as_micros() as u64
    }

    /// What one publisher sends.
    #[derive(Debug, Clone)]
    pub struct Load {
        pub topic: String,
        pub qos: QoS,
        pub messages: u32,
        pub size: usize,
        /// Unacknowledged publishes at most (QoS 0: unsent ones).
        pub window: u16,
        pub publisher: u32,
        /// The longest wait for one acknowledgement.
        pub ack_timeout: Duration,
    }

    /// Publishes `load` with stamped payloads (stamped when handed to the
    /// client, with fewer than `window` ahead of it), until every message is
    /// acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP) or sent (QoS 0).
    pub async fn publish(
        peer: &mut Connected,
        load: &Load,
        base: Instant,
    ) -> Result<(), PeerError> {
        let id = peer.events.mqtt_options.client_id();
        let (mut handed, mut done) = (0u32, 0u32);
        while done < load.messages {
            while handed < load.messages && handed - done < u32::from(load.window) {
                let stamp = Stamp {
                    sent_us: micros_since(base),
                    publisher: load.publisher,
                    seq: handed,
                };
                peer.client
                    .try_publish(&load.topic, load.qos, false, stamp.payload(load.size))
                    .map_err(|source| PeerError::Request {
                        client: id.clone(),
                        source,
                    })?;
                handed += 1;
            }
            let event =
                next_event(&mut peer.events, &id, load.ack_timeout, "acknowledgement").await?;
            if completes(&event, load.qos) {
                done += 1;
            }
        }
        Ok(())
    }

    /// Whether `event` finishes one publish at `qos`.
    fn completes(event: &Event, qos: QoS) -> bool {
        matches!(
            (event, qos),
            (Event::Outgoing(Outgoing::Publish(_)), QoS::AtMostOnce)
                | (Event::Incoming(Packet::PubAck(_)), QoS::AtLeastOnce)
                | (Event::Incoming(Packet::PubComp(_)), QoS::ExactlyOnce)
        )
    }

    /// The `p` quantile (0..=1) of sorted microseconds, in milliseconds.
    pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
        if sorted_us.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
        sorted_us[i] as f64 / 1000.0
    }
}
