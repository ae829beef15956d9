//! Who is asking: HTTP basic auth against `[[mqtt.users]]` (the same argon2
//! hashes, through a [`Gate`] of our own: bounded, cached, slowed down after
//! failures), or anonymous on a loopback connection when allowed.
//!
//! ACL patterns are matched against the log topic name: a user's
//! `publish_acl` decides what it may POST to, its `subscribe_acl` what it may
//! read back. `{client_id}` and `{username}` both stand for the username.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::reply::{self, Reply};
use super::Shared;
use crate::ingest::mqtt::acl::Acl;
use crate::ingest::mqtt::auth::AuthFailure;
use crate::ingest::mqtt::gate::Attempt;

/// How long a request may wait for a password check.
const AUTH_DEADLINE: Duration = Duration::from_secs(10);

/// An authenticated (or anonymous) client's permissions.
pub struct Access {
    /// `None` for anonymous requests.
    pub user: Option<String>,
    pub acl: Arc<Acl>,
}

impl Access {
    pub fn may_append(&self, topic: &str) -> bool {
        self.acl.may_publish(topic)
    }

    pub fn may_read(&self, topic: &str) -> bool {
        self.acl.may_subscribe(topic)
    }
}

/// Checks the `Authorization` header; the error is the answer to send.
pub async fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Access, Reply> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return anonymous(shared, peer);
    };
    let (username, password) = basic(value.as_bytes())
        .ok_or_else(|| reply::unauthorized("malformed basic credentials"))?;
    let attempt = Attempt {
        addr: peer.ip(),
        client_id: &username,
        username: &username,
        password: &password,
    };
    let deadline = Instant::now() + AUTH_DEADLINE;
    let access = shared.access();
    match shared.gate.check(&access.users, &attempt, deadline).await {
        Ok(user) => Ok(Access {
            acl: access.acls.get(&user.username).cloned().unwrap_or_else(|| {
                let name = &user.username;
                Arc::new(Acl::new(
                    &user.publish_acl,
                    &user.subscribe_acl,
                    name,
                    Some(name),
                ))
            }),
            user: Some(username),
        }),
        Err(AuthFailure::Throttled) => {
            shared.stats.refused("throttled");
            Err(reply::retry(
                StatusCode::TOO_MANY_REQUESTS,
                1,
                "recent failed logins: slowed down",
            ))
        }
        Err(AuthFailure::Busy) => {
            shared.stats.refused("auth_busy");
            Err(reply::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                1,
                "too many password checks waiting",
            ))
        }
        Err(_) => {
            shared.stats.refused("unauthorized");
            Err(reply::unauthorized("bad username or password"))
        }
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, built once per refused request"
)]
fn anonymous(shared: &Shared, peer: SocketAddr) -> Result<Access, Reply> {
    let access = shared.access();
    if access.allow_anonymous && peer.ip().is_loopback() {
        return Ok(Access {
            user: None,
            acl: access.anonymous_acl.clone(),
        });
    }
    shared.stats.refused("unauthorized");
    Err(reply::unauthorized("credentials required"))
}

/// `Basic base64(user:password)`.
fn basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let username = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((username, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let (user, password) = basic(b"Basic YW5uOnMzYzpyZXQ=").unwrap();
        assert_eq!(
            (user.as_str(), password.as_slice()),
            ("ann", &b"s3c:ret"[..])
        );
        assert!(basic(b"Bearer abc").is_none());
        assert!(basic(b"Basic !!!").is_none());
        assert!(basic(b"Basic YW5u").is_none(), "no colon");
    }
}
