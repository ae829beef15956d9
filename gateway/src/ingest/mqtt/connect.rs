//! One connection from CONNECT to close: the handshake (protocol version,
//! client id, authentication, limits), then the reader and the writer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties,
    Login, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::acl::Acl;
use super::auth::{self, AuthFailure, Credentials};
use super::codec::{self, Out, Version};
use super::error::ConnError;
use super::reader::{Ended, Reader};
use super::session::{self, Lease, SessionError};
use super::stats::MqttStats;
use super::will::Will;
use super::writer::Writer;
use super::Shared;

/// CONNECT carries ids, credentials and a will: 64 KiB is plenty.
const MAX_CONNECT_BYTES: usize = 64 << 10;
/// Read size while waiting for CONNECT (a typical CONNECT is under 200 bytes).
const CONNECT_READ_BYTES: usize = 256;
/// Topic aliases an MQTT 5 client may set up toward us (per connection).
pub const TOPIC_ALIAS_MAX: u16 = 32;
/// Longest client id we accept (MQTT 3.1.1 guarantees 23).
const MAX_CLIENT_ID_BYTES: usize = 128;
/// How long, and how many reads, a closing connection's input is drained.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_READS: usize = 256;
/// A write to the client that takes longer ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handshake settled for one connection.
pub struct Session {
    pub conn: u64,
    pub version: Version,
    pub client_id: String,
    /// The authenticated user (`None`: anonymous or by client certificate).
    pub username: Option<String>,
    pub acl: Acl,
    /// 1.5 times the effective keep-alive: silence longer than this ends it.
    pub silence_limit: Duration,
    /// Frames larger than this are refused (0x95) before being buffered;
    /// advertised to MQTT 5 clients as our Maximum Packet Size.
    pub max_frame_bytes: usize,
    /// The client's Maximum Packet Size: larger deliveries are not sent.
    pub client_max_packet: usize,
    /// QoS 1 deliveries we may have unacknowledged toward this client.
    pub client_receive_max: u16,
    /// Topic aliases we may set up toward this MQTT 5 client (its Topic
    /// Alias Maximum, capped at ours).
    pub client_alias_max: u16,
    /// Published if the connection ends without a normal DISCONNECT.
    pub will: Option<Will>,
    /// How long the session outlives the connection (0: it ends with it).
    pub session_expiry_s: u32,
    /// Signalled when a newer connection takes the client id over.
    pub kick: Arc<tokio::sync::Notify>,
    /// A persistent (or resumed) session: delivery from the log, state
    /// saved (`session.rs`). Taken by the writer.
    pub lease: Option<Lease>,
    /// The same session's state, for the reader (QoS 2, DISCONNECT).
    pub state: Option<session::Shared>,
}

/// Handshake, then serve until the connection ends. `client_id` is filled in
/// once known, so the caller can log it and unregister it.
pub async fn run<S>(
    stream: S,
    peer: SocketAddr,
    client_cert: bool,
    conn: u64,
    shared: &Arc<Shared>,
    client_id: &mut String,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + Duration::from_millis(shared.config.connect_timeout_ms);
    let version = read_connect_frame(&mut rd, &mut buf, deadline, shared).await?;
    let Some(version) = version else {
        // Unsupported protocol level: CONNACK 0x01 in the 3.1.1 format.
        write_out(&mut wr, version_refusal(), Version::V4).await?;
        MqttStats::inc(&shared.stats.connect_refused);
        return Err(ConnError::Refused("unsupported protocol level".into()));
    };
    let incoming = codec::decode(&mut buf, version, MAX_CONNECT_BYTES)?
        .ok_or_else(|| ConnError::Protocol("CONNECT frame vanished".into()))?;
    let Packet::Connect(connect, props, will, will_props, login) = incoming.packet else {
        return Err(ConnError::Protocol(
            "the first packet must be CONNECT".into(),
        ));
    };
    let hello = Hello {
        connect,
        props,
        will,
        will_props,
        login,
        client_cert,
        peer,
        deadline,
    };
    // Boxed, as the phases below: a connection holds the memory of the phase
    // it is in, not of the largest one.
    let (session, connack) = match Box::pin(handshake(hello, version, conn, shared)).await {
        Ok(accepted) => accepted,
        Err((connack, reason)) => {
            write_out(&mut wr, connack, version).await?;
            return Err(ConnError::Refused(reason));
        }
    };
    write_out(&mut wr, connack, version).await?;
    *client_id = session.client_id.clone();
    tracing::debug!(%peer, client_id, ?version, "mqtt client connected");
    Box::pin(serve(rd, wr, buf, session, shared)).await
}

