//! Framing around rumqttd's MQTT 3.1.1 (v4) and 5 codecs.
//!
//! rumqttd's `protocol` module decodes and encodes packets; this file adds
//! what a server facing untrusted bytes needs around it:
//!
//! - Frames are checked before they are parsed: the fixed header and its
//!   remaining length are read first and a frame over `max_frame_bytes` is
//!   refused before any of it is buffered (a 256 MB remaining length costs
//!   us five bytes). Only a complete frame is handed to the codec, so an
//!   "insufficient bytes" from inside it means a malformed packet.
//! - The protocol level is read from the CONNECT bytes to pick the codec.
//! - rumqttd keeps a PUBLISH's QoS, packet id and DUP flag crate-private, so
//!   they are read here from the raw frame (`PublishMeta`).
//! - rumqttd's v5 reader panics (`unreachable!`) on a CONNACK or UNSUBACK
//!   with a body (found by the property test below); only the packet types
//!   a client may send reach it.
//! - rumqttd's v5 DISCONNECT writer miscounts its length without
//!   properties (a stray byte follows the packet); ours carry a reason string.
//! - rumqttd's writers panic (`unreachable!`) on a few combinations (v4
//!   packets with properties, v4 CONNACK codes that only exist in v5); all
//!   outgoing packets go through [`Out`], which only builds valid ones.

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Packet, PingResp, Protocol, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};

use super::error::CodecError;

/// The MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// Packet types a client sends: CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL,
/// PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT.
const CLIENT_PACKET_TYPES: [u8; 10] = [1, 3, 4, 5, 6, 7, 8, 10, 12, 14];

/// What rumqttd's `Publish` keeps private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishMeta {
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
}

/// One decoded packet and, for a PUBLISH, its QoS and packet id.
#[derive(Debug)]
pub struct Incoming {
    pub packet: Packet,
    pub meta: Option<PublishMeta>,
}

/// The length of the next frame: `None` while more bytes are needed.
/// Refuses an oversize frame as soon as its length is known.
pub fn frame_length(buf: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, CodecError> {
    let Some(rest) = buf.get(1..) else {
        return Ok(None);
    };
    let (len_len, len) = match v4::length(rest.iter()) {
        Ok(found) => found,
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(CodecError::Malformed(e.to_string())),
    };
    let frame = 1 + len_len + len;
    if frame > max_frame_bytes {
        return Err(CodecError::TooLarge {
            bytes: frame,
            max: max_frame_bytes,
        });
    }
    Ok((buf.len() >= frame).then_some(frame))
}

/// Decodes the next complete frame of `buf`, if there is one.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_frame_bytes: usize,
) -> Result<Option<Incoming>, CodecError> {
    let Some(len) = frame_length(buf, max_frame_bytes)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(len);
    // rumqttd's v5 reader panics (`unreachable!`) on a CONNACK or UNSUBACK
    // with a body; a server never receives those packet types anyway.
    let packet_type = frame.first().map_or(0, |b| b >> 4);
    if !CLIENT_PACKET_TYPES.contains(&packet_type) {
        return Err(CodecError::Malformed(format!(
            "packet type {packet_type} is not sent by clients"
        )));
    }
    let meta = publish_meta(&frame);
    if version == Version::V5 && packet_type == 14 {
        frame = short_disconnect(frame);
    }
    let packet = match version {
        Version::V4 => V4.read_mut(&mut frame, max_frame_bytes),
        Version::V5 => V5.read_mut(&mut frame, max_frame_bytes),
    }
    .map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(Some(Incoming { packet, meta }))
}

/// An MQTT 5 DISCONNECT may stop after its reason code (`E0 01 rc`, as
/// `mosquitto_sub -V mqttv5` sends); rumqttd 0.20 then fails reading the
/// absent property length, so the frame gets an empty one (`E0 02 rc 00`).
fn short_disconnect(frame: BytesMut) -> BytesMut {
    match frame[..] {
        [0xE0, 0x01, reason] => BytesMut::from(&[0xE0, 0x02, reason, 0x00][..]),
        _ => frame,
    }
}

/// Reads the protocol level from a complete CONNECT frame: 4 (3.1.1), 5, or
/// another value that the caller refuses.
pub fn connect_level(frame: &[u8]) -> Result<u8, CodecError> {
    let malformed = || CodecError::Malformed("not a CONNECT packet".into());
    if frame.first() != Some(&0x10) {
        return Err(CodecError::Malformed(
            "the first packet must be CONNECT".into(),
        ));
    }
    let rest = frame.get(1..).ok_or_else(malformed)?;
    let (len_len, _) = v4::length(rest.iter()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let body = frame.get(1 + len_len..).ok_or_else(malformed)?;
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(malformed)?,
        *body.get(1).ok_or_else(malformed)?,
    ]));
    body.get(2 + name_len).copied().ok_or_else(malformed)
}

