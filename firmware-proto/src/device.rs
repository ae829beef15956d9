//! The device half of the session: what firmware drives.
//!
//! [`DeviceSession`] does no I/O and reads no clock. The firmware passes in the
//! time, feeds it every decoded message, and sends whatever
//! [`DeviceSession::poll`] returns. Its guarantee: a batch leaves the queue
//! only when the gateway acknowledges it as durably stored.

use heapless::{Deque, String, Vec};

use crate::limits::{MAX_DEVICE_ID_LEN, MAX_READINGS};
use crate::message::{
    Capabilities, DeviceTime, FirmwareVersion, Heartbeat, Hello, Message, Reading, Readings,
};

/// Default [`DeviceConfig::retransmit_after_ms`]: long enough for a maximal
/// frame at 9600 baud (about 0.8 s) plus the gateway's fsync.
pub const DEFAULT_RETRANSMIT_AFTER_MS: u64 = 2_000;

/// Default [`DeviceConfig::heartbeat_after_ms`].
pub const DEFAULT_HEARTBEAT_AFTER_MS: u64 = 10_000;

/// Who the device is and how patient it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Stable identity, sent in every `Hello`.
    pub device_id: String<MAX_DEVICE_ID_LEN>,
    /// Sent in every `Hello`.
    pub firmware_version: FirmwareVersion,
    /// Boot counter that the firmware reads from non-volatile storage,
    /// increments and writes back before it creates the session, on every
    /// boot. Sequence numbers restart at 0 in each epoch, so a repeated epoch
    /// would make the gateway's log discard new readings as duplicates of old
    /// ones: it must never repeat for a device id.
    pub boot_epoch: u32,
    /// Sent in every `Hello`.
    pub capabilities: Capabilities,
    /// How long the oldest unacknowledged batch may go unanswered before the
    /// device sends it, and everything after it, again.
    pub retransmit_after_ms: u64,
    /// How long the device may stay silent before it sends a heartbeat.
    pub heartbeat_after_ms: u64,
}

impl DeviceConfig {
    /// A configuration with the default timings.
    pub fn new(
        device_id: String<MAX_DEVICE_ID_LEN>,
        firmware_version: FirmwareVersion,
        boot_epoch: u32,
        capabilities: Capabilities,
    ) -> Self {
        Self {
            device_id,
            firmware_version,
            boot_epoch,
            capabilities,
            retransmit_after_ms: DEFAULT_RETRANSMIT_AFTER_MS,
            heartbeat_after_ms: DEFAULT_HEARTBEAT_AFTER_MS,
        }
    }
}

/// Why [`DeviceSession::push_readings`] refused a batch. The batch was not
/// queued; the firmware decides whether to drop it or retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Every slot holds a batch the gateway has not acknowledged yet.
    #[error("all {capacity} queue slots hold unacknowledged batches")]
    QueueFull {
        /// The queue's capacity `Q`.
        capacity: usize,
    },
    /// All 2^32 sequence numbers of this epoch are used (after 136 years at
    /// one batch a second).
    #[error("sequence numbers of boot epoch {boot_epoch} are used up; reboot into a new epoch")]
    SequenceExhausted {
        /// The current epoch.
        boot_epoch: u32,
    },
}

/// A batch waiting for its acknowledgement.
#[derive(Debug, Clone)]
struct Pending {
    seq: u32,
    readings: Vec<Reading, MAX_READINGS>,
    /// When the batch was last handed out by `poll`; `None` if never.
    last_sent_ms: Option<u64>,
}

