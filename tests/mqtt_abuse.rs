//! Hostile and broken clients are cut off with a log line while everyone
//! else is still served: garbage bytes, a truncated CONNECT, a 256 MB
//! remaining length, packet types only servers send, silent (half-open)
//! connections, and a thousand idle sockets.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::Gateway;

fn config(dir: &std::path::Path) -> String {
    format!(
        "{}\n[mqtt]\nlisten = \"127.0.0.1:0\"\nconnect_timeout_ms = 1000\nkeep_alive_max_s = 2\nmax_payload_bytes = 65536\n",
        harness::data_dir_line(dir)
    )
}

/// A CONNECT frame: protocol level 4 (3.1.1) or 5, clean session.
fn connect_frame(level: u8, client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02];
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes; returns what it sent. Panics if it stays
/// open past the socket's read timeout.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
    }
}

/// A client that behaves: QoS 1 publish, acknowledged.
fn well_behaved_publish(gateway: &Gateway, id: &str) {
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(4, id, 30)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let topic = format!("devices/{id}/t");
    let mut publish = vec![0x32, (2 + topic.len() + 2 + 2) as u8];
    publish.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    publish.extend_from_slice(topic.as_bytes());
    publish.extend_from_slice(&[0, 7, b'o', b'k']);
    s.write_all(&publish).unwrap();
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 2, 0, 7], "PUBACK for packet id 7");
    s.write_all(&[0xE0, 0]).unwrap();
}

#[test]
fn broken_and_hostile_connections_are_closed_and_others_still_served() {
    let dir = harness::temp_dir();
    let mut gateway = Gateway::start(dir.path(), &config(dir.path()));

    // Garbage instead of CONNECT.
    let mut s = connect(gateway.mqtt());
    s.write_all(&[0xFF; 64]).unwrap();
    read_until_closed(&mut s);

    // A truncated CONNECT, then nothing: closed by the connect timeout.
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(4, "trunc", 30)[..9]).unwrap();
    let started = Instant::now();
    read_until_closed(&mut s);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A 256 MB remaining length as the first packet: refused from the header.
    let mut s = connect(gateway.mqtt());
    s.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
    read_until_closed(&mut s);

    // The same after a good MQTT 5 CONNECT: DISCONNECT 0x95, then closed.
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(5, "huge", 30)).unwrap();
    s.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
    let got = read_until_closed(&mut s);
    assert_eq!(got[0], 0x20, "CONNACK first");
    let disconnect = &got[2 + usize::from(got[1])..];
    assert_eq!(disconnect[0], 0xE0, "then DISCONNECT: {got:?}");
    assert_eq!(disconnect[2], 0x95, "reason: packet too large");

    // A CONNACK sent by a client (rumqttd's own v5 reader panics on this).
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(5, "odd", 30)).unwrap();
    s.write_all(&[0x20, 3, 0, 0, 0]).unwrap();
    read_until_closed(&mut s);

    // An unknown protocol level: CONNACK 0x01, closed.
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(3, "old", 30)).unwrap();
    assert_eq!(read_until_closed(&mut s), [0x20, 2, 0, 1]);

    well_behaved_publish(&gateway, "good");
    assert!(gateway.is_running());
    assert!(harness::wait_until(Duration::from_secs(5), || {
        gateway.stderr_contains("exceeds the maximum")
            && gateway.stderr_contains("malformed packet")
            && gateway.stderr_contains("no CONNECT within")
    }));
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    // Keep-alive 0 ("none") is capped at keep_alive_max_s = 2: a half-open
    // connection cannot stay forever.
    let mut s = connect(gateway.mqtt());
    s.write_all(&connect_frame(4, "quiet", 0)).unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s);
    assert_eq!(&got[..4], [0x20, 2, 0, 0]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    assert!(harness::wait_until(Duration::from_secs(5), || gateway
        .stderr_contains("1.5 x keep-alive")));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_idle_connections_do_not_stop_a_well_behaved_client() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect(gateway.mqtt())).collect();
    well_behaved_publish(&gateway, "busy-day");
    let rss = rss_kib(gateway.pid());
    eprintln!("gateway RSS with 1000 idle connections: {rss} KiB");
    assert!(rss < 64 * 1024, "RSS {rss} KiB");
    // Every idle socket is closed by the connect timeout.
    for mut s in idle {
        read_until_closed(&mut s);
    }
    well_behaved_publish(&gateway, "after");
}