/// QoS, packet id and DUP of a PUBLISH frame (`None` for other packets or
/// frames too short to hold them; the codec then rejects the frame).
fn publish_meta(frame: &[u8]) -> Option<PublishMeta> {
    let byte1 = *frame.first()?;
    if byte1 >> 4 != 3 {
        return None;
    }
    let qos = (byte1 >> 1) & 0b11;
    let (len_len, _) = v4::length(frame.get(1..)?.iter()).ok()?;
    let body = frame.get(1 + len_len..)?;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let pkid = if qos > 0 {
        let at = 2 + topic_len;
        u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])
    } else {
        0
    };
    Some(PublishMeta {
        qos,
        pkid,
        dup: byte1 & 0b1000 != 0,
    })
}

/// Reason codes we send, with their MQTT 5 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Success,
    UnspecifiedError,
    NotAuthorized,
    PacketTooLarge,
    QuotaExceeded,
    TopicNameInvalid,
    PacketIdNotFound,
}

/// Every packet the server sends.
#[derive(Debug, Clone)]
pub enum Out {
    ConnAck {
        code: ConnectReturnCode,
        /// Only with `Success`: the server resumed a stored session.
        session_present: bool,
        /// Boxed: the properties are large and every connection's queue of
        /// `Out`s is sized by the largest variant.
        properties: Option<Box<ConnAckProperties>>,
    },
    PubAck(u16, Reason),
    PubRec(u16, Reason),
    PubComp(u16, Reason),
    SubAck(u16, Vec<SubscribeReasonCode>),
    UnsubAck(u16, usize),
    PingResp,
    Disconnect(DisconnectReasonCode),
    /// Boxed: a delivery with its properties is the largest packet.
    Publish(Box<Delivery>),
    /// Our answer to a subscriber's PUBREC of a QoS 2 delivery.
    PubRel(u16),
}

/// A PUBLISH we send to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    /// Set on a re-sent delivery (a returning session).
    pub dup: bool,
    /// MQTT 5 only; dropped for 3.1.1.
    pub properties: Option<PublishProperties>,
}

/// Appends the encoding of `out` to `buf`.
pub fn encode(out: Out, version: Version, buf: &mut BytesMut) -> Result<(), CodecError> {
    let Some(packet) = to_packet(out, version) else {
        return Ok(());
    };
    let result = match version {
        Version::V4 => V4.write(packet, buf),
        Version::V5 => V5.write(packet, buf),
    };
    result
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// The rumqttd packet for `out`, or `None` when the version has no such
/// packet (DISCONNECT from a 3.1.1 server: we just close).
fn to_packet(out: Out, version: Version) -> Option<Packet> {
    let v5 = version == Version::V5;
    Some(match out {
        Out::ConnAck {
            code,
            session_present,
            properties,
        } => {
            let code = if v5 { code } else { v4_connect_code(code) };
            let properties = if v5 { properties.map(|p| *p) } else { None };
            Packet::ConnAck(
                ConnAck {
                    session_present: session_present && code == ConnectReturnCode::Success,
                    code,
                },
                properties,
            )
        }
        Out::PubAck(pkid, reason) => Packet::PubAck(
            PubAck {
                pkid,
                reason: puback_reason(reason),
            },
            None,
        ),
        Out::PubRec(pkid, reason) => Packet::PubRec(
            PubRec {
                pkid,
                reason: pubrec_reason(reason),
            },
            None,
        ),
        Out::PubComp(pkid, reason) => Packet::PubComp(
            PubComp {
                pkid,
                reason: match reason {
                    Reason::PacketIdNotFound if v5 => PubCompReason::PacketIdentifierNotFound,
                    _ => PubCompReason::Success,
                },
            },
            None,
        ),
        Out::SubAck(pkid, codes) => Packet::SubAck(
            SubAck {
                pkid,
                return_codes: if v5 { codes } else { v4_suback(codes) },
            },
            None,
        ),
        Out::UnsubAck(pkid, n) => Packet::UnsubAck(
            UnsubAck {
                pkid,
                reasons: vec![UnsubAckReason::Success; if v5 { n } else { 0 }],
            },
            None,
        ),
        Out::PingResp => Packet::PingResp(PingResp),
        Out::Disconnect(reason_code) if v5 => Packet::Disconnect(
            Disconnect { reason_code },
            // rumqttd 0.20 miscounts a DISCONNECT without properties (it
            // writes `E0 01 rc 00`), and drops the reason code when the
            // properties are empty; a reason string avoids both.
            Some(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(format!("{reason_code:?}")),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        ),
        Out::Disconnect(_) => return None,
        Out::Publish(d) => {
            let d = *d;
            let properties = if v5 { d.properties.clone() } else { None };
            Packet::Publish(publish(&d), properties)
        }
        Out::PubRel(pkid) => Packet::PubRel(
            PubRel {
                pkid,
                reason: PubRelReason::Success,
            },
            None,
        ),
    })
}

/// Builds an outgoing PUBLISH. rumqttd's `Publish` has private QoS and packet
/// id fields and no constructor for QoS > 0 except its own serialization
/// format, which this uses: `header, pkid (u16), topic length (u16), topic,
/// payload`.
fn publish(d: &Delivery) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + d.topic.len() + d.payload.len());
    let header = 0x30 | (d.qos.min(2) << 1) | (u8::from(d.dup) << 3) | u8::from(d.retain);
    raw.extend_from_slice(&[header]);
    raw.extend_from_slice(&d.pkid.to_be_bytes());
    // Topics we deliver came from a decoded PUBLISH: at most u16::MAX bytes.
    raw.extend_from_slice(&(d.topic.len() as u16).to_be_bytes());
    raw.extend_from_slice(&d.topic);
    raw.extend_from_slice(&d.payload);
    Publish::deserialize(raw.freeze())
}

