//! `POST /v1/topics/{topic}`: one record, or a batch (NDJSON lines or a
//! JSON array) in one durable append; the answer after the ticket resolved.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use serde_json::value::RawValue;

use super::auth::Access;
use super::idempotency::{self, Answer, Claim};
use super::reply::{self, param, Reply};
use super::Shared;
use crate::log::{now_ms, AppendError, Partition, Record};

/// Request headers that set the record's key, headers and timestamp
/// (query parameters `key`, `h.NAME`, `timestamp_ms` do the same).
pub const KEY_HEADER: &str = "tidewell-key";
pub const HEADER_PREFIX: &str = "tidewell-header-";
pub const TIMESTAMP_HEADER: &str = "tidewell-timestamp-ms";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// How the body splits into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The whole body is one record, whatever it holds.
    One,
    /// One record per non-empty line, each a JSON value.
    Ndjson,
    /// A JSON array, one record per element (its JSON text).
    Array,
}

/// What the URL and headers say about the records.
struct Shape {
    format: Format,
    key: Option<Bytes>,
    partition: Option<u32>,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: Option<i64>,
    idempotency_key: Option<String>,
}

pub async fn post(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    topic: &str,
    access: &Access,
) -> Reply {
    let Some(topic_log) = shared.log.topic(topic) else {
        shared.stats.refused("not_found");
        return reply::error(StatusCode::NOT_FOUND, format!("no topic {topic:?}"));
    };
    if !access.may_append(topic) {
        shared.stats.refused("forbidden");
        return reply::error(
            StatusCode::FORBIDDEN,
            format!("may not append to {topic:?}"),
        );
    }
    let shape = match shape(&req) {
        Ok(shape) => shape,
        Err(message) => return malformed(shared, message),
    };
    let partitions = topic_log.partitions.len() as u32;
    let partition = match pick_partition(&shape, partitions) {
        Ok(p) => p,
        Err(message) => {
            shared.stats.refused("not_found");
            return reply::error(StatusCode::NOT_FOUND, message);
        }
    };
    if let Some(reply) = too_long(shared, req.headers()) {
        return reply;
    }
    let user = access.user.as_deref();
    let ticket = match &shape.idempotency_key {
        None => None,
        Some(key) => match shared.keys.claim(user.unwrap_or_default(), topic, key) {
            Claim::New(ticket) => Some(ticket),
            Claim::Done(answer) => return replay(shared, &answer),
            Claim::Pending => {
                shared.stats.refused("in_progress");
                return reply::retry(
                    StatusCode::CONFLICT,
                    1,
                    "a request with this Idempotency-Key is still in flight",
                );
            }
        },
    };
    let body = match read_body(shared, req.into_body()).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let mut records = match split(&body, &shape) {
        Ok(records) => records,
        Err(message) => return malformed(shared, message),
    };
    if let Some(key) = &shape.idempotency_key {
        let count = records.len();
        idempotency::mark(&mut records[0], user, key, count);
    }
    let Some(ticket) = ticket else {
        return match append(shared, topic, Partition(partition), records).await {
            Ok(answer) => reply::serialized(StatusCode::OK, &answer),
            Err(reply) => reply,
        };
    };
    // A keyed append runs in a task of its own: a client that hangs up
    // while its records are being synced must not lose their key.
    let (task_shared, task_topic) = (shared.clone(), topic.to_string());
    let appending = tokio::spawn(async move {
        let result = append(&task_shared, &task_topic, Partition(partition), records).await;
        if let Ok(answer) = &result {
            ticket.done(answer.clone());
        }
        result
    });
    match appending.await {
        Ok(Ok(answer)) => reply::serialized(StatusCode::OK, &answer),
        Ok(Err(reply)) => reply,
        Err(e) => reply::retry(StatusCode::SERVICE_UNAVAILABLE, 1, e),
    }
}

fn malformed(shared: &Shared, message: String) -> Reply {
    shared.stats.refused("malformed");
    reply::error(StatusCode::BAD_REQUEST, message)
}

