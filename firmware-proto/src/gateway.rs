//! The gateway half of the session: deduplication and gap detection for one
//! serial link.
//!
//! [`GatewaySession`] does no I/O and persists nothing. The gateway feeds it
//! every decoded message from the link and does what the returned [`Action`]
//! says; after it has durably appended a batch it calls
//! [`GatewaySession::appended`] and sends the returned [`Ack`].
//!
//! After a gateway restart the session is empty: it asks the device for a
//! `Hello` and then accepts the stream from the device's `resume_seq`, which
//! may re-append batches that were stored but whose `Ack` never reached the
//! device. Delivery is therefore at-least-once across gateway restarts; the
//! gateway's log removes those duplicates by their `(device_id, boot_epoch,
//! seq)` header. Within one session nothing is appended twice.

use crate::message::{Ack, Hello, Message, Nack, Readings, Resend};

/// What the gateway should do with a message from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append the batch's readings to the log under `(device_id, boot_epoch,
    /// seq)`, then call [`GatewaySession::appended`] once it is durable (or
    /// [`GatewaySession::append_failed`] if that fails).
    Append {
        /// Epoch of the batch.
        boot_epoch: u32,
        /// Sequence number of the batch.
        seq: u32,
    },
    /// A batch that is already durable: send this `Ack` again, append nothing.
    DuplicateReAck(Ack),
    /// A batch after a gap: send this `Resend`, append nothing.
    RequestResend(Resend),
    /// The device is unknown or changed epoch without a `Hello` reaching us:
    /// send [`Message::HelloRequest`], append nothing.
    RequestHello,
    /// The device introduced itself. `new_epoch` is false when it repeated the
    /// `Hello` of the epoch we already track. Devices without
    /// [`HAS_CLOCK`](crate::Capabilities::HAS_CLOCK) want a `TimeSync` now.
    Welcome {
        /// True unless this repeats the current epoch's `Hello`.
        new_epoch: bool,
    },
    /// Nothing to do: a duplicate whose `Ack` is still pending, a batch after
    /// a gap we already asked to fill, or a message with no reply.
    Ignore,
}

impl Action {
    /// The message to send back to the device for this action, if any.
    pub fn reply(&self) -> Option<Message> {
        match self {
            Self::DuplicateReAck(ack) => Some(Message::Ack(*ack)),
            Self::RequestResend(resend) => Some(Message::Resend(*resend)),
            Self::RequestHello => Some(Message::HelloRequest),
            Self::Append { .. } | Self::Welcome { .. } | Self::Ignore => None,
        }
    }
}

/// What the session knows about the device after its `Hello`.
#[derive(Debug, Clone)]
struct Link {
    hello: Hello,
    /// Sequence number the next appended batch must have. 64 bits so that a
    /// batch with seq `u32::MAX` does not wrap it.
    next_seq: u64,
    /// Highest sequence number known to be durable, if any.
    durable_seq: Option<u32>,
    /// Set when a `Resend` for `next_seq` went out, so that the batches still
    /// in flight behind the gap do not each trigger another one.
    resend_requested: bool,
}

/// Gateway-side protocol state for the device on one serial link.
#[derive(Debug, Clone, Default)]
pub struct GatewaySession {
    link: Option<Link>,
}

impl GatewaySession {
    /// A session that knows nothing, as after a gateway restart.
    pub const fn new() -> Self {
        Self { link: None }
    }

    /// The device's latest `Hello`, once one has arrived.
    pub fn device(&self) -> Option<&Hello> {
        self.link.as_ref().map(|link| &link.hello)
    }

    /// Decides what to do with a message from the device.
    pub fn on_message(&mut self, message: &Message) -> Action {
        match message {
            Message::Hello(hello) => self.on_hello(hello),
            Message::Readings(readings) => self.on_readings(readings),
            Message::Heartbeat(_) if self.link.is_none() => Action::RequestHello,
            _ => Action::Ignore,
        }
    }

    /// Records that everything of `boot_epoch` up to `seq` is durable, and
    /// returns the `Ack` to send. The log appends in order, so this covers all
    /// earlier batches too.
    pub fn appended(&mut self, boot_epoch: u32, seq: u32) -> Ack {
        if let Some(link) = self.link_for(boot_epoch) {
            link.durable_seq = link.durable_seq.max(Some(seq));
        }
        Ack { boot_epoch, seq }
    }

    /// Records that batch `seq` (and so every later one) was not stored, so
    /// that its retransmission is appended rather than taken for a duplicate.
    /// Returns the `Nack` to send.
    pub fn append_failed(&mut self, boot_epoch: u32, seq: u32) -> Nack {
        if let Some(link) = self.link_for(boot_epoch) {
            link.next_seq = link.next_seq.min(u64::from(seq));
            link.resend_requested = false;
        }
        Nack { boot_epoch, seq }
    }

    /// A `Hello` is authoritative: a new device or epoch replaces the state;
    /// a repeat of the current epoch keeps it, since batches may be in flight.
    fn on_hello(&mut self, hello: &Hello) -> Action {
        let resume_seq = u64::from(hello.resume_seq);
        if let Some(link) = self
            .link
            .as_mut()
            .filter(|link| same_boot(&link.hello, hello))
        {
            link.next_seq = link.next_seq.max(resume_seq);
            link.durable_seq = link.durable_seq.max(hello.resume_seq.checked_sub(1));
            link.resend_requested = false;
            link.hello = hello.clone();
            return Action::Welcome { new_epoch: false };
        }
        self.link = Some(Link {
            hello: hello.clone(),
            next_seq: resume_seq,
            // Below `resume_seq` the device holds nothing: it was acknowledged.
            durable_seq: hello.resume_seq.checked_sub(1),
            resend_requested: false,
        });
        Action::Welcome { new_epoch: true }
    }

    fn on_readings(&mut self, readings: &Readings) -> Action {
        let Some(link) = self.link_for(readings.boot_epoch) else {
            return Action::RequestHello;
        };
        let seq = u64::from(readings.seq);
        if seq == link.next_seq {
            link.next_seq += 1;
            link.resend_requested = false;
            return Action::Append {
                boot_epoch: readings.boot_epoch,
                seq: readings.seq,
            };
        }
        if seq < link.next_seq {
            return link.durable_seq.map_or(Action::Ignore, |durable_seq| {
                Action::DuplicateReAck(Ack {
                    boot_epoch: readings.boot_epoch,
                    seq: durable_seq,
                })
            });
        }
        if core::mem::replace(&mut link.resend_requested, true) {
            return Action::Ignore;
        }
        Action::RequestResend(Resend {
            boot_epoch: readings.boot_epoch,
            // `next_seq < seq <= u32::MAX` here, so it fits.
            from_seq: u32::try_from(link.next_seq).unwrap_or(u32::MAX),
        })
    }

    fn link_for(&mut self, boot_epoch: u32) -> Option<&mut Link> {
        self.link
            .as_mut()
            .filter(|link| link.hello.boot_epoch == boot_epoch)
    }
}

fn same_boot(known: &Hello, hello: &Hello) -> bool {
    known.device_id == hello.device_id && known.boot_epoch == hello.boot_epoch
}
