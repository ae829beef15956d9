//! The writing half of a connection: takes the reader's FIFO in order,
//! awaits each append ticket (so an ack leaves only once its record is
//! durable, and acks leave in arrival order), and sends live records to the
//! connection's subscriptions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{matches, DisconnectReasonCode, PublishProperties, RetainForwardRule};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use super::codec::{self, Delivery, Out, Reason, Version};
use super::connect::{Session, WRITE_TIMEOUT};
use super::error::ConnError;
use super::feed::{self, Feed, Item};
use super::message::Live;
use super::session::{self, Lease, Outbound, SavedSub};
use super::shares;
use super::stats::MqttStats;
use super::Shared;
use crate::log::{self, AppendError, AppendTicket, Appended};

/// Records delivered from the log in one turn before acks are looked at.
const BURST: usize = 256;
/// Write buffer kept between flushes; larger ones are given back.
const IDLE_WRITE_BYTES: usize = 512;

/// What the reader hands the writer, in arrival order.
pub enum Entry {
    /// Appended publishes (one batch): ack each once the ticket resolves.
    Publish {
        ticket: AppendTicket,
        acks: Vec<Pending>,
    },
    /// A re-sent QoS 2 publish already appended: PUBREC again.
    Duplicate(u16),
    /// A packet that needs no waiting (PUBCOMP, PINGRESP, refusals, ...).
    /// Boxed, as the other large variants: every connection's FIFO holds
    /// room for 32 entries from the start.
    Send(Box<Out>),
    Subscribe(Box<(Vec<Sub>, Out)>),
    Unsubscribe(Box<(Vec<String>, Out)>),
    /// The client finished our delivery with this packet id (PUBACK for
    /// QoS 1, PUBCOMP for QoS 2).
    Delivered(u16),
    /// The client received our QoS 2 delivery (PUBREC): PUBREL goes back.
    Received(u16),
}

/// One appended publish waiting for its ack; the message goes to
/// subscribers once durable (it shares the record's memory).
pub struct Pending {
    pub ack: Answer,
    pub message: Live,
    /// Held until a retained message was applied (see `retain.rs`).
    pub _retained: Option<super::retain::Guard>,
}

/// The acknowledgement a publish gets (by QoS: none, PUBACK, PUBREC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    None,
    PubAck(u16),
    PubRec(u16),
}

impl Answer {
    pub fn for_qos(qos: u8, pkid: u16) -> Answer {
        match qos {
            0 => Answer::None,
            1 => Answer::PubAck(pkid),
            _ => Answer::PubRec(pkid),
        }
    }
}

/// A granted subscription.
#[derive(Debug, Clone)]
pub struct Sub {
    pub filter: String,
    pub qos: u8,
    /// MQTT 5: do not deliver this connection's own publishes.
    pub no_local: bool,
    /// MQTT 5: forward the retain flag of live messages as published
    /// (otherwise only messages sent because of the subscription carry it).
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: when retained messages are sent on subscribe.
    pub retained: RetainForwardRule,
    /// MQTT 5 subscription identifier, sent with each matching message.
    pub id: Option<usize>,
}

/// Which subscriptions a message is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// Shared subscriptions only (messages from the hub).
    Shared,
    /// All but the shared ones (records from the log).
    NotShared,
}

/// A retained message owed to one subscription.
struct Owed {
    message: Arc<Live>,
    qos: u8,
    id: Option<usize>,
}

/// The reason code for a failed append, counted.
pub fn refusal_reason(stats: &MqttStats, e: &AppendError) -> Reason {
    match e {
        AppendError::QuotaExceeded { .. } | AppendError::Overloaded => {
            MqttStats::inc(&stats.refused_quota);
            Reason::QuotaExceeded
        }
        AppendError::TooLarge(_) => {
            MqttStats::inc(&stats.refused_too_large);
            Reason::PacketTooLarge
        }
        _ => {
            MqttStats::inc(&stats.refused_log_error);
            Reason::UnspecifiedError
        }
    }
}