/// Reads until a whole CONNECT frame is buffered, within the connect
/// timeout. Returns its codec, or `None` for an unsupported protocol level.
async fn read_connect_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    deadline: Instant,
    shared: &Shared,
) -> Result<Option<Version>, ConnError> {
    let timeout_ms = shared.config.connect_timeout_ms;
    loop {
        if let Some(len) = codec::frame_length(buf, MAX_CONNECT_BYTES).inspect_err(|_| {
            MqttStats::inc(&shared.stats.malformed_packets);
        })? {
            let level = codec::connect_level(&buf[..len]).inspect_err(|_| {
                MqttStats::inc(&shared.stats.malformed_packets);
            })?;
            return Ok(match level {
                4 => Some(Version::V4),
                5 => Some(Version::V5),
                _ => None,
            });
        }
        // Small reads: a byte-a-second client holds a few hundred bytes, and
        // `frame_length` refuses a header announcing more than MAX_CONNECT_BYTES.
        buf.reserve(CONNECT_READ_BYTES);
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Err(_) => {
                MqttStats::inc(&shared.stats.connect_timeouts);
                return Err(ConnError::ConnectTimeout(timeout_ms));
            }
            Ok(Ok(0)) => {
                return Err(ConnError::Protocol(
                    "connection closed before CONNECT".into(),
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

fn version_refusal() -> Out {
    Out::ConnAck {
        code: ConnectReturnCode::RefusedProtocolVersion,
        session_present: false,
        properties: None,
    }
}

/// The CONNECT packet's parts.
struct Hello {
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<LastWill>,
    will_props: Option<LastWillProperties>,
    login: Option<Login>,
    client_cert: bool,
    peer: SocketAddr,
    /// The CONNECT deadline, which the password check must meet too.
    deadline: Instant,
}

type Refusal = (Out, String);

/// Decides on a CONNECT: the session and its CONNACK, or the refusing CONNACK.
async fn handshake(
    hello: Hello,
    version: Version,
    conn: u64,
    shared: &Arc<Shared>,
) -> Result<(Session, Out), Refusal> {
    let config = &shared.config;
    let stats = &shared.stats;
    let refuse = |code: ConnectReturnCode, why: &str| {
        let counter = match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                Some(&stats.auth_failures)
            }
            // Counted by the gate (`GateStats`).
            ConnectReturnCode::ServerBusy | ConnectReturnCode::ConnectionRateExceeded => None,
            _ => Some(&stats.connect_refused),
        };
        counter.into_iter().for_each(MqttStats::inc);
        (
            Out::ConnAck {
                code,
                session_present: false,
                properties: None,
            },
            why.to_string(),
        )
    };
    check_session_request(&hello, version).map_err(|(c, why)| refuse(c, why))?;
    let (client_id, assigned) = client_id(&hello.connect, version, conn)
        .ok_or_else(|| refuse(ConnectReturnCode::ClientIdentifierNotValid, "client id"))?;
    let acl = authenticate(&hello, &client_id, shared)
        .await
        .map_err(|f| match f {
            AuthFailure::BadCredentials => refuse(
                ConnectReturnCode::BadUserNamePassword,
                "bad username or password",
            ),
            AuthFailure::NotAuthorized => refuse(
                ConnectReturnCode::NotAuthorized,
                "anonymous access is not allowed",
            ),
            AuthFailure::Throttled => refuse(
                ConnectReturnCode::ConnectionRateExceeded,
                "recent failed logins from this client id or address: slowed down",
            ),
            AuthFailure::Busy => refuse(
                ConnectReturnCode::ServerBusy,
                "too many connections waiting for a password check",
            ),
        })?;
    if hello
        .will
        .as_ref()
        .is_some_and(|w| !acl.may_publish(&String::from_utf8_lossy(&w.topic)))
    {
        return Err(refuse(
            ConnectReturnCode::NotAuthorized,
            "will topic not allowed by the ACL",
        ));
    }
    let requested_expiry = match version {
        Version::V4 if hello.connect.clean_session => 0,
        Version::V4 => u32::MAX,
        Version::V5 => hello
            .props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
    };
    let expiry_s = requested_expiry.min(shared.sessions.max_expiry_s());
    let kick = shared.register(&client_id, conn);
    let acquired = shared
        .sessions
        .acquire(&client_id, hello.connect.clean_session, expiry_s)
        .await;
    let (lease, present) = match acquired {
        Ok(taken) => taken,
        Err(e) => {
            shared.unregister(&client_id, conn);
            let code = match e {
                SessionError::Full(_) => ConnectReturnCode::QuotaExceeded,
                SessionError::Busy => ConnectReturnCode::ServerBusy,
            };
            return Err(refuse(code, &e.to_string()));
        }
    };
    let lease = (expiry_s > 0 || present).then_some(lease);
    let requested_ka = hello.connect.keep_alive;
    let keep_alive_s = match requested_ka {
        0 => config.keep_alive_max_s,
        ka => ka.min(config.keep_alive_max_s),
    };
    let props = hello.props.as_ref();
    let username = hello.login.as_ref().map(|l| l.username.clone());
    let session = Session {
        conn,
        version,
        client_id,
        username: username.filter(|u| !u.is_empty()),
        acl,
        silence_limit: Duration::from_millis(u64::from(keep_alive_s) * 1500),
        max_frame_bytes: config.max_payload_bytes,
        client_max_packet: props
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| m as usize),
        client_receive_max: props
            .and_then(|p| p.receive_maximum)
            .unwrap_or(config.receive_maximum)
            .max(1),
        client_alias_max: props
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0)
            .min(TOPIC_ALIAS_MAX),
        will: hello
            .will
            .map(|w| Will::from_connect(w, hello.will_props, conn)),
        session_expiry_s: expiry_s,
        kick,
        state: lease.as_ref().map(|l| l.state.clone()),
        lease,
    };
    let connack = Out::ConnAck {
        code: ConnectReturnCode::Success,
        session_present: present,
        properties: Some(Box::new(connack_properties(
            &session,
            config,
            (keep_alive_s != requested_ka).then_some(keep_alive_s),
            assigned,
            (version == Version::V5 && requested_expiry > expiry_s).then_some(expiry_s),
        ))),
    };
    Ok((session, connack))
}

/// Enhanced authentication is not offered (say so instead of pretending),
/// and a 3.1.1 session needs a client id.
fn check_session_request(
    hello: &Hello,
    version: Version,
) -> Result<(), (ConnectReturnCode, &'static str)> {
    if version == Version::V4 && !hello.connect.clean_session && hello.connect.client_id.is_empty()
    {
        // MQTT 3.1.1 [MQTT-3.1.3-8]: a session needs an id to be found again.
        return Err((
            ConnectReturnCode::ClientIdentifierNotValid,
            "an empty client id needs clean_session = 1",
        ));
    }
    if hello
        .props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        return Err((
            ConnectReturnCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        ));
    }
    Ok(())
}

