//! MQTT packets written byte by byte, for what real clients never send
//! (alias 0, a receive maximum overrun, a short DISCONNECT, an abrupt close
//! after a will). Included by the MQTT tests with
//! `#[path = "harness/mqtt_raw.rs"] mod raw;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// MQTT's variable byte integer.
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A frame: header byte, remaining length, body.
pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A will for [`connect`]: topic, payload, QoS, retain, MQTT 5 will properties.
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<u8>,
}

/// A CONNECT frame at protocol `level` (4 or 5); `props` are MQTT 5
/// properties (ignored for 4).
pub fn connect(
    level: u8,
    client_id: &str,
    clean: bool,
    props: &[u8],
    will: Option<&Will>,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(level);
    let mut flags = u8::from(clean) << 1;
    if let Some(w) = will {
        flags |= 0b100 | (w.qos << 3) | (u8::from(w.retain) << 5);
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        varint(props.len(), &mut body);
        body.extend_from_slice(props);
    }
    string(client_id.as_bytes(), &mut body);
    if let Some(w) = will {
        if level == 5 {
            varint(w.props.len(), &mut body);
            body.extend_from_slice(&w.props);
        }
        string(w.topic.as_bytes(), &mut body);
        string(w.payload, &mut body);
    }
    frame(0x10, &body)
}

/// An MQTT 5 PUBLISH with raw properties.
pub fn publish_v5(topic: &str, qos: u8, pkid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    varint(props.len(), &mut body);
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1), &body)
}

/// An MQTT 3.1.1 PUBLISH.
pub fn publish_v4(topic: &str, qos: u8, pkid: u16, dup: bool, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | (u8::from(dup) << 3), &body)
}

/// A connected socket with a read timeout.
pub fn dial(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
}

/// The next frame (header byte, body), or `None` once the server closed.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 1];
    s.read_exact(&mut header).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

/// Frames until the server closes (or stops answering), after sending.
pub fn frames_until_closed(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    std::iter::from_fn(|| read_frame(s)).collect()
}

/// The reason code of the first DISCONNECT among `frames`.
pub fn disconnect_reason(frames: &[(u8, Vec<u8>)]) -> Option<u8> {
    frames
        .iter()
        .find(|(h, _)| *h == 0xE0)
        .map(|(_, body)| body.first().copied().unwrap_or(0))
}

/// Connects and returns the socket and the CONNACK body.
pub fn connected(addr: SocketAddr, connect_frame: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = dial(addr);
    send(&mut s, connect_frame);
    let (header, body) = read_frame(&mut s).expect("CONNACK");
    assert_eq!(header, 0x20, "CONNACK expected");
    (s, body)
}

/// Property `id` of an MQTT 5 CONNACK body as a u32 (for the 2- and 4-byte
/// integer properties), if present.
pub fn connack_u32(body: &[u8], id: u8) -> Option<u32> {
    let mut at = 2;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = body[at];
        at += 1;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let props = &body[at..at + len];
    let mut i = 0;
    while i < props.len() {
        let pid = props[i];
        i += 1;
        let width = match pid {
            0x11 | 0x27 => 4,
            0x13 | 0x21 | 0x22 => 2,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 | 0x1A | 0x1C | 0x1F => {
                let n = usize::from(u16::from_be_bytes([props[i], props[i + 1]]));
                i += 2 + n;
                continue;
            }
            0x26 => {
                for _ in 0..2 {
                    let n = usize::from(u16::from_be_bytes([props[i], props[i + 1]]));
                    i += 2 + n;
                }
                continue;
            }
            _ => panic!("unexpected CONNACK property {pid:#x}"),
        };
        let value = props[i..i + width]
            .iter()
            .fold(0u32, |v, b| (v << 8) | u32::from(*b));
        if pid == id {
            return Some(value);
        }
        i += width;
    }
    None
}
