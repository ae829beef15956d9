use super::*;

/// A client frame: masked, as browsers send them.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::new();
    encode_frame(opcode, payload, &mut out);
    if !fin {
        out[0] &= 0x7f;
    }
    out[1] |= 0x80;
    let at = out.len() - payload.len();
    let mut body = out.split_off(at);
    unmask(&mut body, mask, 0);
    out.extend_from_slice(&mask);
    out.extend_from_slice(&body);
    out
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

#[test]
fn accept_key_is_the_rfc_example() {
    // RFC 6455 1.3.
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(
        check_request(UPGRADE.as_bytes()).unwrap(),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn upgrade_without_the_mqtt_subprotocol_is_refused() {
    for (from, to) in [
        ("Sec-WebSocket-Protocol: mqtt\r\n", ""),
        (
            "Sec-WebSocket-Protocol: mqtt",
            "Sec-WebSocket-Protocol: chat, mqttv3.1",
        ),
    ] {
        let request = UPGRADE.replace(from, to);
        let err = check_request(request.as_bytes()).unwrap_err();
        assert!(matches!(err, UpgradeError::Subprotocol(_)), "{err}");
        assert!(err.response().unwrap().starts_with("HTTP/1.1 400 "));
    }
    let listed = UPGRADE.replace("Protocol: mqtt", "Protocol: chat, mqtt");
    assert!(check_request(listed.as_bytes()).is_ok());
}

#[test]
fn upgrade_checks_version_key_and_method() {
    let cases = [
        ("Version: 13", "Version: 8", "426 "),
        ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", "400 "),
        ("GET /mqtt", "POST /mqtt", "400 "),
        ("Upgrade: websocket\r\n", "", "400 "),
    ];
    for (from, to, status) in cases {
        let err = check_request(UPGRADE.replace(from, to).as_bytes()).unwrap_err();
        assert!(
            err.response().unwrap().contains(status),
            "{from} -> {to}: {err}"
        );
    }
}

#[tokio::test]
async fn upgrade_answers_101_and_keeps_early_frames() {
    let early = client_frame(true, OP_BINARY, b"\x10\x00");
    let mut input = UPGRADE.as_bytes().to_vec();
    input.extend_from_slice(&early);
    let mut output = Vec::new();
    let leftover = upgrade(&mut input.as_slice(), &mut output).await.unwrap();
    assert_eq!(leftover, early);
    let response = String::from_utf8(output).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
}

#[tokio::test]
async fn an_oversize_request_is_refused() {
    let huge = format!(
        "GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST_BYTES)
    );
    let err = upgrade(&mut huge.as_bytes(), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, UpgradeError::TooLarge), "{err}");
}

#[tokio::test]
async fn a_frame_longer_than_the_limit_is_refused_from_its_header() {
    // Only the header: reading any payload would fail with EOF instead.
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let err = read_header(&mut header.as_slice(), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { len, .. } if len == 1 << 30),
        "{err}"
    );
    assert_eq!(err.close_code(), Some(1009));
}

#[tokio::test]
async fn unmasked_and_reserved_bit_frames_are_protocol_errors() {
    let unmasked = [0x82, 0x01, 0x00];
    let err = read_header(&mut unmasked.as_slice(), 100)
        .await
        .unwrap_err();
    assert_eq!(err.close_code(), Some(1002));
    let mut rsv = client_frame(true, OP_BINARY, b"x");
    rsv[0] |= 0x40;
    let err = read_header(&mut rsv.as_slice(), 100).await.unwrap_err();
    assert_eq!(err.close_code(), Some(1002));
}

#[test]
fn server_frames_use_the_shortest_length_form() {
    let mut out = Vec::new();
    for (len, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
        encode_frame(OP_BINARY, &vec![7; len], &mut out);
        assert_eq!(out.len(), header + len, "payload of {len}");
        assert_eq!(out[0], 0x82);
    }
}

/// Runs the pump between `client` bytes and an MQTT-side pipe; returns
/// what the MQTT side read and what the client got back.
async fn pump_once(client: Vec<u8>, max: usize) -> (Vec<u8>, Vec<u8>, Result<(), FrameError>) {
    let (mqtt_end, pump_end) = tokio::io::duplex(PIPE_BYTES);
    let (socket_end, mut client_end) = tokio::io::duplex(PIPE_BYTES);
    let (rd, wr) = tokio::io::split(socket_end);
    let task = tokio::spawn(pump(rd, wr, pump_end, max));
    client_end.write_all(&client).await.unwrap();
    let (mut mqtt_rd, _mqtt_wr) = tokio::io::split(mqtt_end);
    let mut to_mqtt = Vec::new();
    mqtt_rd.read_to_end(&mut to_mqtt).await.unwrap();
    drop(_mqtt_wr);
    drop(mqtt_rd);
    let result = task.await.unwrap();
    let mut to_client = Vec::new();
    client_end.read_to_end(&mut to_client).await.unwrap();
    (to_mqtt, to_client, result)
}

#[tokio::test]
async fn fragments_reach_mqtt_as_one_stream_and_ping_gets_pong() {
    let mut client = client_frame(false, OP_BINARY, b"\x30\x05\x00");
    client.extend(client_frame(true, OP_PING, b"hi"));
    client.extend(client_frame(true, OP_CONTINUATION, b"\x01t"));
    client.extend(client_frame(true, OP_BINARY, b"ab"));
    client.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
    let (to_mqtt, to_client, result) = pump_once(client, 1 << 10).await;
    result.unwrap();
    assert_eq!(to_mqtt, b"\x30\x05\x00\x01tab");
    let mut pong = Vec::new();
    encode_frame(OP_PONG, b"hi", &mut pong);
    let mut close = Vec::new();
    encode_frame(OP_CLOSE, &1000u16.to_be_bytes(), &mut close);
    assert_eq!(to_client, [pong, close].concat());
}

#[tokio::test]
async fn a_message_over_the_limit_in_fragments_closes_with_1009() {
    let mut client = client_frame(false, OP_BINARY, &[0; 600]);
    client.extend(client_frame(true, OP_CONTINUATION, &[0; 600]));
    let (to_mqtt, to_client, result) = pump_once(client, 1000).await;
    assert!(
        matches!(result, Err(FrameError::TooLarge { len: 1200, .. })),
        "{result:?}"
    );
    assert_eq!(
        to_mqtt.len(),
        600,
        "the first fragment passed, the second was refused from its header"
    );
    assert_eq!(&to_client[..4], [0x88, 0x02, 0x03, 0xf1]);
}

#[tokio::test]
async fn a_text_frame_closes_with_1003() {
    let (to_mqtt, to_client, result) = pump_once(client_frame(true, OP_TEXT, b"{}"), 100).await;
    assert!(matches!(result, Err(FrameError::Text)));
    assert!(to_mqtt.is_empty());
    assert_eq!(to_client, [0x88, 0x02, 0x03, 0xeb]);
}
