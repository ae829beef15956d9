use super::*;
use proptest::prelude::*;

fn connect_v4(client_id: &str) -> BytesMut {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0x10, body.len() as u8]);
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn connect_level_is_read_from_the_frame() {
    let frame = connect_v4("c1");
    assert_eq!(connect_level(&frame), Ok(4));
    assert!(connect_level(&[0x30, 0]).is_err());
    assert!(connect_level(&[0x10]).is_err());
}

#[test]
fn oversize_remaining_length_is_refused_from_the_header_alone() {
    // 256 MB remaining length: 0xFF 0xFF 0xFF 0x7F, nothing else sent.
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    let err = frame_length(&header, 1 << 20).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge { .. }));
    // A fifth length byte is malformed, not "need more".
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert!(matches!(
        frame_length(&bad, usize::MAX),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let frame = connect_v4("client");
    for cut in 0..frame.len() {
        assert_eq!(
            frame_length(&frame[..cut], 1 << 20),
            Ok(None),
            "cut at {cut}"
        );
    }
    assert_eq!(frame_length(&frame, 1 << 20), Ok(Some(frame.len())));
}

#[test]
fn publish_meta_reads_qos_and_packet_id() {
    // QoS 2, DUP, topic "a/b", pkid 0x1234, payload "x".
    let frame = [0x3C, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
    let meta = publish_meta(&frame).unwrap();
    assert_eq!(
        meta,
        PublishMeta {
            qos: 2,
            pkid: 0x1234,
            dup: true
        }
    );
    let mut buf = BytesMut::from(&frame[..]);
    let incoming = decode(&mut buf, Version::V4, 1 << 20).unwrap().unwrap();
    assert!(matches!(incoming.packet, Packet::Publish(..)));
    assert!(buf.is_empty());
}

#[test]
fn every_outgoing_packet_encodes_in_both_versions() {
    let outs = [
        Out::ConnAck {
            code: ConnectReturnCode::QuotaExceeded,
            session_present: false,
            properties: Some(Box::default()),
        },
        Out::PubAck(1, Reason::NotAuthorized),
        Out::PubRec(2, Reason::QuotaExceeded),
        Out::PubComp(3, Reason::PacketIdNotFound),
        Out::SubAck(4, vec![SubscribeReasonCode::NotAuthorized]),
        Out::UnsubAck(5, 2),
        Out::PingResp,
        Out::Disconnect(DisconnectReasonCode::PacketTooLarge),
        Out::Publish(Box::new(Delivery {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"p"),
            qos: 1,
            pkid: 9,
            retain: false,
            dup: false,
            properties: None,
        })),
    ];
    for version in [Version::V4, Version::V5] {
        for out in outs.iter().cloned() {
            let mut buf = BytesMut::new();
            encode(out.clone(), version, &mut buf).unwrap();
            if !(version == Version::V4 && matches!(out, Out::Disconnect(_))) {
                assert!(!buf.is_empty(), "{out:?} in {version:?}");
            }
        }
    }
}

#[test]
fn outgoing_publish_round_trips_through_the_codec() {
    let mut buf = BytesMut::new();
    let out = Out::Publish(Box::new(Delivery {
        topic: Bytes::from_static(b"devices/d1/t"),
        payload: Bytes::from_static(b"21.5"),
        qos: 1,
        pkid: 77,
        retain: false,
        dup: false,
        properties: None,
    }));
    encode(out, Version::V5, &mut buf).unwrap();
    let incoming = decode(&mut buf, Version::V5, 1 << 20).unwrap().unwrap();
    assert_eq!(incoming.meta.map(|m| (m.qos, m.pkid)), Some((1, 77)));
    let Packet::Publish(p, _) = incoming.packet else {
        panic!("not a publish")
    };
    assert_eq!(&p.topic[..], b"devices/d1/t");
    assert_eq!(&p.payload[..], b"21.5");
}

proptest! {
    /// Arbitrary bytes never panic the decoder in either version; they
    /// decode, wait for more, or fail.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for version in [Version::V4, Version::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..50 {
                match decode(&mut buf, version, 1 << 16) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = connect_level(&bytes);
        }
    }

    /// Valid frame headers with arbitrary bodies: exercises every packet
    /// type's parser, not just the framing.
    #[test]
    fn arbitrary_bodies_never_panic(kind in 1u8..16, flags in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut frame = vec![(kind << 4) | flags, body.len() as u8];
        frame.extend_from_slice(&body);
        for version in [Version::V4, Version::V5] {
            let mut buf = BytesMut::from(&frame[..]);
            let _ = decode(&mut buf, version, 1 << 16);
        }
    }
}