/// The client id to use and, when the server made it up, that id to tell
/// an MQTT 5 client. Ids that could widen an ACL pattern are refused.
fn client_id(connect: &Connect, version: Version, conn: u64) -> Option<(String, Option<String>)> {
    let id = &connect.client_id;
    if id.is_empty() {
        // 3.1.1 allows an empty id only with a clean session (checked before).
        let made = format!("tidewell-auto-{conn}");
        return Some((made.clone(), (version == Version::V5).then_some(made)));
    }
    let acceptable = id.len() <= MAX_CLIENT_ID_BYTES
        && !id.contains(['/', '+', '#'])
        && !id.chars().any(char::is_control);
    acceptable.then(|| (id.clone(), None))
}

async fn authenticate(
    hello: &Hello,
    client_id: &str,
    shared: &Arc<Shared>,
) -> Result<Acl, AuthFailure> {
    let login = hello.login.as_ref().filter(|l| !l.username.is_empty());
    let who = Credentials {
        addr: hello.peer.ip(),
        client_id,
        username: login.map(|l| l.username.as_str()),
        password: login.map(|l| l.password.as_bytes()),
        client_cert: hello.client_cert,
    };
    auth::authenticate(&shared.live.auth(), &shared.gate, &who, hello.deadline).await
}

fn connack_properties(
    session: &Session,
    config: &super::MqttConfig,
    server_keep_alive: Option<u16>,
    assigned_client_identifier: Option<String>,
    session_expiry_interval: Option<u32>,
) -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval,
        receive_max: Some(config.receive_maximum),
        retain_available: Some(1),
        max_packet_size: u32::try_from(session.max_frame_bytes).ok(),
        assigned_client_identifier,
        wildcard_subscription_available: Some(1),
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive,
        ..ConnAckProperties::default()
    }
}