pub struct Writer<W> {
    wr: W,
    buf: BytesMut,
    version: Version,
    conn: u64,
    client_id: String,
    shared: Arc<Shared>,
    qos2: Arc<Mutex<HashSet<u16>>>,
    /// QoS 1 publishes not yet acknowledged; each PUBACK counts one down.
    qos1_unacked: Arc<AtomicUsize>,
    subs: Vec<Sub>,
    live: Option<broadcast::Receiver<Arc<Live>>>,
    /// Retained messages owed to new subscriptions, sent before live ones
    /// as the client's Receive Maximum allows (Arcs into the retained set).
    backlog: VecDeque<Owed>,
    /// Our QoS 1/2 deliveries the client has not finished yet, with their
    /// QoS (the client's Receive Maximum bounds them).
    inflight: HashMap<u16, u8>,
    max_inflight: usize,
    /// The client's Maximum Packet Size: larger deliveries are dropped.
    max_packet: usize,
    next_pkid: u16,
    /// Delivery from the log: the cursors, and the session they belong to.
    from_log: FromLog,
    /// Topic aliases set up toward the client (MQTT 5), at most `alias_max`:
    /// the first topics delivered get one and keep it.
    aliases: HashMap<Bytes, u16>,
    alias_max: u16,
}

/// Every subscription is served from the log (`feed.rs`): a clean session
/// from cursors set at its first subscription, kept in memory; a persistent
/// one from its saved cursors (`session.rs`).
struct FromLog {
    state: session::Shared,
    /// Held by a persistent (or resumed) session: its state is saved.
    lease: Option<Lease>,
    feed: Feed,
}