fn replay(shared: &Shared, answer: &Answer) -> Reply {
    Shared::count(&shared.stats.idempotent_replays, 1);
    let mut reply = reply::serialized(StatusCode::OK, &answer);
    reply.headers_mut().insert(
        "idempotent-replayed",
        hyper::header::HeaderValue::from_static("true"),
    );
    reply
}

/// 413 when the declared length is over the limit, before any of the body
/// is read (no `100 Continue` is sent for it).
fn too_long(shared: &Shared, headers: &HeaderMap) -> Option<Reply> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())?;
    let limit = shared.config.max_body_bytes;
    (declared > limit as u64).then(|| too_large(shared, limit))
}

fn too_large(shared: &Shared, limit: usize) -> Reply {
    shared.stats.refused("too_large");
    reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over max_body_bytes = {limit}"),
    )
}

/// The body, at most `max_body_bytes` of it (a chunked body is cut off there).
async fn read_body(shared: &Shared, body: Incoming) -> Result<Bytes, Reply> {
    let limit = shared.config.max_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(shared, limit)),
        Err(e) => Err(malformed(shared, format!("reading the body: {e}"))),
    }
}

fn shape(req: &Request<Incoming>) -> Result<Shape, String> {
    let pairs = reply::query(req.uri().query())?;
    let headers = req.headers();
    let text = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| format!("header {name} is not visible ASCII"))
            })
            .transpose()
    };
    let content_type = text(CONTENT_TYPE.as_str())?.unwrap_or_default();
    let format = match param(&pairs, "batch") {
        Some("ndjson") => Format::Ndjson,
        Some("array") => Format::Array,
        Some(other) => return Err(format!("batch={other:?}: use ndjson or array")),
        None if content_type.starts_with("application/x-ndjson") => Format::Ndjson,
        None => Format::One,
    };
    let key = param(&pairs, "key")
        .map(str::to_string)
        .or(text(KEY_HEADER)?)
        .map(Bytes::from);
    let partition = reply::number(&pairs, "partition")?
        .map(|p| u32::try_from(p).map_err(|_| format!("partition={p} is out of range")))
        .transpose()?;
    let timestamp = match param(&pairs, "timestamp_ms").map(str::to_string) {
        Some(t) => Some(t),
        None => text(TIMESTAMP_HEADER)?,
    };
    let timestamp_ms = timestamp
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| format!("timestamp_ms {t:?} is not an integer"))
        })
        .transpose()?;
    let idempotency_key = text(IDEMPOTENCY_HEADER)?;
    if let Some(k) = &idempotency_key {
        if !idempotency::valid_key(k) {
            return Err("Idempotency-Key must be 1-200 characters of visible ASCII".into());
        }
    }
    Ok(Shape {
        format,
        key,
        partition,
        headers: record_headers(&pairs, headers)?,
        timestamp_ms,
        idempotency_key,
    })
}

/// `h.NAME=VALUE` query parameters, then `Tidewell-Header-NAME` headers, in order.
fn record_headers(
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Vec<(String, Bytes)>, String> {
    let mut out: Vec<(String, Bytes)> = pairs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("h.")?.to_string(), Bytes::from(v.clone()))))
        .collect();
    for (name, value) in headers {
        if let Some(n) = name.as_str().strip_prefix(HEADER_PREFIX) {
            out.push((n.to_string(), Bytes::copy_from_slice(value.as_bytes())));
        }
    }
    if out
        .iter()
        .any(|(n, _)| n.is_empty() || n.starts_with("http."))
    {
        return Err("record header names must be non-empty and not start with \"http.\"".into());
    }
    Ok(out)
}

/// An explicit `partition`, else the key's CRC-32C modulo the count (as
/// syslog does), else 0.
fn pick_partition(shape: &Shape, partitions: u32) -> Result<u32, String> {
    match (shape.partition, &shape.key) {
        (Some(p), _) if p < partitions => Ok(p),
        (Some(p), _) => Err(format!("no partition {p} (the topic has {partitions})")),
        (None, Some(key)) if partitions > 1 => Ok(crc32c::crc32c(key) % partitions),
        (None, _) => Ok(0),
    }
}

