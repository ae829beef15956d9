//! `GET /v1/topics/{topic}/partitions/{p}/records`: records from an offset
//! as NDJSON in the `log dump` shape; long-poll (`wait_ms`), or a stream
//! (`follow=true`: chunked NDJSON; `Accept: text/event-stream`: SSE) that
//! sends records as they become readable.
//!
//! Only [`Log::read`] is used, which returns offsets below the partition's
//! visible end: under `fsync = "always"` that end moves only after the
//! fdatasync, so no reader is ever sent a record that is not on disk.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT};
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::Access;
use super::reply::{self, number, param, ChannelBody, Reply};
use super::Shared;
use crate::ingest::Shutdown;
use crate::log::dump::record_json;
use crate::log::{Log, Offset, Partition, ReadError, StoredRecord};

pub const DEFAULT_LIMIT: u64 = 1000;
pub const MAX_LIMIT: u64 = 10_000;
/// Bytes read from the log at a time.
const READ_BYTES: usize = 1 << 20;
/// Chunks a stream may have queued for a slow client.
const STREAM_CHUNKS: usize = 4;
pub const NEXT_OFFSET: &str = "tidewell-next-offset";

/// What the reader asked for.
struct Ask {
    topic: String,
    partition: Partition,
    offset: Offset,
    limit: usize,
    wait: Duration,
    stream: Option<Stream>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Ndjson,
    Sse,
}

pub async fn get(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    topic: &str,
    partition: &str,
    access: &Access,
) -> Reply {
    let ask = match ask(shared, &req, topic, partition, access) {
        Ok(ask) => ask,
        Err(reply) => return reply,
    };
    match ask.stream {
        Some(kind) => stream(shared.clone(), ask, kind),
        None => once(shared, ask).await,
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, built once per refused request"
)]
fn ask(
    shared: &Shared,
    req: &Request<Incoming>,
    topic: &str,
    partition: &str,
    access: &Access,
) -> Result<Ask, Reply> {
    let not_found = |message: String| {
        shared.stats.refused("not_found");
        reply::error(StatusCode::NOT_FOUND, message)
    };
    let Some(topic_log) = shared.log.topic(topic) else {
        return Err(not_found(format!("no topic {topic:?}")));
    };
    let partition = match partition.parse::<u32>() {
        Ok(p) if (p as usize) < topic_log.partitions.len() => Partition(p),
        _ => {
            return Err(not_found(format!(
                "topic {topic:?} has no partition {partition:?}"
            )))
        }
    };
    if !access.may_read(topic) {
        shared.stats.refused("forbidden");
        return Err(reply::error(
            StatusCode::FORBIDDEN,
            format!("may not read {topic:?}"),
        ));
    }
    let bad = |message: String| {
        shared.stats.refused("malformed");
        reply::error(StatusCode::BAD_REQUEST, message)
    };
    let pairs = reply::query(req.uri().query()).map_err(bad)?;
    let sse = req
        .headers()
        .get(ACCEPT)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    // SSE reconnects resume after the last event seen.
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|id| id + 1);
    let (start, end) = shared.log.offsets(topic, partition).unwrap_or_default();
    let offset = number(&pairs, "offset")
        .map_err(bad)?
        .or(resume)
        .unwrap_or(start.0);
    if offset < start.0 || offset > end.0 {
        shared.stats.refused("bad_offset");
        return Err(reply::json(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &json!({"error": format!("offset {offset} is outside {}..={}", start.0, end.0), "start": start.0, "end": end.0}),
        ));
    }
    let limit = number(&pairs, "limit")
        .map_err(bad)?
        .unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad(format!("limit must be 1..={MAX_LIMIT}")));
    }
    let wait_ms = number(&pairs, "wait_ms").map_err(bad)?.unwrap_or(0);
    let follow = matches!(param(&pairs, "follow"), Some("true" | "1"));
    Ok(Ask {
        topic: topic.to_string(),
        partition,
        offset: Offset(offset),
        limit: limit as usize,
        wait: Duration::from_millis(wait_ms.min(shared.config.max_wait_ms)),
        stream: match (sse, follow) {
            (true, _) => Some(Stream::Sse),
            (false, true) => Some(Stream::Ndjson),
            (false, false) => None,
        },
    })
}

