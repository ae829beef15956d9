//! One open port speaking `firmware-proto` frames.
//!
//! Reading, appending and acknowledging are pipelined: each batch the session
//! accepts is appended at once (the log call returns a ticket) and queued; a
//! second task awaits the tickets in arrival order and only then sends the
//! cumulative `Ack`, so an `Ack` always means "this batch and every earlier
//! one of the epoch is on disk".

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use firmware_proto::{
    encode_frame, Action, Capabilities, FrameDecoder, Message, Readings, TimeSync, MAX_FRAME_LEN,
    MAX_RAW_FRAME_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::records::{self, DeviceClock};
use super::{AbortOnDrop, PortCtx};
use crate::log::{now_ms, AppendTicket, Partition, Record};

/// Batches appended but not yet acknowledged, per port.
const ACK_QUEUE: usize = 64;

/// An acknowledgement waiting its turn.
enum PendingAck {
    /// Already in the log (a retransmission): acknowledge again.
    Already { epoch: u32, seq: u32 },
    /// Appended just now: acknowledge once durable.
    Durable {
        ticket: AppendTicket,
        device: String,
        epoch: u32,
        seq: u32,
        readings: u64,
        bytes: u64,
    },
}

type Session = Arc<Mutex<firmware_proto::GatewaySession>>;

/// Runs the protocol on `stream` until it fails (the port went away).
pub async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    ctx: Arc<PortCtx>,
) -> std::io::Result<()> {
    let (reader, writer) = tokio::io::split(stream);
    let (out_tx, out_rx) = mpsc::channel::<Message>(ACK_QUEUE);
    let (ack_tx, ack_rx) = mpsc::channel::<PendingAck>(ACK_QUEUE);
    let session: Session = Arc::default();
    let write_task = tokio::spawn(write_frames(writer, out_rx));
    let ack_task = tokio::spawn(acknowledge_in_order(
        ack_rx,
        session.clone(),
        out_tx.clone(),
        ctx.clone(),
    ));
    let writer_guard = AbortOnDrop(vec![write_task.abort_handle()]);
    // After a gateway restart the device may not know we lost our state.
    let _ = out_tx.send(Message::HelloRequest).await;
    let link = Link {
        ctx,
        session,
        out: out_tx,
        acks: ack_tx,
        clock: DeviceClock::default(),
    };
    let result = serve(reader, link).await;
    drop(writer_guard); // nothing more reaches the port; replies now fail fast
                        // The link is gone (its senders dropped with it). Batches already
                        // appended must still be recorded as delivered once durable, or the
                        // device's retransmission after a replug would be appended twice: let
                        // the acknowledger drain its queue before the next connection starts.
    let _ = ack_task.await;
    result
}

/// Reads and handles frames until the port fails.
async fn serve<R: AsyncRead + Unpin>(mut reader: R, mut link: Link) -> std::io::Result<()> {
    let mut decoder = FrameDecoder::<MAX_RAW_FRAME_LEN>::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the port closed",
            ));
        }
        let mut events = Vec::new();
        decoder.push(&buf[..n], |event| events.push(event));
        for event in events {
            match event {
                Ok(message) => link.handle(message).await,
                Err(e) => {
                    link.ctx.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(port = %link.ctx.name, "dropped a damaged frame: {e}");
                }
            }
        }
        if write_task_ended(&link) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "writing to the port failed",
            ));
        }
    }
}

fn write_task_ended(link: &Link) -> bool {
    link.out.is_closed()
}

struct Link {
    ctx: Arc<PortCtx>,
    session: Session,
    out: mpsc::Sender<Message>,
    acks: mpsc::Sender<PendingAck>,
    clock: DeviceClock,
}