/// The records of the body; any malformed element refuses the whole batch.
fn split(body: &Bytes, shape: &Shape) -> Result<Vec<Record>, String> {
    let values: Vec<Bytes> = match shape.format {
        Format::One => vec![body.clone()],
        Format::Ndjson => ndjson(body)?,
        Format::Array => array(body)?,
    };
    if values.is_empty() {
        return Err("the batch holds no record".into());
    }
    let timestamp_ms = shape.timestamp_ms.unwrap_or_else(now_ms);
    Ok(values
        .into_iter()
        .map(|value| Record {
            timestamp_ms,
            key: shape.key.clone(),
            value,
            headers: shape.headers.clone(),
        })
        .collect())
}

fn ndjson(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (number, line) in body.split(|&b| b == b'\n').enumerate() {
        let end = start + line.len();
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if !trimmed.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_slice::<&RawValue>(trimmed)
                .map_err(|e| format!("line {}: not JSON: {e}", number + 1))?;
            out.push(body.slice(start..start + trimmed.len()));
        }
        start = end + 1;
    }
    Ok(out)
}

fn array(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let elements: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array: {e}"))?;
    Ok(elements
        .into_iter()
        .map(|e| Bytes::copy_from_slice(e.get().as_bytes()))
        .collect())
}

/// One append, waiting for room in the writer's queue; the answer once durable.
async fn append(
    shared: &Shared,
    topic: &str,
    partition: Partition,
    mut records: Vec<Record>,
) -> Result<Answer, Reply> {
    let count = records.len() as u64;
    let bytes: u64 = records.iter().map(|r| r.payload_len() as u64).sum();
    let ticket = loop {
        match shared.log.try_append(topic, partition, records) {
            Ok(ticket) => break ticket,
            Err((AppendError::Overloaded, back)) => {
                records = back;
                shared.log.capacity().await;
            }
            Err((e, _)) => return Err(refusal(shared, &e)),
        }
    };
    match ticket.await {
        Ok(appended) => {
            Shared::count(&shared.stats.appends, 1);
            Shared::count(&shared.stats.records_appended, count);
            Shared::count(&shared.stats.bytes_appended, bytes);
            Ok(Answer {
                topic: topic.to_string(),
                partition: partition.0,
                offset: appended.first.0,
                count: appended.count,
            })
        }
        Err(e) => Err(refusal(shared, &e)),
    }
}

fn refusal(shared: &Shared, e: &AppendError) -> Reply {
    match e {
        AppendError::QuotaExceeded { .. } => {
            shared.stats.refused("full");
            reply::retry(StatusCode::SERVICE_UNAVAILABLE, 30, e)
        }
        AppendError::TooLarge(_) => {
            shared.stats.refused("too_large");
            reply::error(StatusCode::PAYLOAD_TOO_LARGE, e)
        }
        AppendError::UnknownTopic(_) | AppendError::UnknownPartition { .. } => {
            shared.stats.refused("not_found");
            reply::error(StatusCode::NOT_FOUND, e)
        }
        AppendError::Empty => malformed(shared, e.to_string()),
        AppendError::Poisoned(_) | AppendError::Closed | AppendError::Overloaded => {
            shared.stats.refused("log_error");
            reply::retry(StatusCode::SERVICE_UNAVAILABLE, 60, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_become_records_and_a_bad_line_refuses_all() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n[2]\n\"three\"");
        let values = ndjson(&body).unwrap();
        assert_eq!(values, vec![&b"{\"a\":1}"[..], b"[2]", b"\"three\""]);
        let bad = Bytes::from_static(b"{\"a\":1}\n{oops\n");
        assert!(ndjson(&bad).unwrap_err().contains("line 2"));
    }

    #[test]
    fn array_elements_keep_their_json_text() {
        let body = Bytes::from_static(b"[ {\"t\": 21.5}, 3, \"x\" ]");
        let values = array(&body).unwrap();
        assert_eq!(values, vec![&b"{\"t\": 21.5}"[..], b"3", b"\"x\""]);
        assert!(array(&Bytes::from_static(b"{\"not\":\"array\"}")).is_err());
    }
}
