//! The acknowledging half of a link: awaits each append in arrival order,
//! then has its PUBACK (QoS 1) or PUBREC (QoS 2) written, in that order
//! (MQTT wants acks in arrival order).
//!
//! # Getting acks out ahead of reads
//!
//! rumqttc 0.24 takes one request off its queue per turn of its event loop
//! and reads up to ten packets per turn, so acks handed to it one by one
//! fall behind whenever the broker keeps sending (Mosquitto before 2.0.13
//! sends past the in-flight window while it drains a queue). Instead, at
//! most one ack at a time goes through rumqttc's queue: the *wake-up*. The
//! acks that become durable while it is queued wait in [`Acks::ready`];
//! once the event loop wrote the wake-up (the link sees `AckSent`), the
//! link writes all of them but the last straight into rumqttc's write
//! buffer and queues the last as the next wake-up, which the event loop
//! writes (and flushes, with everything ahead of it) on its next turn. So
//! every ack leaves within a turn or two of becoming durable, however many
//! there are, and a link that reads nothing still flushes them. Nothing
//! here waits on the link: the FIFO keeps draining as the log syncs.
//!
//! At a stop the link closes the FIFO; the acker finishes what was
//! appended, and the last batch is followed by a DISCONNECT (the session
//! stays), so every ack of a durable publish reaches the broker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::client::Client;
use super::link::{Shared, Ticket};
use super::observe::LinkStats;

/// What the acker must do for one publish, in arrival order.
pub enum Kind {
    /// Await this append, then acknowledge.
    Append(Ticket),
    /// A redelivery of a publish queued earlier: acknowledge it if that
    /// append is durable.
    Again,
}

/// Which delivery an ack is for.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub qos: u8,
    pub pkid: u16,
    /// Names the delivery in the in-flight table (0 for QoS 0).
    pub serial: u64,
    /// The connection it arrived on: acked only on that one.
    pub generation: u64,
}

pub struct Pending {
    pub receipt: Receipt,
    pub bytes: u64,
    pub kind: Kind,
}

/// The acks between the acker and the link, under one lock.
#[derive(Debug, Default)]
pub struct Acks {
    /// Counts the link's connections. An ack is written only for a
    /// publish of the current connection; a lost link bumps it and drops
    /// what rumqttc still holds, so no ack meant for one connection is
    /// sent on the next.
    pub generation: u64,
    /// Durable, not yet written, in arrival order; only while `wake`.
    pub ready: VecDeque<Receipt>,
    /// An ack sits in rumqttc's request queue (at most one does).
    pub wake: bool,
    /// The FIFO is closed and drained (a stop): the last batch is followed
    /// by a DISCONNECT instead of a wake-up.
    pub closing: bool,
}

impl Acks {
    /// A new connection (or none): nothing queued belongs to it.
    pub fn new_connection(&mut self) {
        self.generation += 1;
        self.ready.clear();
        self.wake = false;
    }
}

pub async fn run(mut fifo: mpsc::Receiver<Pending>, shared: Arc<Shared>, client: Client) {
    while let Some(pending) = fifo.recv().await {
        let p = pending.receipt;
        if !durable(&shared, pending).await || p.qos == 0 {
            continue;
        }
        ack(&shared, &client, p);
    }
    let mut acks = shared.acks();
    acks.closing = true;
    if !acks.wake {
        // Nothing queued: the DISCONNECT flushes what was written.
        let _ = client.try_disconnect();
    }
}

/// Awaits the append (counting it); false when an ack must not be sent
/// (and for QoS 1/2, the link is to be dropped so the broker redelivers).
async fn durable(shared: &Shared, pending: Pending) -> bool {
    let Pending {
        receipt: p,
        bytes,
        kind,
    } = pending;
    let stats = &shared.stats;
    let durable = match kind {
        Kind::Append(ticket) => {
            let result = ticket.durable().await;
            if let Err(e) = &result {
                if p.qos > 0 {
                    LinkStats::inc(&stats.append_failures);
                    tracing::warn!(broker = stats.name, "bridge append failed: {e}");
                    stats.error(format!("append: {e}"));
                }
            } else {
                LinkStats::inc(&stats.appended);
                stats.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
            }
            if p.qos > 0 {
                shared.inflight().resolved(p.pkid, p.serial, result.is_ok());
            }
            result.is_ok()
        }
        Kind::Again => true,
    };
    if p.qos > 0 {
        stats.inflight.fetch_sub(1, Ordering::Relaxed);
        if !durable {
            shared.relink.store(true, Ordering::Release);
        }
    }
    durable
}

/// `p` is durable: queued behind the wake-up in flight, or sent as the
/// wake-up itself. Dropped if its connection is gone (the broker
/// redelivers it, and the redelivery is acknowledged without a second
/// append) or it was acknowledged already under its packet id.
fn ack(shared: &Shared, client: &Client, p: Receipt) {
    let mut acks = shared.acks();
    if p.generation != acks.generation {
        return;
    }
    if acks.wake {
        acks.ready.push_back(p);
        return;
    }
    if shared.inflight().may_ack(p.pkid, p.serial) {
        wake(shared, client, &mut acks, p);
    }
}

/// Queues `p` (ackable) in rumqttc as the wake-up.
pub fn wake(shared: &Shared, client: &Client, acks: &mut Acks, p: Receipt) {
    match client.try_ack(p.qos, p.pkid) {
        Ok(()) => {
            acks.wake = true;
            shared.inflight().acked(p.pkid, p.serial);
            LinkStats::inc(&shared.stats.acks);
        }
        Err(e) => {
            // Not acked: the broker keeps it; a new link gets it again.
            let stats = &shared.stats;
            tracing::warn!(
                broker = stats.name,
                pkid = p.pkid,
                "bridge ack not queued: {e}"
            );
            stats.error(format!("ack of packet id {} not queued: {e}", p.pkid));
            shared.relink.store(true, Ordering::Release);
        }
    }
}