fn puback_reason(reason: Reason) -> PubAckReason {
    match reason {
        Reason::Success => PubAckReason::Success,
        Reason::NotAuthorized => PubAckReason::NotAuthorized,
        Reason::QuotaExceeded => PubAckReason::QuotaExceeded,
        Reason::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        // PUBACK has no "packet too large": MQTT 5 sends 0x95 in a
        // DISCONNECT, see `conn.rs`; the closest PUBACK code is used otherwise.
        Reason::PacketTooLarge => PubAckReason::ImplementationSpecificError,
        Reason::UnspecifiedError | Reason::PacketIdNotFound => PubAckReason::UnspecifiedError,
    }
}

fn pubrec_reason(reason: Reason) -> PubRecReason {
    match reason {
        Reason::Success => PubRecReason::Success,
        Reason::NotAuthorized => PubRecReason::NotAuthorized,
        Reason::QuotaExceeded => PubRecReason::QuotaExceeded,
        Reason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
        Reason::PacketTooLarge => PubRecReason::ImplementationSpecificError,
        Reason::UnspecifiedError | Reason::PacketIdNotFound => PubRecReason::UnspecifiedError,
    }
}

/// The nearest of the six codes MQTT 3.1.1 has (rumqttd panics on others).
fn v4_connect_code(code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => C::Success,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => C::RefusedProtocolVersion,
        C::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
        C::BadUserNamePassword => C::BadUserNamePassword,
        C::NotAuthorized => C::NotAuthorized,
        _ => C::ServiceUnavailable,
    }
}

/// MQTT 3.1.1 SUBACK has granted QoS or 0x80 failure only.
fn v4_suback(codes: Vec<SubscribeReasonCode>) -> Vec<SubscribeReasonCode> {
    codes
        .into_iter()
        .map(|c| match c {
            SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(q),
            _ => SubscribeReasonCode::Failure,
        })
        .collect()
}

/// QoS as rumqttd spells it.
pub fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

/// The fuzz targets' entry: bytes from a client, cut into chunks the way a
/// socket delivers them, through the same steps as a connection (frame
/// length, CONNECT level, then packet after packet) until an error ends it.
/// Never panics, whatever the bytes.
pub fn fuzz_stream(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let max_frame = 16 + usize::from(knobs & 0x0f) * 256;
    let chunk = 1 + usize::from(knobs >> 4);
    let mut buf = BytesMut::new();
    let mut version = None;
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let v = match version {
                Some(v) => v,
                None => match frame_length(&buf, max_frame) {
                    Ok(Some(len)) => match connect_level(&buf[..len]) {
                        Ok(4) => *version.insert(Version::V4),
                        Ok(5) => *version.insert(Version::V5),
                        _ => return,
                    },
                    Ok(None) => break,
                    Err(_) => return,
                },
            };
            match decode(&mut buf, v, max_frame) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