/// Device-side protocol state with room for `Q` unacknowledged batches.
///
/// Memory: about `Q` × `size_of::<Readings>()` (roughly 1.2 KiB per slot with
/// the default capacities). `poll` returns owned messages, so the firmware's
/// stack must hold one [`Message`] too.
#[derive(Debug, Clone)]
pub struct DeviceSession<const Q: usize> {
    config: DeviceConfig,
    /// Unacknowledged batches with consecutive sequence numbers, oldest first.
    queue: Deque<Pending, Q>,
    /// Sequence number of the next pushed batch. 64 bits so that running out
    /// of 32-bit sequence numbers is an error, not a wrap.
    next_seq: u64,
    /// Sequence number of the next batch to transmit, between the oldest
    /// queued one and `next_seq`. Moved back to retransmit.
    send_seq: u64,
    /// A `Hello` goes out before anything else: at boot and when asked.
    hello_due: bool,
    /// After a `Nack`, batches wait until this time.
    hold_until_ms: Option<u64>,
    /// Unix time minus monotonic time, from the last `TimeSync`.
    wall_offset_ms: Option<i64>,
    last_sent_ms: Option<u64>,
    last_heard_ms: Option<u64>,
}

impl<const Q: usize> DeviceSession<Q> {
    /// A session for a fresh boot: the first `poll` returns `Hello`, and
    /// sequence numbers start at 0.
    pub fn new(config: DeviceConfig) -> Self {
        Self {
            config,
            queue: Deque::new(),
            next_seq: 0,
            send_seq: 0,
            hello_due: true,
            hold_until_ms: None,
            wall_offset_ms: None,
            last_sent_ms: None,
            last_heard_ms: None,
        }
    }

    /// Queues a batch and returns its sequence number. Readings stamped
    /// [`DeviceTime::MonotonicMs`] are converted to wall time if a `TimeSync`
    /// has arrived. A full queue is an error; nothing is ever dropped here.
    pub fn push_readings(
        &mut self,
        mut readings: Vec<Reading, MAX_READINGS>,
    ) -> Result<u32, PushError> {
        if self.queue.is_full() {
            return Err(PushError::QueueFull { capacity: Q });
        }
        let seq = u32::try_from(self.next_seq).map_err(|_| PushError::SequenceExhausted {
            boot_epoch: self.config.boot_epoch,
        })?;
        for reading in &mut readings {
            reading.time = self.to_wall_time(reading.time);
        }
        let pending = Pending {
            seq,
            readings,
            last_sent_ms: None,
        };
        self.queue
            .push_back(pending)
            .map_err(|_| PushError::QueueFull { capacity: Q })?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// The next message to send, if any, in priority order: a due `Hello`, the
    /// next batch (after rewinding to the oldest unacknowledged one if it has
    /// waited `retransmit_after_ms`), or a heartbeat if the line was silent for
    /// `heartbeat_after_ms`. Call it whenever the line can take a frame.
    pub fn poll(&mut self, now_ms: u64) -> Option<Message> {
        let message = self.next_message(now_ms)?;
        self.last_sent_ms = Some(now_ms);
        Some(message)
    }

    /// Handles a decoded message from the gateway. Acknowledgements and resend
    /// requests for another boot epoch are stale and ignored.
    pub fn on_message(&mut self, message: &Message, now_ms: u64) {
        self.last_heard_ms = Some(now_ms);
        let epoch = self.config.boot_epoch;
        match message {
            Message::Ack(ack) if ack.boot_epoch == epoch => self.acknowledge(ack.seq),
            Message::Nack(nack) if nack.boot_epoch == epoch => {
                self.rewind_to(u64::from(nack.seq));
                self.hold_until_ms = Some(now_ms.saturating_add(self.config.retransmit_after_ms));
            }
            Message::Resend(resend) if resend.boot_epoch == epoch => {
                self.rewind_to(u64::from(resend.from_seq));
                self.hold_until_ms = None;
            }
            Message::TimeSync(sync) => {
                let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
                self.wall_offset_ms = Some(sync.unix_ms.saturating_sub(now));
            }
            Message::HelloRequest => {
                // The gateway lost its state, and with it anything in flight.
                self.hello_due = true;
                self.rewind_to(0);
            }
            _ => {}
        }
    }

    /// The timestamp for a reading taken at `now_ms`: wall time once a
    /// `TimeSync` has arrived, time since boot before.
    pub fn device_time(&self, now_ms: u64) -> DeviceTime {
        self.to_wall_time(DeviceTime::MonotonicMs(now_ms))
    }

    /// Unix time at monotonic time `now_ms`, if a `TimeSync` has arrived. A
    /// device with a real-time clock can use it to set the clock.
    pub fn wall_time_ms(&self, now_ms: u64) -> Option<i64> {
        let offset = self.wall_offset_ms?;
        Some(offset.saturating_add(i64::try_from(now_ms).unwrap_or(i64::MAX)))
    }

    /// The epoch this session runs in.
    pub fn boot_epoch(&self) -> u32 {
        self.config.boot_epoch
    }

    /// Batches pushed but not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.queue.len()
    }