async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: Out,
    version: Version,
) -> Result<(), ConnError> {
    let mut buf = BytesMut::with_capacity(64);
    codec::encode(out, version, &mut buf)?;
    let write = async {
        wr.write_all(&buf).await?;
        wr.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConnError::WriteTimeout),
    }
}

/// Runs the reader here and the writer in its own task, joined by the FIFO.
async fn serve<R, W>(
    mut rd: R,
    wr: W,
    mut buf: BytesMut,
    session: Session,
    shared: &Arc<Shared>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut session = session;
    let kick = session.kick.clone();
    let _watched = shared
        .live
        .watch(session.conn, session.username.as_deref(), kick.clone());
    let (fifo_tx, fifo_rx) = mpsc::channel(usize::from(shared.config.receive_maximum));
    let pending_qos2: HashSet<u16> = session
        .state
        .as_ref()
        .map(|s| session::lock(s).inbound_qos2.iter().copied().collect())
        .unwrap_or_default();
    let qos2 = Arc::new(Mutex::new(pending_qos2));
    let qos1_unacked = Arc::new(AtomicUsize::new(0));
    let lease = session.lease.take();
    let writer = Writer::new(
        wr,
        &session,
        shared.clone(),
        qos2.clone(),
        qos1_unacked.clone(),
        lease,
    );
    let mut writer = tokio::spawn(writer.run(fifo_rx));
    let mut reader = Reader::new(session, shared.clone(), fifo_tx, qos2, qos1_unacked);
    let ended = tokio::select! {
        ended = reader.run(&mut rd, &mut buf, &kick) => ended,
        written = &mut writer => {
            reader.publish_will();
            return written.unwrap_or(Err(ConnError::Shutdown));
        }
    };
    if !matches!(ended, Ok(Ended::Disconnect)) {
        reader.publish_will();
    }
    drop(reader);
    let written = writer.await.unwrap_or(Err(ConnError::Shutdown));
    if ended.is_err() {
        linger(&mut rd).await;
    }
    ended.and(written)
}

/// After we close on a client (refusal, error), reads and discards what it
/// still sends for a moment: closing a socket with unread input makes the
/// kernel send a reset, which can destroy our DISCONNECT before the client
/// reads its reason code.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    // On the heap: on the stack it would be part of every connection's state.
    let mut sink = vec![0u8; 4096];
    let discard = async {
        for _ in 0..LINGER_READS {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}
