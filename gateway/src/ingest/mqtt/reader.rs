//! The reading half of a connection: decodes packets, appends publishes to
//! the log (without waiting for the disk) and queues what the writer must
//! send, in arrival order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    valid_filter, DisconnectReasonCode, Packet, Publish, PublishProperties, Subscribe,
    SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::codec::{self, qos_of, Incoming, Out, PublishMeta, Reason, Version};
use super::connect::{Session, TOPIC_ALIAS_MAX};
use super::error::{CodecError, ConnError};
use super::message::{Live, Props};
use super::stats::MqttStats;
use super::writer::{Answer, Entry, Pending, Sub};
use super::Shared;
use crate::log::{self, AppendError, AppendTicket, Record};

/// How long a publish waits for room while the log writer is behind
/// (`AppendError::Overloaded`) before it is refused with 0x97.
const OVERLOAD_WAIT: Duration = Duration::from_secs(5);
/// Limits of one batch of publishes appended together.
const MAX_BATCH_RECORDS: usize = 64;
const MAX_BATCH_BYTES: usize = 256 << 10;
/// Spare room kept in the read buffer while packets keep coming, so a burst
/// is read in few syscalls.
const READ_RESERVE: usize = 8 << 10;
/// What an idle connection's read buffer holds: enough for a PINGREQ or a
/// small publish; a read that fills it grows it to `READ_RESERVE`.
const IDLE_READ_BYTES: usize = 256;

/// Makes room for the next read and returns it: `READ_RESERVE` while the
/// last read filled what it had, else the idle size. An empty buffer that
/// grew in a burst is given back, so an idle connection holds only a few
/// hundred bytes. Returns the spare capacity.
fn size_read_buffer(buf: &mut BytesMut, filled: bool) -> usize {
    if buf.is_empty() && !filled && buf.capacity() > IDLE_READ_BYTES {
        *buf = BytesMut::new();
    }
    buf.reserve(if filled {
        READ_RESERVE
    } else {
        IDLE_READ_BYTES
    });
    buf.capacity() - buf.len()
}

/// How the client ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// DISCONNECT: no will.
    Disconnect,
    /// MQTT 5 DISCONNECT asking for the will, or TCP closed without one.
    Abrupt,
}

/// Publishes decoded from one read that go to the same partition: appended
/// together under one ticket, so a burst costs the log one request.
struct Batch {
    topic: String,
    partition: log::Partition,
    records: Vec<Record>,
    acks: Vec<Pending>,
    bytes: usize,
}

pub struct Reader {
    session: Session,
    batch: Option<Batch>,
    shared: Arc<Shared>,
    fifo: mpsc::Sender<Entry>,
    /// QoS 2 packet ids appended and not yet released (shared with the writer,
    /// which forgets an id whose append failed). Locked briefly, never
    /// across an await.
    qos2: Arc<Mutex<HashSet<u16>>>,
    /// QoS 1 publishes received and not yet acknowledged (the writer counts
    /// its PUBACKs down): with `qos2`, what MQTT 5's Receive Maximum bounds.
    qos1_unacked: Arc<AtomicUsize>,
    /// MQTT 5 topic aliases the client set up (at most `TOPIC_ALIAS_MAX`).
    aliases: HashMap<u16, Bytes>,
}

impl Reader {
    pub fn new(
        session: Session,
        shared: Arc<Shared>,
        fifo: mpsc::Sender<Entry>,
        qos2: Arc<Mutex<HashSet<u16>>>,
        qos1_unacked: Arc<AtomicUsize>,
    ) -> Reader {
        Reader {
            session,
            batch: None,
            shared,
            fifo,
            qos2,
            qos1_unacked,
            aliases: HashMap::new(),
        }
    }

