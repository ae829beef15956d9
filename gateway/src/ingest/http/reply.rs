//! Answers, response bodies and query strings.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Reply = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Reply {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

pub fn json(status: StatusCode, value: &Value) -> Reply {
    let mut text = value.to_string();
    text.push('\n');
    with_type(status, "application/json", full(text))
}

/// `value` as JSON with `status`, serialized straight into the body (no
/// `Value` in between).
pub fn serialized<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(mut text) => {
            text.push(b'\n');
            with_type(status, "application/json", full(text))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    json(status, &json!({ "error": message.to_string() }))
}

/// An error the client should retry after `seconds`.
pub fn retry(status: StatusCode, seconds: u32, message: impl std::fmt::Display) -> Reply {
    let mut reply = error(status, message);
    reply
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    reply
}

pub fn unauthorized(message: &str) -> Reply {
    let mut reply = error(StatusCode::UNAUTHORIZED, message);
    reply.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tidewell\", charset=\"UTF-8\""),
    );
    reply
}

/// A streamed body: each message on the channel is one chunk; the body ends
/// when the sender goes away.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// The query string's pairs, percent-decoded (`+` is a space).
pub fn query(raw: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// The first value of `name` in `pairs`.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `name` parsed as a number, if present.
pub fn number(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, String> {
    param(pairs, name)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("{name}={v:?} is not a non-negative integer"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_percent_decoded() {
        let q = query(Some("key=dev%2F1&h.site=north+hall&flag")).unwrap();
        assert_eq!(param(&q, "key"), Some("dev/1"));
        assert_eq!(param(&q, "h.site"), Some("north hall"));
        assert_eq!(param(&q, "flag"), Some(""));
        assert!(query(Some("key=%zz")).is_err());
        assert_eq!(number(&q, "missing"), Ok(None));
        assert!(number(&q, "key").is_err());
    }
}
