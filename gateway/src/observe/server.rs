//! The observability endpoint, serving what the [`Registry`] holds: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (log open and listeners up)
//! and `/status` (JSON, read by `tidewell status`).
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size and time. It binds to loopback by
//! default; it exposes counters, never data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{HttpConfig, Registry};
use crate::net::Acceptor;

const MAX_REQUEST_BYTES: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once (a scraper and an operator need a few); each
/// holds a descriptor and its buffers for at most `REQUEST_TIMEOUT`.
const MAX_CONNECTIONS: usize = 32;

/// The running endpoint; dropping it stops it.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(config: &HttpConfig, registry: Arc<Registry>) -> std::io::Result<HttpServer> {
    let mut listener = Acceptor::new(TcpListener::bind(config.listen).await?, "http");
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            // Wait for a free slot before accepting: excess clients wait in
            // the kernel's backlog, costing us nothing.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (socket, _) = listener.accept().await;
            let registry = registry.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, serve(socket, &registry)).await;
                drop(slot);
            });
        }
    });
    Ok(HttpServer { local_addr, task })
}

async fn serve(mut socket: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
            return respond(&mut socket, 400, "text/plain", "bad request\n").await;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != "GET" {
        return respond(&mut socket, 405, "text/plain", "only GET\n").await;
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => {
            let body = registry.render_metrics();
            respond(
                &mut socket,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => respond(&mut socket, 200, "text/plain", "ok\n").await,
        "/readyz" if registry.is_ready() => {
            respond(&mut socket, 200, "text/plain", "ready\n").await
        }
        "/readyz" => respond(&mut socket, 503, "text/plain", "not ready\n").await,
        "/status" => {
            let body = serde_json::to_string_pretty(&registry.render_status()).unwrap_or_default();
            respond(&mut socket, 200, "application/json", &body).await
        }
        _ => respond(&mut socket, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    socket: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// A blocking GET for `tidewell status` (loopback, no TLS): returns the body
/// of a 200 answer.
pub fn get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!(
            "{addr}{path} answered {status}"
        )));
    }
    Ok(body.to_string())
}
