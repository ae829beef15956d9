//! A small HTTP/1.1 client of this listener (hyper's client connection):
//! `tidewell log dump --follow` streams a partition through it, and `bench
//! http` posts through it. Plain HTTP only.

use std::io::Write;
use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the gateway answered {code}: {body}")]
    Status { code: u16, body: String },
    #[error("writing the records: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0:?} is not an http://HOST:PORT address")]
    Url(String),
}

/// `http://HOST:PORT` (a trailing slash allowed) as an address.
pub fn parse_url(url: &str) -> Result<SocketAddr, ClientError> {
    let bad = || ClientError::Url(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(bad)
}

/// One keep-alive connection; its driver runs on the current runtime.
pub async fn connect(addr: SocketAddr) -> Result<Sender, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if let Some(auth) = auth {
        builder = builder.header(AUTHORIZATION, auth);
    }
    Ok(builder.body(Full::new(body))?)
}

/// Streams `GET path` (a `follow=true` read) to `out` as it arrives,
/// flushing after every chunk, until the gateway ends the stream.
pub async fn follow(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut sender = connect(addr).await?;
    let response = sender
        .send_request(request(Method::GET, addr, path, auth, Bytes::new())?)
        .await?;
    let code = response.status().as_u16();
    let mut body = response.into_body();
    if code != 200 {
        let bytes = body.collect().await?.to_bytes();
        return Err(ClientError::Status {
            code,
            body: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            out.write_all(data)?;
            out.flush()?;
        }
    }
    Ok(())
}