/// One answer: what is readable from the offset (after waiting up to
/// `wait_ms` for something, when nothing is).
async fn once(shared: &Shared, ask: Ask) -> Reply {
    let log = &shared.log;
    if !ask.wait.is_zero() {
        let _ =
            tokio::time::timeout(ask.wait, past(log, &ask.topic, ask.partition, ask.offset)).await;
    }
    match collect(log, &ask.topic, ask.partition, ask.offset, ask.limit) {
        Ok(records) => {
            let next = records
                .last()
                .map_or(ask.offset, |r| Offset(r.offset.0 + 1));
            Shared::count(&shared.stats.records_served, records.len() as u64);
            let body = lines(&ask.topic, ask.partition, &records, Stream::Ndjson);
            let mut reply =
                reply::with_type(StatusCode::OK, "application/x-ndjson", reply::full(body));
            reply
                .headers_mut()
                .insert(NEXT_OFFSET, HeaderValue::from(next.0));
            reply
        }
        Err(e) => damaged(shared, &e),
    }
}

fn damaged(shared: &Shared, e: &ReadError) -> Reply {
    shared.stats.refused("log_error");
    let resume = match e {
        ReadError::Corrupt { resume_at, .. } => resume_at.map(|o| o.0),
        ReadError::Missing { to, .. } => Some(to.0),
        _ => None,
    };
    reply::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": e.to_string(), "resume_at": resume}),
    )
}

/// A streamed answer; the task ends when the client goes away or the
/// gateway stops.
fn stream(shared: Arc<Shared>, ask: Ask, kind: Stream) -> Reply {
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        Shared::count(&shared.stats.streams_open, 1);
        follow(&shared, ask, kind, tx, shutdown).await;
        shared
            .stats
            .streams_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    });
    let content_type = match kind {
        Stream::Ndjson => "application/x-ndjson",
        Stream::Sse => "text/event-stream",
    };
    let mut reply = reply::with_type(StatusCode::OK, content_type, ChannelBody(rx).boxed());
    reply
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    reply
}

async fn follow(
    shared: &Shared,
    ask: Ask,
    kind: Stream,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: Shutdown,
) {
    let log = &shared.log;
    let mut next = ask.offset;
    loop {
        let records = match collect(log, &ask.topic, ask.partition, next, ask.limit) {
            Ok(records) => records,
            Err(e) => {
                let line = format!("{}\n", json!({"error": e.to_string()}));
                let _ = tx.send(Bytes::from(line)).await;
                return;
            }
        };
        if let Some(last) = records.last() {
            next = Offset(last.offset.0 + 1);
            Shared::count(&shared.stats.records_served, records.len() as u64);
            if tx
                .send(lines(&ask.topic, ask.partition, &records, kind))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        tokio::select! {
            () = past(log, &ask.topic, ask.partition, next) => {}
            () = tx.closed() => return,
            () = shutdown.requested() => return,
        }
    }
}

/// Resolves once the partition's readable end is past `offset`.
async fn past(log: &Log, topic: &str, partition: Partition, offset: Offset) {
    loop {
        // Read the counter before the end: a publish in between wakes us.
        let seen = log.published();
        if log
            .offsets(topic, partition)
            .is_some_and(|(_, end)| end > offset)
        {
            return;
        }
        log.appended_after(seen).await;
    }
}

/// Up to `limit` readable records from `from`.
fn collect(
    log: &Log,
    topic: &str,
    partition: Partition,
    from: Offset,
    limit: usize,
) -> Result<Vec<StoredRecord>, ReadError> {
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut next = from;
    while out.len() < limit {
        let records = log.read(topic, partition, next, READ_BYTES)?;
        let Some(last) = records.last() else { break };
        next = Offset(last.offset.0 + 1);
        out.extend(records);
    }
    out.truncate(limit);
    Ok(out)
}

/// The records in the dump's JSON shape: one per line, or one SSE event
/// each (`id` = offset).
fn lines(topic: &str, partition: Partition, records: &[StoredRecord], kind: Stream) -> Bytes {
    let mut out = String::new();
    for record in records {
        let value = record_json(topic, partition, record);
        match kind {
            Stream::Ndjson => out.push_str(&format!("{value}\n")),
            Stream::Sse => out.push_str(&format!("id: {}\ndata: {value}\n\n", record.offset.0)),
        }
    }
    Bytes::from(out)
}
