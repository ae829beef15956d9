//! A port configured as `format = "lines"`: newline-terminated text (CSV,
//! NMEA, ...), one record per line, keyed by the port name. Such sensors know
//! no acknowledgements, so a line lost in transit or before the append is
//! gone; a line is never split or merged, and overlong lines are dropped
//! whole and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::records::H_PORT;
use super::{AbortOnDrop, PortCtx};
use crate::log::{now_ms, AppendTicket, Partition, Record};

pub async fn run<S: AsyncRead + Send + 'static>(
    stream: S,
    ctx: Arc<PortCtx>,
) -> std::io::Result<()> {
    let mut reader = Box::pin(stream);
    let (tx, rx) = mpsc::channel::<(AppendTicket, u64)>(256);
    let waiter = tokio::spawn(await_appends(rx, ctx.clone()));
    let _abort = AbortOnDrop(vec![waiter.abort_handle()]);
    let mut splitter = LineSplitter::new(ctx.config.max_line_bytes);
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the port closed",
            ));
        }
        for line in splitter.push(&buf[..n]) {
            append_line(&ctx, line, &tx).await;
        }
        ctx.stats
            .long_lines
            .fetch_add(splitter.take_dropped(), Ordering::Relaxed);
    }
}

async fn append_line(ctx: &PortCtx, line: Vec<u8>, tx: &mpsc::Sender<(AppendTicket, u64)>) {
    let key = Bytes::from(ctx.name.clone());
    let record = Record {
        timestamp_ms: now_ms(),
        key: Some(key.clone()),
        value: Bytes::from(line),
        headers: vec![(H_PORT.into(), key)],
    };
    let bytes = record.payload_len() as u64;
    let partition = Partition(crc32c::crc32c(ctx.name.as_bytes()) % ctx.partitions);
    match ctx.log.append(&ctx.config.topic, partition, vec![record]) {
        Ok(ticket) => {
            let _ = tx.send((ticket, bytes)).await;
        }
        Err(e) => {
            ctx.stats.append_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(port = %ctx.name, "line dropped, append refused: {e}");
        }
    }
}

async fn await_appends(mut rx: mpsc::Receiver<(AppendTicket, u64)>, ctx: Arc<PortCtx>) {
    while let Some((ticket, bytes)) = rx.recv().await {
        match ticket.await {
            Ok(_) => {
                ctx.stats.readings_appended.fetch_add(1, Ordering::Relaxed);
                ctx.stats.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                ctx.stats.append_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(port = %ctx.name, "line lost, append failed: {e}");
            }
        }
    }
}

/// Splits a byte stream into lines (`\n`, with an optional `\r` before it),
/// skipping empty lines and dropping lines longer than the limit.
pub struct LineSplitter {
    max: usize,
    current: Vec<u8>,
    /// Inside an overlong line: discard until its newline.
    skipping: bool,
    dropped: u64,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            current: Vec::new(),
            skipping: false,
            dropped: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if !self.skipping && !self.current.is_empty() {
                    let mut line = std::mem::take(&mut self.current);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.is_empty() {
                        lines.push(line);
                    }
                }
                self.current.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.current.push(b);
                if self.current.len() > self.max + 1 {
                    self.current.clear();
                    self.skipping = true;
                    self.dropped += 1;
                }
            }
        }
        lines
    }

    /// Overlong lines dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_on_newlines_strips_cr_and_skips_empty_lines() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"$GPGGA,1\r\n\nA,B"), vec![b"$GPGGA,1".to_vec()]);
        assert_eq!(s.push(b",C\n"), vec![b"A,B,C".to_vec()]);
    }

    #[test]
    fn overlong_lines_are_dropped_whole_and_counted() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"123456789\nok\n"), vec![b"ok".to_vec()]);
        assert_eq!(s.take_dropped(), 1);
        assert_eq!(
            s.push(b"1234\n"),
            vec![b"1234".to_vec()],
            "exactly the limit is fine"
        );
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_lines(lines in proptest::collection::vec("[a-z,0-9]{1,20}", 0..20), cut in 1usize..7) {
            let text: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut s = LineSplitter::new(64);
            let got: Vec<Vec<u8>> = text.chunks(cut).flat_map(|c| s.push(c)).collect();
            let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
