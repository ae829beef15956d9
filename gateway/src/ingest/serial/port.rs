//! Opening a port and keeping it open: hot-plug with capped backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_serial::SerialPortBuilderExt;

use super::{frames, lines, Format, PortCtx};

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Runs a port forever: opens it, serves it until it fails, and tries again.
pub async fn run(ctx: Arc<PortCtx>) {
    let mut delay = FIRST_RETRY;
    let mut reported_missing = false;
    loop {
        match open(&ctx) {
            Ok(stream) => {
                tracing::info!(port = %ctx.name, path = %ctx.config.path.display(), baud = ctx.config.baud, "serial port open");
                ctx.stats.ports_open.fetch_add(1, Ordering::Relaxed);
                let result = match ctx.config.format {
                    Format::Frames => frames::run(stream, ctx.clone()).await,
                    Format::Lines => lines::run(stream, ctx.clone()).await,
                };
                ctx.stats.ports_open.fetch_sub(1, Ordering::Relaxed);
                ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let why = result
                    .err()
                    .map_or_else(|| "closed".to_string(), |e| e.to_string());
                tracing::warn!(port = %ctx.name, "serial port lost ({why}); waiting for it to come back");
                delay = FIRST_RETRY;
                reported_missing = true;
            }
            Err(e) => {
                if !reported_missing {
                    tracing::warn!(port = %ctx.name, path = %ctx.config.path.display(), "cannot open serial port ({e}); retrying");
                    reported_missing = true;
                }
            }
        }
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

fn open(ctx: &PortCtx) -> tokio_serial::Result<tokio_serial::SerialStream> {
    let path = ctx.config.path.to_string_lossy();
    tokio_serial::new(path, ctx.config.baud).open_native_async()
}

/// Up to a quarter more, so many gateways do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay + delay.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