/// Every packet we send parses with an independent codec (rumqttc's, the
/// client side) and leaves no stray bytes: rumqttd 0.20 writes an MQTT 5
/// DISCONNECT without properties as `E0 01 rc 00`, one byte longer than its
/// remaining length, which this test caught.
#[test]
fn every_outgoing_packet_parses_with_rumqttcs_codec_without_leftovers() {
    let outs = [
        Out::ConnAck {
            code: ConnectReturnCode::Success,
            session_present: true,
            properties: Some(Box::new(ConnAckProperties {
                receive_max: Some(64),
                max_packet_size: Some(1 << 20),
                retain_available: Some(0),
                ..ConnAckProperties::default()
            })),
        },
        Out::ConnAck {
            code: ConnectReturnCode::BadUserNamePassword,
            session_present: false,
            properties: None,
        },
        Out::PubAck(1, Reason::Success),
        Out::PubAck(1, Reason::NotAuthorized),
        Out::PubRec(2, Reason::Success),
        Out::PubRec(2, Reason::QuotaExceeded),
        Out::PubComp(3, Reason::Success),
        Out::PubComp(3, Reason::PacketIdNotFound),
        Out::SubAck(4, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]),
        Out::SubAck(4, vec![SubscribeReasonCode::NotAuthorized]),
        Out::UnsubAck(5, 1),
        Out::PingResp,
        Out::Disconnect(DisconnectReasonCode::PacketTooLarge),
        Out::Disconnect(DisconnectReasonCode::NormalDisconnection),
        Out::Publish(Box::new(Delivery {
            topic: Bytes::from_static(b"devices/d/t"),
            payload: Bytes::from_static(b"payload"),
            qos: 1,
            pkid: 9,
            retain: false,
            dup: false,
            properties: None,
        })),
        Out::Publish(Box::new(Delivery {
            topic: Bytes::from_static(b"devices/d/t"),
            payload: Bytes::from_static(b""),
            qos: 0,
            pkid: 0,
            retain: false,
            dup: false,
            properties: None,
        })),
    ];
    for out in outs {
        let mut buf = BytesMut::new();
        encode(out.clone(), Version::V5, &mut buf).unwrap();
        let parsed = rumqttc::v5::mqttbytes::v5::Packet::read(&mut buf, None);
        assert!(parsed.is_ok(), "v5 {out:?}: {parsed:?}");
        assert!(buf.is_empty(), "v5 {out:?}: {} stray bytes", buf.len());
        let mut buf = BytesMut::new();
        encode(out.clone(), Version::V4, &mut buf).unwrap();
        if buf.is_empty() {
            continue; // no DISCONNECT from a 3.1.1 server
        }
        let parsed = rumqttc::mqttbytes::v4::read(&mut buf, 1 << 20);
        assert!(parsed.is_ok(), "v4 {out:?}: {parsed:?}");
        assert!(buf.is_empty(), "v4 {out:?}: {} stray bytes", buf.len());
    }
}

/// `mosquitto_sub -V mqttv5` ends with `E0 00`; others send only the reason
/// code (`E0 01 rc`): both are valid MQTT 5 and keep their reason.
#[test]
fn short_v5_disconnects_decode_with_their_reason() {
    use rumqttd::protocol::DisconnectReasonCode as D;
    for (frame, want) in [
        (&[0xE0, 0x00][..], D::NormalDisconnection),
        (&[0xE0, 0x01, 0x00][..], D::NormalDisconnection),
        (&[0xE0, 0x01, 0x04][..], D::DisconnectWithWillMessage),
        (&[0xE0, 0x02, 0x04, 0x00][..], D::DisconnectWithWillMessage),
    ] {
        let mut buf = BytesMut::from(frame);
        let incoming = decode(&mut buf, Version::V5, 1 << 20).unwrap().unwrap();
        match incoming.packet {
            Packet::Disconnect(d, _) => assert_eq!(d.reason_code, want, "{frame:02x?}"),
            other => panic!("{frame:02x?} decoded as {other:?}"),
        }
        assert!(buf.is_empty());
    }
}

#[test]
fn deliveries_keep_retain_qos2_dup_and_v5_properties() {
    let mut buf = BytesMut::new();
    let out = Out::Publish(Box::new(Delivery {
        topic: Bytes::from_static(b"a/b"),
        payload: Bytes::from_static(b"on"),
        qos: 2,
        pkid: 5,
        retain: true,
        dup: true,
        properties: Some(PublishProperties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"42")),
            ..PublishProperties::default()
        }),
    }));
    encode(out, Version::V5, &mut buf).unwrap();
    assert_eq!(buf[0], 0x30 | 0b1000 | (2 << 1) | 1);
    let meta = publish_meta(&buf).unwrap();
    assert_eq!((meta.qos, meta.pkid, meta.dup), (2, 5, true));
    match decode(&mut buf, Version::V5, 1 << 20)
        .unwrap()
        .unwrap()
        .packet
    {
        Packet::Publish(p, Some(props)) => {
            assert!(p.retain);
            assert_eq!(props.content_type.as_deref(), Some("text/plain"));
            assert_eq!(props.correlation_data.as_deref(), Some(&b"42"[..]));
        }
        other => panic!("{other:?}"),
    }
}
