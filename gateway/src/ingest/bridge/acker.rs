//! The acknowledging half of a link: awaits each append in arrival order,
//! then hands its PUBACK (QoS 1) or PUBREC (QoS 2) to rumqttc, which sends
//! acks in the order it is given them (MQTT wants them in arrival order).

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

pub async fn run(mut fifo: mpsc::Receiver<Pending>, shared: Arc<Shared>, client: Client) {
    while let Some(Pending {
        receipt: p,
        bytes,
        kind,
    }) = fifo.recv().await
    {
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
        if p.qos == 0 {
            continue;
        }
        stats.inflight.fetch_sub(1, Ordering::Relaxed);
        if !durable {
            shared.relink.store(true, Ordering::Release);
            continue;
        }
        ack(&shared, &client, &p);
    }
}

/// Acknowledges `p` if it arrived on the current connection and is durable
/// and not acknowledged already under its packet id.
fn ack(shared: &Shared, client: &Client, p: &Receipt) {
    let generation = shared.generation();
    if p.generation != *generation {
        // Its connection is gone: the broker redelivers it, and the
        // redelivery is acknowledged without a second append.
        return;
    }
    let mut inflight = shared.inflight();
    if !inflight.may_ack(p.pkid, p.serial) {
        return;
    }
    match client.try_ack(p.qos, p.pkid) {
        Ok(()) => {
            inflight.acked(p.pkid, p.serial);
            LinkStats::inc(&shared.stats.acks);
        }
        Err(e) => {
            // Not acked: the broker keeps it; a new link gets it again.
            let stats = &shared.stats;
            tracing::warn!(
                broker = stats.name,
                pkid = p.pkid,
                received = stats.received.load(Ordering::Relaxed),
                acks = stats.acks.load(Ordering::Relaxed),
                redeliveries = stats.redeliveries.load(Ordering::Relaxed),
                connects = stats.connects.load(Ordering::Relaxed),
                "bridge ack not queued: {e}"
            );
            stats.error(format!("ack of packet id {} not queued: {e}", p.pkid));
            shared.relink.store(true, Ordering::Release);
        }
    }
}