impl Link {
    async fn handle(&mut self, message: Message) {
        self.ctx.stats.frames.fetch_add(1, Ordering::Relaxed);
        let arrival = now_ms();
        if let Message::Heartbeat(beat) = &message {
            self.clock.heard_uptime(beat.uptime_ms, arrival);
        }
        let (action, hello) = {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            let action = session.on_message(&message);
            (action, session.device().cloned())
        };
        match (action, message, hello) {
            (Action::Append { boot_epoch, seq }, Message::Readings(batch), Some(hello)) => {
                self.append(&hello.device_id, boot_epoch, seq, &batch, arrival)
                    .await;
            }
            (Action::Welcome { new_epoch }, _, Some(hello)) => {
                tracing::info!(port = %self.ctx.name, device = %hello.device_id, epoch = hello.boot_epoch, new_epoch, "serial device introduced itself");
                if !hello.capabilities.contains(Capabilities::HAS_CLOCK) {
                    let _ = self
                        .out
                        .send(Message::TimeSync(TimeSync { unix_ms: now_ms() }))
                        .await;
                }
            }
            (action, _, _) => {
                if matches!(action, Action::DuplicateReAck(_)) {
                    self.ctx
                        .stats
                        .duplicate_batches
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(reply) = action.reply() {
                    let _ = self.out.send(reply).await;
                }
            }
        }
    }

    /// Appends a batch the session accepted, unless the log already holds it
    /// (a retransmission across a gateway restart), and queues its `Ack`.
    async fn append(&mut self, device: &str, epoch: u32, seq: u32, batch: &Readings, arrival: i64) {
        if self.ctx.delivered.contains(device, epoch, seq) {
            self.ctx
                .stats
                .duplicate_batches
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.acks.send(PendingAck::Already { epoch, seq }).await;
            return;
        }
        let records = records::to_records(device, &self.ctx.name, batch, self.clock, arrival);
        let readings = records.len() as u64;
        let bytes = records.iter().map(Record::payload_len).sum::<usize>() as u64;
        let partition = Partition(crc32c::crc32c(device.as_bytes()) % self.ctx.partitions);
        match self
            .ctx
            .log
            .append(&self.ctx.config.topic, partition, records)
        {
            Ok(ticket) => {
                let pending = PendingAck::Durable {
                    ticket,
                    device: device.to_string(),
                    epoch,
                    seq,
                    readings,
                    bytes,
                };
                let _ = self.acks.send(pending).await;
            }
            Err(e) => {
                tracing::warn!(port = %self.ctx.name, device, "append refused: {e}");
                self.ctx
                    .stats
                    .append_failures
                    .fetch_add(1, Ordering::Relaxed);
                let nack = self
                    .session
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .append_failed(epoch, seq);
                let _ = self.out.send(Message::Nack(nack)).await;
            }
        }
    }
}

/// Sends `Ack`s in the order the batches arrived, each once its batch is
/// durable. After a failed append, later batches of that epoch are neither
/// acknowledged nor recorded as delivered until the hole is filled: the `Ack`
/// is cumulative, so acknowledging them would claim the missing batch too.
async fn acknowledge_in_order(
    mut rx: mpsc::Receiver<PendingAck>,
    session: Session,
    out: mpsc::Sender<Message>,
    ctx: Arc<PortCtx>,
) {
    let mut hole: Option<(u32, u32)> = None;
    while let Some(pending) = rx.recv().await {
        let (epoch, seq, durable) = match pending {
            PendingAck::Already { epoch, seq } => (epoch, seq, Ok(None)),
            PendingAck::Durable {
                ticket,
                device,
                epoch,
                seq,
                readings,
                bytes,
            } => (
                epoch,
                seq,
                ticket.await.map(|_| Some((device, readings, bytes))),
            ),
        };
        let behind_hole = hole.is_some_and(|(e, s)| e == epoch && seq > s);
        let reply = match durable {
            Err(e) => {
                tracing::warn!(port = %ctx.name, epoch, seq, "append failed: {e}");
                ctx.stats.append_failures.fetch_add(1, Ordering::Relaxed);
                hole = Some(
                    hole.filter(|&(e, s)| e == epoch && s < seq)
                        .unwrap_or((epoch, seq)),
                );
                Message::Nack(
                    session
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .append_failed(epoch, seq),
                )
            }
            Ok(_) if behind_hole => continue,
            Ok(appended) => {
                if let Some((device, readings, bytes)) = appended {
                    ctx.stats.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
                    ctx.delivered.note(&device, epoch, seq);
                    ctx.stats.batches_appended.fetch_add(1, Ordering::Relaxed);
                    ctx.stats
                        .readings_appended
                        .fetch_add(readings, Ordering::Relaxed);
                }
                hole = hole.filter(|&(e, s)| !(e == epoch && s == seq));
                Message::Ack(
                    session
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .appended(epoch, seq),
                )
            }
        };
        // With the port gone the reply is lost; go on recording deliveries.
        let _ = out.send(reply).await;
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut rx: mpsc::Receiver<Message>) {
    let mut frame = [0u8; MAX_FRAME_LEN];
    while let Some(message) = rx.recv().await {
        let Ok(len) = encode_frame(&message, &mut frame) else {
            continue; // our own messages always fit; nothing to send otherwise
        };
        if writer.write_all(&frame[..len]).await.is_err() || writer.flush().await.is_err() {
            return; // the reader notices the closed channel and reconnects
        }
    }
}