    /// Reads and handles packets until the client leaves or misbehaves.
    pub async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        kick: &Notify,
    ) -> Result<Ended, ConnError> {
        let mut deadline = Instant::now() + self.session.silence_limit;
        let mut filled = false;
        loop {
            loop {
                let decoded =
                    codec::decode(buf, self.session.version, self.session.max_frame_bytes);
                let incoming = match decoded {
                    Ok(Some(incoming)) => incoming,
                    Ok(None) => break,
                    Err(e) => {
                        self.flush_batch().await?;
                        return Err(self.codec_failure(e));
                    }
                };
                deadline = Instant::now() + self.session.silence_limit;
                // Boxed: a packet's handling (its decoded form, the append)
                // is large, and an idle connection should not keep its room.
                if let Some(ended) = Box::pin(self.handle(incoming)).await? {
                    self.flush_batch().await?;
                    return Ok(ended);
                }
            }
            self.flush_batch().await?;
            let spare = size_read_buffer(buf, filled);
            tokio::select! {
                read = tokio::time::timeout_at(deadline, rd.read_buf(buf)) => match read {
                    Ok(Ok(0)) => return Ok(Ended::Abrupt),
                    Ok(Ok(n)) => filled = n >= spare,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => {
                        MqttStats::inc(&self.shared.stats.keep_alive_timeouts);
                        self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                        let ms = self.session.silence_limit.as_millis() as u64;
                        return Err(ConnError::KeepAliveTimeout(ms));
                    }
                },
                _ = kick.notified() => {
                    self.disconnect(DisconnectReasonCode::SessionTakenOver);
                    return Err(ConnError::TakenOver);
                }
            }
        }
    }

    /// Counts an undecodable frame and queues the matching DISCONNECT.
    fn codec_failure(&self, e: CodecError) -> ConnError {
        let stats = &self.shared.stats;
        match &e {
            CodecError::TooLarge { .. } => {
                MqttStats::inc(&stats.refused_too_large);
                self.disconnect(DisconnectReasonCode::PacketTooLarge);
            }
            _ => {
                MqttStats::inc(&stats.malformed_packets);
                self.disconnect(DisconnectReasonCode::MalformedPacket);
            }
        }
        ConnError::Codec(e)
    }

    /// Handles one packet; `Some` when the client disconnected.
    async fn handle(&mut self, incoming: Incoming) -> Result<Option<Ended>, ConnError> {
        if !matches!(incoming.packet, Packet::Publish(..)) {
            // Whatever this packet queues must follow the pending acks.
            self.flush_batch().await?;
        }
        match incoming.packet {
            Packet::Publish(publish, props) => {
                let meta = incoming
                    .meta
                    .ok_or_else(|| self.protocol("PUBLISH header"))?;
                self.on_publish(publish, props, meta).await?;
            }
            Packet::PubAck(ack, _) => self.queue(Entry::Delivered(ack.pkid)).await?,
            Packet::PubRec(rec, _) => self.queue(Entry::Received(rec.pkid)).await?,
            Packet::PubComp(comp, _) => self.queue(Entry::Delivered(comp.pkid)).await?,
            Packet::PubRel(rel, _) => {
                let known = self.qos2_lock().remove(&rel.pkid);
                let reason = if known {
                    Reason::Success
                } else {
                    Reason::PacketIdNotFound
                };
                self.queue(Entry::Send(Box::new(Out::PubComp(rel.pkid, reason))))
                    .await?;
            }
            Packet::Subscribe(subscribe, props) => {
                let id = props.and_then(|p| p.id);
                self.on_subscribe(subscribe, id).await?;
            }
            Packet::Unsubscribe(unsub, _) => {
                let out = Out::UnsubAck(unsub.pkid, unsub.filters.len());
                self.queue(Entry::Unsubscribe(Box::new((unsub.filters, out))))
                    .await?;
            }
            Packet::PingReq(_) => self.queue(Entry::Send(Box::new(Out::PingResp))).await?,
            Packet::Disconnect(d, props) => {
                let expiry = props.and_then(|p| p.session_expiry_interval);
                self.set_session_expiry(expiry);
                return Ok(Some(match d.reason_code {
                    DisconnectReasonCode::DisconnectWithWillMessage => Ended::Abrupt,
                    _ => Ended::Disconnect,
                }));
            }
            other => return Err(self.protocol(packet_name(&other))),
        }
        Ok(None)
    }

    async fn on_publish(
        &mut self,
        mut publish: Publish,
        props: Option<PublishProperties>,
        meta: PublishMeta,
    ) -> Result<(), ConnError> {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        MqttStats::inc(&stats.publishes_received);
        self.resolve_alias(&mut publish, props.as_ref()).await?;
        let ack = Answer::for_qos(meta.qos, meta.pkid);
        let duplicate = meta.qos == 2 && self.qos2_lock().contains(&meta.pkid);
        if !duplicate {
            self.count_inbound(meta.qos).await?;
        }
        let topic = match self.check_publish(&publish).await? {
            Ok(topic) => topic,
            Err(reason) => return self.refuse(ack, reason).await,
        };
        if meta.qos == 1 {
            let client_id = &self.session.client_id;
            if meta.dup
                && shared
                    .recent
                    .is_resend(client_id, meta.pkid, &publish.topic, &publish.payload)
            {
                // Durable before a crash, its PUBACK lost: ack, append never.
                MqttStats::inc(&stats.qos1_resends);
                self.flush_batch().await?;
                let puback = Out::PubAck(meta.pkid, Reason::Success);
                return self.queue(Entry::Send(Box::new(puback))).await;
            }
            if !meta.dup {
                shared.recent.forget(client_id, meta.pkid);
            }
        }
        if meta.qos == 2 && !self.qos2_lock().insert(meta.pkid) {
            // A re-sent QoS 2 publish already appended: ack again, append never.
            MqttStats::inc(&stats.qos2_duplicates);
            self.flush_batch().await?;
            return self.queue(Entry::Duplicate(meta.pkid)).await;
        }
        let router = shared.live.router();
        let dest = router.route(topic, &self.session.client_id);
        let message = Live {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            qos: meta.qos,
            retain: publish.retain,
            props: props.as_ref().map(Props::from_publish).unwrap_or_default(),
            received_ms: log::now_ms(),
            origin: self.session.conn,
            shared_to: Vec::new(),
        };
        let record = message.record(&self.session.client_id, meta.pkid, dest.key);
        let full = |b: &Batch| {
            b.topic != dest.topic
                || b.partition != dest.partition
                || b.records.len() >= MAX_BATCH_RECORDS
                || b.bytes >= MAX_BATCH_BYTES
        };
        if self.batch.as_ref().is_some_and(full) {
            self.flush_batch().await?;
        }
        let batch = self.batch.get_or_insert_with(|| Batch {
            topic: dest.topic.to_string(),
            partition: dest.partition,
            records: Vec::new(),
            acks: Vec::new(),
            bytes: 0,
        });
        batch.bytes += record.payload_len();
        batch.records.push(record);
        let retained = message.retain.then(|| shared.retained.guard());
        batch.acks.push(Pending {
            ack,
            message,
            _retained: retained,
        });
        Ok(())
    }

    /// MQTT 5 topic aliases: a publish with a topic and an alias sets the
    /// alias, one with an empty topic uses it. Alias 0, or one above what
    /// CONNACK allowed, ends the connection with 0x94.
    async fn resolve_alias(
        &mut self,
        publish: &mut Publish,
        props: Option<&PublishProperties>,
    ) -> Result<(), ConnError> {
        let Some(alias) = props.and_then(|p| p.topic_alias) else {
            return Ok(());
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            self.flush_batch().await?;
            MqttStats::inc(&self.shared.stats.protocol_errors);
            self.disconnect(DisconnectReasonCode::TopicAliasInvalid);
            return Err(ConnError::Protocol(format!(
                "topic alias {alias} (allowed: 1..={TOPIC_ALIAS_MAX})"
            )));
        }
        if publish.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    self.flush_batch().await?;
                    return Err(self.protocol("topic alias that was never set"));
                }
            }
        } else {
            self.aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// Counts a QoS 1/2 publish against our Receive Maximum: an MQTT 5
    /// client that sends more unacknowledged ones gets DISCONNECT 0x93.
    async fn count_inbound(&mut self, qos: u8) -> Result<(), ConnError> {
        if qos == 0 {
            return Ok(());
        }
        let unacked = self.qos1_unacked.load(Ordering::Acquire) + self.qos2_lock().len();
        let max = usize::from(self.shared.config.receive_maximum);
        if self.session.version == Version::V5 && unacked >= max {
            self.flush_batch().await?;
            MqttStats::inc(&self.shared.stats.protocol_errors);
            self.disconnect(DisconnectReasonCode::ReceiveMaximumExceeded);
            return Err(ConnError::Protocol(format!(
                "more than receive_maximum = {max} unacknowledged publishes"
            )));
        }
        if qos == 1 {
            self.qos1_unacked.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The publish's topic if it may be appended, or the refusal reason.
    /// Errors end the connection (after the pending acks).
    async fn check_publish<'p>(
        &mut self,
        publish: &'p Publish,
    ) -> Result<Result<&'p str, Reason>, ConnError> {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            self.flush_batch().await?;
            return Err(self.protocol("PUBLISH topic is not UTF-8"));
        };
        if topic.is_empty() {
            // Only a topic alias makes an empty topic valid (resolved before).
            self.flush_batch().await?;
            return Err(self.protocol("PUBLISH with an empty topic and no alias"));
        }
        Ok(if topic.contains(['+', '#']) {
            Err(Reason::TopicNameInvalid)
        } else if !self.session.acl.may_publish(topic) {
            MqttStats::inc(&stats.refused_not_authorized);
            Err(Reason::NotAuthorized)
        } else {
            Ok(topic)
        })
    }

    /// Appends the pending batch and queues its acks (or refuses them all).
    async fn flush_batch(&mut self) -> Result<(), ConnError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        match self
            .append(&batch.topic, batch.partition, batch.records)
            .await
        {
            Ok(ticket) => {
                let entry = Entry::Publish {
                    ticket,
                    acks: batch.acks,
                };
                self.queue(entry).await
            }
            Err(e) => {
                tracing::warn!(
                    client_id = self.session.client_id,
                    "mqtt publish refused: {e}"
                );
                for pending in batch.acks {
                    let reason = super::writer::refusal_reason(&self.shared.stats, &e);
                    if let Answer::PubRec(pkid) = pending.ack {
                        self.qos2_lock().remove(&pkid);
                    }
                    self.refuse_now(pending.ack, reason).await?;
                }
                Ok(())
            }
        }
    }

    /// Appends; while the log writer is behind, awaits room in its queue
    /// (at most `OVERLOAD_WAIT`), so a burst meets back-pressure, not a refusal.
    async fn append(
        &self,
        topic: &str,
        partition: log::Partition,
        mut records: Vec<Record>,
    ) -> Result<AppendTicket, AppendError> {
        let give_up = Instant::now() + OVERLOAD_WAIT;
        loop {
            match self.shared.log.try_append(topic, partition, records) {
                Err((AppendError::Overloaded, back)) => {
                    let room = tokio::time::timeout_at(give_up, self.shared.log.capacity());
                    if room.await.is_err() {
                        return Err(AppendError::Overloaded);
                    }
                    records = back;
                }
                other => return other.map_err(|(e, _)| e),
            }
        }
    }

    /// Refuses a publish explicitly: a negative ack in MQTT 5 (in order with
    /// the other acks), a DISCONNECT where MQTT 5 has no ack for it, and a
    /// closed connection in MQTT 3.1.1, which has no negative ack at all.
    async fn refuse(&mut self, ack: Answer, reason: Reason) -> Result<(), ConnError> {
        self.flush_batch().await?;
        self.refuse_now(ack, reason).await
    }

    /// `refuse` without flushing the batch first (used by the flush itself).
    async fn refuse_now(&self, ack: Answer, reason: Reason) -> Result<(), ConnError> {
        let why = format!("{reason:?}");
        if self.session.version == Version::V4 {
            return Err(ConnError::RefusedV4(why));
        }
        match (ack, reason) {
            (_, Reason::PacketTooLarge) | (Answer::None, _) => {
                self.disconnect(disconnect_reason(reason));
                Err(ConnError::Protocol(format!("publish refused: {why}")))
            }
            (Answer::PubAck(pkid), _) => {
                self.queue(Entry::Send(Box::new(Out::PubAck(pkid, reason))))
                    .await
            }
            (Answer::PubRec(pkid), _) => {
                self.queue(Entry::Send(Box::new(Out::PubRec(pkid, reason))))
                    .await
            }
        }
    }

    async fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        id: Option<usize>,
    ) -> Result<(), ConnError> {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        for filter in subscribe.filters {
            let path = filter.path;
            let topic_filter = match super::shares::parse(&path) {
                None => Some(path.as_str()),
                Some(Ok((_, f))) => Some(f),
                Some(Err(_)) => None,
            };
            let code = if !topic_filter.is_some_and(valid_filter) {
                SubscribeReasonCode::TopicFilterInvalid
            } else if !topic_filter.is_some_and(|f| self.session.acl.may_subscribe(f)) {
                MqttStats::inc(&self.shared.stats.refused_not_authorized);
                SubscribeReasonCode::NotAuthorized
            } else {
                let qos = filter.qos as u8;
                granted.push(Sub {
                    filter: path,
                    qos,
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                    retained: filter.retain_forward_rule,
                    id,
                });
                SubscribeReasonCode::Success(qos_of(qos))
            };
            codes.push(code);
        }
        let out = Out::SubAck(subscribe.pkid, codes);
        self.queue(Entry::Subscribe(Box::new((granted, out)))).await
    }

    /// Publishes the will of a connection that ended abruptly (not awaited:
    /// nobody is left to acknowledge it to).
    pub fn publish_will(&mut self) {
        if let Some(will) = self.session.will.take() {
            let expiry_s = self.session.session_expiry_s;
            super::will::publish(&self.shared, &self.session.client_id, will, expiry_s);
        }
    }

    /// MQTT 5 DISCONNECT may change the session expiry, unless CONNECT
    /// asked for none (then the session ends here, as promised).
    fn set_session_expiry(&mut self, expiry: Option<u32>) {
        let (Some(expiry), Some(state)) = (expiry, &self.session.state) else {
            return;
        };
        if self.session.session_expiry_s == 0 {
            return;
        }
        let expiry = expiry.min(self.shared.sessions.max_expiry_s());
        self.session.session_expiry_s = expiry;
        super::session::lock(state).expiry_s = expiry;
    }

    /// Waits for room in the FIFO: this is the back-pressure on the client.
    async fn queue(&self, entry: Entry) -> Result<(), ConnError> {
        self.fifo
            .send(entry)
            .await
            .map_err(|_| ConnError::Protocol("writer ended".into()))
    }

    /// Queues a DISCONNECT (MQTT 5) after the pending acks; best effort, as
    /// the connection is closing anyway.
    fn disconnect(&self, reason: DisconnectReasonCode) {
        let _ = self
            .fifo
            .try_send(Entry::Send(Box::new(Out::Disconnect(reason))));
    }

    fn protocol(&self, what: &str) -> ConnError {
        MqttStats::inc(&self.shared.stats.protocol_errors);
        self.disconnect(DisconnectReasonCode::ProtocolError);
        ConnError::Protocol(format!("unexpected {what}"))
    }

    fn qos2_lock(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.qos2.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn disconnect_reason(reason: Reason) -> DisconnectReasonCode {
    match reason {
        Reason::NotAuthorized => DisconnectReasonCode::NotAuthorized,
        Reason::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
        Reason::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
        Reason::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
        _ => DisconnectReasonCode::UnspecifiedError,
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(..) => "second CONNECT",
        Packet::ConnAck(..) => "CONNACK from a client",
        Packet::SubAck(..) => "SUBACK from a client",
        Packet::UnsubAck(..) => "UNSUBACK from a client",
        Packet::PingResp(..) => "PINGRESP from a client",
        _ => "packet",
    }
}