    /// Free queue slots: how many batches `push_readings` will still accept.
    pub fn free_slots(&self) -> usize {
        Q - self.queue.len()
    }

    /// When the last message from the gateway arrived, if one has.
    pub fn last_heard_ms(&self) -> Option<u64> {
        self.last_heard_ms
    }

    fn next_message(&mut self, now_ms: u64) -> Option<Message> {
        if core::mem::take(&mut self.hello_due) {
            return Some(Message::Hello(self.hello()));
        }
        self.rewind_if_timed_out(now_ms);
        if let Some(batch) = self.next_batch(now_ms) {
            return Some(Message::Readings(batch));
        }
        let silent_ms = self
            .last_sent_ms
            .map_or(u64::MAX, |sent| now_ms.saturating_sub(sent));
        (silent_ms >= self.config.heartbeat_after_ms)
            .then_some(Message::Heartbeat(Heartbeat { uptime_ms: now_ms }))
    }

    fn hello(&self) -> Hello {
        Hello {
            device_id: self.config.device_id.clone(),
            firmware_version: self.config.firmware_version,
            boot_epoch: self.config.boot_epoch,
            capabilities: self.config.capabilities,
            resume_seq: u32::try_from(self.oldest_seq()).unwrap_or(u32::MAX),
        }
    }

    /// Go-back-N: once the oldest batch has waited too long, everything from
    /// it on is sent again. The gateway drops what it already has.
    fn rewind_if_timed_out(&mut self, now_ms: u64) {
        let Some(sent_ms) = self.queue.front().and_then(|oldest| oldest.last_sent_ms) else {
            return;
        };
        if now_ms.saturating_sub(sent_ms) >= self.config.retransmit_after_ms {
            self.send_seq = self.oldest_seq();
        }
    }

    fn next_batch(&mut self, now_ms: u64) -> Option<Readings> {
        if self.hold_until_ms.is_some_and(|until| now_ms < until) {
            return None;
        }
        self.hold_until_ms = None;
        let index = usize::try_from(self.send_seq.saturating_sub(self.oldest_seq())).ok()?;
        let pending = self.queue.get_mut(index)?;
        pending.last_sent_ms = Some(now_ms);
        self.send_seq += 1;
        Some(Readings {
            boot_epoch: self.config.boot_epoch,
            seq: pending.seq,
            readings: pending.readings.clone(),
        })
    }

    /// Drops every batch up to and including `seq`: they are on disk.
    fn acknowledge(&mut self, seq: u32) {
        while self.queue.front().is_some_and(|oldest| oldest.seq <= seq) {
            self.queue.pop_front();
        }
        self.send_seq = self.send_seq.max(self.oldest_seq());
    }

    /// Moves the send position back to `seq`, but not before the oldest batch
    /// still held (older ones were acknowledged and are gone) and never forward.
    fn rewind_to(&mut self, seq: u64) {
        self.send_seq = self.send_seq.min(seq.max(self.oldest_seq()));
    }

    /// Sequence number of the oldest held batch, or of the next one if none.
    fn oldest_seq(&self) -> u64 {
        self.queue
            .front()
            .map_or(self.next_seq, |oldest| u64::from(oldest.seq))
    }

    fn to_wall_time(&self, time: DeviceTime) -> DeviceTime {
        match (time, self.wall_offset_ms) {
            (DeviceTime::MonotonicMs(ms), Some(offset)) => {
                DeviceTime::WallMs(offset.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
            }
            _ => time,
        }
    }
}