impl<W: AsyncWrite + Send + Unpin + 'static> Writer<W> {
    pub fn new(
        wr: W,
        session: &Session,
        shared: Arc<Shared>,
        qos2: Arc<Mutex<HashSet<u16>>>,
        qos1_unacked: Arc<AtomicUsize>,
        lease: Option<Lease>,
    ) -> Self {
        let from_log = FromLog {
            state: lease
                .as_ref()
                .map_or_else(Default::default, |l| l.state.clone()),
            lease,
            feed: Feed::new(
                shared.log.clone(),
                shared.sessions.clone(),
                shared.feeds.clone(),
                &session.client_id,
            ),
        };
        Writer {
            wr,
            buf: BytesMut::new(),
            version: session.version,
            conn: session.conn,
            client_id: session.client_id.clone(),
            shared,
            qos2,
            qos1_unacked,
            subs: Vec::new(),
            live: None,
            backlog: VecDeque::new(),
            inflight: HashMap::new(),
            max_inflight: usize::from(session.client_receive_max),
            max_packet: session.client_max_packet,
            next_pkid: 1,
            from_log,
            aliases: HashMap::new(),
            alias_max: session.client_alias_max,
        }
    }

    /// Runs until the reader closes the FIFO (then drains it) or a write fails.
    pub async fn run(mut self, fifo: mpsc::Receiver<Entry>) -> Result<(), ConnError> {
        let result = self.serve(fifo).await;
        self.shared.shares.leave(None, self.conn);
        self.keep_session_state();
        result
    }

    async fn serve(&mut self, mut fifo: mpsc::Receiver<Entry>) -> Result<(), ConnError> {
        self.resume_session()?;
        loop {
            self.pay_backlog()?;
            if fifo.is_empty() {
                self.flush().await?;
            }
            let room = self.backlog.is_empty() && self.inflight.len() < self.max_inflight;
            let from_hub = room && self.live.is_some();
            let from_log = room && !self.subs.is_empty();
            tokio::select! {
                biased;
                entry = fifo.recv() => match entry {
                    Some(entry) => self.handle(entry).await?,
                    None => break,
                },
                live = next_live(self.live.as_mut()), if from_hub => self.deliver(live)?,
                item = next_item(&mut self.from_log), if from_log => {
                    self.deliver_item(item?).await?;
                    self.deliver_at_hand().await?;
                }
            }
        }
        self.flush().await?;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.wr.shutdown()).await;
        Ok(())
    }

    async fn handle(&mut self, entry: Entry) -> Result<(), ConnError> {
        match entry {
            Entry::Publish { ticket, acks } => {
                let result = self.durable(ticket).await?;
                for p in acks {
                    self.acknowledge(p.ack, result.clone(), p.message)?;
                }
                Ok(())
            }
            Entry::Duplicate(pkid) => {
                let pending = self.qos2_lock().contains(&pkid);
                let reason = if pending {
                    Reason::Success
                } else {
                    Reason::UnspecifiedError
                };
                self.encode(Out::PubRec(pkid, reason))
            }
            Entry::Send(out) => {
                let out = *out;
                let closing = matches!(out, Out::Disconnect(_));
                self.encode(out)?;
                if closing {
                    self.flush().await?;
                }
                Ok(())
            }
            Entry::Subscribe(subscribe) => {
                let (granted, suback) = *subscribe;
                let first = self.subs.is_empty();
                for sub in granted {
                    if shares::parse(&sub.filter).is_some() {
                        self.shared.shares.join(&sub.filter, self.conn);
                    }
                    let existed = self.subs.iter().any(|s| s.filter == sub.filter);
                    self.subs.retain(|s| s.filter != sub.filter);
                    self.owe_retained(&sub, existed);
                    self.subs.push(sub);
                }
                self.save_subscriptions(first).await;
                self.encode(suback)?;
                self.follow_hub();
                Ok(())
            }
            Entry::Unsubscribe(unsubscribe) => {
                let (filters, unsuback) = *unsubscribe;
                self.subs.retain(|s| !filters.contains(&s.filter));
                for f in &filters {
                    self.shared.shares.leave(Some(f), self.conn);
                }
                if self.subs.is_empty() {
                    self.live = None;
                }
                self.save_subscriptions(false).await;
                self.encode(unsuback)
            }
            Entry::Delivered(pkid) => {
                self.inflight.remove(&pkid);
                let removed = session::lock(&self.from_log.state).inflight.remove(&pkid);
                if removed.is_some() {
                    self.touch();
                }
                Ok(())
            }
            Entry::Received(pkid) => {
                if self.inflight.get(&pkid) == Some(&2) {
                    self.released(pkid).await;
                    self.encode(Out::PubRel(pkid))?;
                }
                Ok(())
            }
        }
    }

    /// Awaits the ticket; acks already encoded go out first if it is not
    /// resolved yet, so they never wait for a later record's fsync.
    async fn durable(
        &mut self,
        mut ticket: AppendTicket,
    ) -> Result<Result<Appended, AppendError>, ConnError> {
        if let Some(result) = ready_now(&mut ticket) {
            return Ok(result);
        }
        self.flush().await?;
        Ok(ticket.await)
    }

    fn acknowledge(
        &mut self,
        ack: Answer,
        result: Result<Appended, AppendError>,
        message: Live,
    ) -> Result<(), ConnError> {
        let stats = &self.shared.stats;
        let reason = match &result {
            Ok(_) => {
                MqttStats::inc(&stats.publishes_appended);
                MqttStats::add(&stats.bytes_appended, message.payload.len() as u64);
                self.shared.durable(message);
                Reason::Success
            }
            Err(e) => {
                tracing::warn!(client_id = self.client_id, "mqtt publish not stored: {e}");
                refusal_reason(stats, e)
            }
        };
        if reason != Reason::Success {
            return self.refuse(ack, reason);
        }
        match ack {
            Answer::None => Ok(()),
            Answer::PubAck(pkid) => self.encode(Out::PubAck(pkid, reason)),
            Answer::PubRec(pkid) => self.encode(Out::PubRec(pkid, reason)),
        }
    }

    /// A failed append: a negative ack (MQTT 5) or the end of the connection.
    fn refuse(&mut self, ack: Answer, reason: Reason) -> Result<(), ConnError> {
        if self.version == Version::V4 {
            return Err(ConnError::RefusedV4(format!("{reason:?}")));
        }
        match ack {
            Answer::PubAck(pkid) if reason != Reason::PacketTooLarge => {
                self.encode(Out::PubAck(pkid, reason))
            }
            Answer::PubRec(pkid) if reason != Reason::PacketTooLarge => {
                self.qos2_lock().remove(&pkid);
                self.encode(Out::PubRec(pkid, reason))
            }
            _ => {
                self.encode(Out::Disconnect(match reason {
                    Reason::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
                    Reason::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
                    _ => DisconnectReasonCode::UnspecifiedError,
                }))?;
                Err(ConnError::Protocol(format!("publish refused: {reason:?}")))
            }
        }
    }

    /// Sends owed retained messages while the client's Receive Maximum
    /// leaves room.
    fn pay_backlog(&mut self) -> Result<(), ConnError> {
        while self.inflight.len() < self.max_inflight {
            let Some(owed) = self.backlog.pop_front() else {
                return Ok(());
            };
            let ids: Vec<usize> = owed.id.into_iter().collect();
            self.send_message(&owed.message, owed.qos, true, &ids)?;
        }
        Ok(())
    }

    /// Queues the retained messages a new subscription gets (MQTT 5 retain
    /// handling: always, only if new, or never).
    fn owe_retained(&mut self, sub: &Sub, existed: bool) {
        let wanted = match sub.retained {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => !existed,
            RetainForwardRule::Never => false,
        };
        if !wanted || sub.filter.starts_with("$share/") {
            return;
        }
        for message in self.shared.retained.matching(&sub.filter) {
            self.backlog.push_back(Owed {
                qos: sub.qos.min(message.qos),
                message,
                id: sub.id,
            });
        }
    }

    /// Sends one live record to this connection if a subscription matches.
    fn deliver(&mut self, live: Result<Arc<Live>, RecvError>) -> Result<(), ConnError> {
        let live = match live {
            Ok(live) => live,
            Err(RecvError::Lagged(missed)) => {
                MqttStats::add(&self.shared.stats.deliveries_lagged, missed);
                tracing::warn!(client_id = self.client_id, missed, "subscriber too slow");
                return Ok(());
            }
            Err(RecvError::Closed) => {
                self.live = None;
                return Ok(());
            }
        };
        // Only shared subscriptions are served from the hub.
        let matched = self.matching(&live, live.origin == self.conn, Which::Shared);
        let Some((qos, retain, ids)) = matched else {
            return Ok(());
        };
        self.send_message(&live, qos, retain, &ids)
    }

    /// The QoS, retain flag and subscription identifiers a message gets
    /// here, if a subscription matches it (a shared one only if the message
    /// was picked for this connection).
    fn matching(&self, live: &Live, own: bool, which: Which) -> Option<(u8, bool, Vec<usize>)> {
        let topic = std::str::from_utf8(&live.topic).ok()?;
        let mut granted = None;
        let mut retain = false;
        let mut ids = Vec::new();
        for s in &self.subs {
            let hit = match shares::parse(&s.filter) {
                None => which != Which::Shared && matches(topic, &s.filter),
                Some(Ok((_, f))) => {
                    which != Which::NotShared
                        && matches(topic, f)
                        && live
                            .shared_to
                            .iter()
                            .any(|(g, c)| **g == *s.filter && *c == self.conn)
                }
                Some(Err(_)) => false,
            };
            if hit && !(s.no_local && own) {
                granted = granted.max(Some(s.qos));
                retain |= s.retain_as_published && live.retain;
                ids.extend(s.id);
            }
        }
        Some((granted?.min(live.qos), retain, ids))
    }

    /// Encodes one delivery, unless it expired or exceeds the client's
    /// Maximum Packet Size (MQTT 5 says to drop it then, as if delivered).
    fn send_message(
        &mut self,
        live: &Live,
        qos: u8,
        retain: bool,
        ids: &[usize],
    ) -> Result<(), ConnError> {
        if live.expired(log::now_ms()) {
            MqttStats::inc(&self.shared.stats.deliveries_expired);
            return Ok(());
        }
        let pkid = if qos == 0 { 0 } else { self.take_pkid(qos) };
        self.send_with(live, qos, pkid, (retain, false), ids)?;
        Ok(())
    }

    /// Encodes one delivery with `pkid`; whether it went out (not over the
    /// client's Maximum Packet Size). `flags`: retain, dup.
    fn send_with(
        &mut self,
        live: &Live,
        qos: u8,
        pkid: u16,
        (retain, dup): (bool, bool),
        ids: &[usize],
    ) -> Result<bool, ConnError> {
        let before = self.buf.len();
        let mut properties = live.publish_properties(log::now_ms(), ids);
        let (topic, new_alias) = self.alias(&live.topic, &mut properties);
        self.encode(Out::Publish(Box::new(Delivery {
            topic,
            payload: live.payload.clone(),
            qos,
            pkid,
            retain,
            dup,
            properties,
        })))?;
        if self.buf.len() - before > self.max_packet {
            self.buf.truncate(before);
            self.inflight.remove(&pkid);
            if new_alias {
                self.aliases.remove(&live.topic);
            }
            MqttStats::inc(&self.shared.stats.deliveries_too_large);
            return Ok(false);
        }
        MqttStats::inc(&self.shared.stats.deliveries);
        Ok(true)
    }

    /// A returning persistent session: its subscriptions back, and the
    /// deliveries the client had not finished sent again (MQTT: PUBLISH
    /// with DUP = 1 under the same packet id, or PUBREL once released).
    fn resume_session(&mut self) -> Result<(), ConnError> {
        if !self.stored() {
            return Ok(());
        }
        let state = self.from_log.state.clone();
        let (subs, inflight) = {
            let s = session::lock(&state);
            (s.subs.clone(), s.inflight.clone())
        };
        self.subs = subs.iter().map(SavedSub::to_sub).collect();
        for s in self
            .subs
            .iter()
            .filter(|s| shares::parse(&s.filter).is_some())
        {
            self.shared.shares.join(&s.filter, self.conn);
        }
        self.follow_hub();
        // Sent again in the order they were first sent (log order), not by
        // packet id: ids restart with every connection.
        let mut inflight: Vec<&Outbound> = inflight.values().collect();
        inflight.sort_by(|a, b| {
            (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
        });
        let mut gone = Vec::new();
        for o in inflight {
            self.inflight.insert(o.pkid, o.qos);
            if o.released {
                self.encode(Out::PubRel(o.pkid))?;
                continue;
            }
            let at = crate::log::Partition(o.partition);
            match feed::message_at(&self.shared.log, &o.topic, at, o.offset) {
                Some(m) => {
                    self.send_with(&m, o.qos, o.pkid, (o.retain, true), &o.sub_ids)?;
                }
                None => gone.push(o.pkid),
            }
        }
        if !gone.is_empty() {
            let mut s = session::lock(&state);
            for pkid in &gone {
                s.inflight.remove(pkid);
                self.inflight.remove(pkid);
            }
            let n = gone.len() as u64;
            MqttStats::add(&self.shared.stats.session_records_missed, n);
        }
        Ok(())
    }

    /// Receives live messages from the hub while a shared subscription
    /// needs them.
    fn follow_hub(&mut self) {
        let needed = self.subs.iter().any(|s| shares::parse(&s.filter).is_some());
        if needed && self.live.is_none() {
            self.live = Some(self.shared.hub.subscribe());
        }
    }

    /// Saves what the session keeps of this connection (its QoS 2 publishes
    /// awaiting PUBREL) before the lease is let go.
    fn keep_session_state(&mut self) {
        if self.stored() {
            let pending: Vec<u16> = self.qos2_lock().iter().copied().collect();
            session::lock(&self.from_log.state).inbound_qos2 = pending;
        }
    }

    /// Whether this connection's session is saved (persistent or resumed).
    fn stored(&self) -> bool {
        self.from_log.lease.is_some()
    }

    /// Cursors of a saved session moved: saved at the next checkpoint.
    fn touch(&self) {
        if self.stored() {
            self.shared.sessions.touch();
        }
    }

    /// A saved session's state is on disk before the caller goes on.
    fn persist(&self) -> impl Future<Output = ()> + Send + 'static {
        let sessions = self.stored().then(|| self.shared.sessions.clone());
        async move {
            if let Some(sessions) = sessions {
                sessions.persist().await;
            }
        }
    }

    /// Delivers the records already read while the client's window has
    /// room (at most `BURST`), so they leave in one write, not one each.
    async fn deliver_at_hand(&mut self) -> Result<(), ConnError> {
        for _ in 0..BURST {
            if !self.backlog.is_empty() || self.inflight.len() >= self.max_inflight {
                return Ok(());
            }
            let state = self.from_log.state.clone();
            match self.from_log.feed.try_next(&state)? {
                Some(item) => self.deliver_item(item).await?,
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// One record after the session's cursors: sent if a subscription
    /// matches, the cursor moved past it either way. A QoS 2 delivery is
    /// saved before it goes out, so a crash re-sends the same packet id.
    async fn deliver_item(&mut self, item: Item) -> Result<(), ConnError> {
        let state = self.from_log.state.clone();
        let wanted = item
            .message
            .as_ref()
            .filter(|m| !m.expired(log::now_ms()))
            .and_then(|m| Some((m.clone(), self.matching(m, item.own, Which::NotShared)?)));
        let Some((message, (qos, retain, ids))) = wanted else {
            feed::passed(&mut session::lock(&state), &item);
            self.touch();
            return Ok(());
        };
        let pkid = if qos == 0 { 0 } else { self.take_pkid(qos) };
        {
            let mut s = session::lock(&state);
            feed::passed(&mut s, &item);
            if qos > 0 {
                s.inflight
                    .insert(pkid, outbound(&item, pkid, qos, retain, &ids));
            }
        }
        if qos == 2 {
            self.persist().await;
        } else {
            self.touch();
        }
        if !self.send_with(&message, qos, pkid, (retain, false), &ids)? {
            session::lock(&state).inflight.remove(&pkid);
        }
        Ok(())
    }

    /// The subscriptions into the session's state (on disk before the
    /// client hears of them, for a saved session); `first`: delivery starts
    /// at the log's end.
    async fn save_subscriptions(&mut self, first: bool) {
        {
            let mut s = session::lock(&self.from_log.state);
            if first && s.subs.is_empty() {
                s.start_at_end(&self.shared.log);
            }
            s.subs = self.subs.iter().map(SavedSub::from_sub).collect();
        }
        self.persist().await;
    }

    /// QoS 2: the client has our message; its release is on disk before
    /// PUBREL goes out.
    async fn released(&mut self, pkid: u16) {
        if let Some(o) = session::lock(&self.from_log.state).inflight.get_mut(&pkid) {
            o.released = true;
        }
        self.persist().await;
    }

    /// The topic to send (empty once an alias stands for it), with the
    /// alias put in `properties`, and whether this delivery sets the alias
    /// up (if it is then not sent, the caller forgets it).
    fn alias(
        &mut self,
        topic: &Bytes,
        properties: &mut Option<PublishProperties>,
    ) -> (Bytes, bool) {
        if self.alias_max == 0 || self.version != Version::V5 {
            return (topic.clone(), false);
        }
        let (alias, known) = match self.aliases.get(topic) {
            Some(a) => (*a, true),
            None if self.aliases.len() < usize::from(self.alias_max) => {
                let a = self.aliases.len() as u16 + 1;
                self.aliases.insert(topic.clone(), a);
                (a, false)
            }
            None => return (topic.clone(), false),
        };
        properties
            .get_or_insert_with(PublishProperties::default)
            .topic_alias = Some(alias);
        if known {
            (Bytes::new(), false)
        } else {
            (topic.clone(), true)
        }
    }

    fn take_pkid(&mut self, qos: u8) -> u16 {
        // `inflight` is below max_inflight <= u16::MAX, so a free id exists.
        while self.next_pkid == 0 || self.inflight.contains_key(&self.next_pkid) {
            self.next_pkid = self.next_pkid.wrapping_add(1);
        }
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1);
        self.inflight.insert(pkid, qos);
        pkid
    }

    fn encode(&mut self, out: Out) -> Result<(), ConnError> {
        if matches!(out, Out::PubAck(..)) {
            // The client may send one more QoS 1 publish once it has this.
            let _ = self
                .qos1_unacked
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        Ok(codec::encode(out, self.version, &mut self.buf)?)
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.wr.write_all(&self.buf).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnError::WriteTimeout),
        }
        self.buf.clear();
        if self.buf.capacity() > IDLE_WRITE_BYTES {
            // A burst or a large delivery passed through: an idle connection
            // keeps no more than a few acks' worth.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    fn qos2_lock(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.qos2.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn outbound(item: &Item, pkid: u16, qos: u8, retain: bool, ids: &[usize]) -> Outbound {
    Outbound {
        pkid,
        topic: item.topic.to_string(),
        partition: item.partition.0,
        offset: item.offset,
        qos,
        sub_ids: ids.to_vec(),
        retain,
        released: false,
    }
}

/// The ticket's result if it has one already (polled with a no-op waker).
fn ready_now(ticket: &mut AppendTicket) -> Option<Result<Appended, AppendError>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(ticket).poll(&mut cx) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// The next record after the session's cursors.
async fn next_item(from_log: &mut FromLog) -> Result<Item, ConnError> {
    Ok(from_log.feed.next(&from_log.state).await?)
}

/// The next live record, or never when the connection subscribes to nothing.
async fn next_live(
    live: Option<&mut broadcast::Receiver<Arc<Live>>>,
) -> Result<Arc<Live>, RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
