//! Persistent sessions as device SDKs and local apps use them, against the
//! real binary: an AWS-IoT-SDK-like device that reconnects with
//! `clean_session = 0` and checks `session_present`, offline messages
//! delivered from the log after the gateway was SIGKILLed, QoS 2 offline
//! delivery exactly once, a clean session discarding the old one, MQTT 5
//! session expiry, `mosquitto_sub -c` (a persistent QoS 1 subscriber), and a
//! shared subscription split between two instances of an app.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/mqtt_raw.rs"]
mod raw;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::Gateway;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

fn config(dir: &std::path::Path) -> String {
    format!(
        "{}[topics.ingest]\npartitions = 2\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        harness::data_dir_line(dir)
    )
}

/// An MQTT 3.1.1 client with `clean`; returns it with CONNACK's
/// `session_present`.
fn connect(addr: SocketAddr, id: &str, clean: bool) -> (Client, Connection, bool) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_session(clean);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(20);
    let (client, mut connection) = Client::new(options, 64);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connection.recv_timeout(remaining(deadline)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                return (client, connection, ack.session_present);
            }
            Ok(Ok(_)) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Subscribes and waits for the SUBACK.
fn subscribe(client: &Client, connection: &mut Connection, filter: &str, qos: QoS) {
    client.subscribe(filter, qos).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connection.recv_timeout(remaining(deadline)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
}

/// Payloads received until `n` arrived (rumqttc acks each) and every QoS 2
/// exchange is complete (PUBCOMP sent), within 30 s.
fn receive(connection: &mut Connection, n: usize) -> Vec<(String, QoS, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut open_qos2 = 0usize;
    while got.len() < n || open_qos2 > 0 {
        match connection.recv_timeout(remaining(deadline)) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                open_qos2 += usize::from(p.qos == QoS::ExactlyOnce);
                got.push((
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.qos,
                    p.dup,
                ));
            }
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::PubComp(_)))) => open_qos2 -= 1,
            Ok(Ok(_)) => {}
            other => panic!("after {} of {n} messages: {other:?}", got.len()),
        }
    }
    got
}

/// The payloads of the next `n` messages (see [`receive`]).
fn payloads(connection: &mut Connection, n: usize) -> Vec<String> {
    receive(connection, n).into_iter().map(|m| m.0).collect()
}

/// Sends DISCONNECT and runs the event loop until the connection is closed.
fn disconnect(client: &Client, connection: &mut Connection) {
    client.disconnect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match connection.recv_timeout(remaining(deadline)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// `n` QoS 1 (or 2) publishes of `prefix-<i>` with mosquitto_pub, one connection.
fn publish(port: u16, topic: &str, prefix: &str, range: std::ops::Range<usize>, qos: u8) {
    harness::mosquitto::require_clients();
    let lines: String = range.map(|i| format!("{prefix}-{i}\n")).collect();
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            &qos.to_string(),
        ])
        .args(["-t", topic, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn an_aws_sdk_like_device_gets_what_it_missed_across_a_sigkill_of_the_gateway() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (client, mut conn, present) = connect(gateway.mqtt(), "thing-1", false);
    assert!(!present, "a new session is not present");
    subscribe(&client, &mut conn, "cmd/thing-1/#", QoS::AtLeastOnce);
    disconnect(&client, &mut conn);

    publish(gateway.port(), "cmd/thing-1/job", "a", 0..300, 1);
    let (client, mut conn, present) = connect(gateway.mqtt(), "thing-1", false);
    assert!(present, "the session was kept");
    let got: Vec<String> = payloads(&mut conn, 300);
    assert_eq!(
        got,
        names("a", 0..300),
        "every missed message, in publish order"
    );
    disconnect(&client, &mut conn);

    // Published while the device is away; then the gateway dies.
    publish(gateway.port(), "cmd/thing-1/job", "b", 0..200, 1);
    let gateway = gateway.restart();
    let (client, mut conn, present) = connect(gateway.mqtt(), "thing-1", false);
    assert!(present, "the session survived SIGKILL");
    let got: Vec<String> = payloads(&mut conn, 200);
    assert_eq!(got, names("b", 0..200), "what it missed, after the restart");
    // A live message on the resumed session, then nothing more is owed.
    publish(gateway.port(), "cmd/thing-1/job", "c", 0..1, 1);
    let got: Vec<String> = payloads(&mut conn, 1);
    assert_eq!(got, names("c", 0..1));
    disconnect(&client, &mut conn);
    let metrics = gateway.get("/metrics").unwrap();
    assert!(
        metrics.contains("tidewell_mqtt_sessions_persistent 1"),
        "{metrics}"
    );
}

#[test]
fn qos2_messages_missed_offline_arrive_exactly_once() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (client, mut conn, _) = connect(gateway.mqtt(), "app-q2", false);
    subscribe(&client, &mut conn, "orders/#", QoS::ExactlyOnce);
    disconnect(&client, &mut conn);
    publish(gateway.port(), "orders/new", "o", 0..100, 2);
    let gateway = gateway.restart();
    let (client, mut conn, present) = connect(gateway.mqtt(), "app-q2", false);
    assert!(present);
    let got = receive(&mut conn, 100);
    assert!(got.iter().all(|m| m.1 == QoS::ExactlyOnce), "{got:?}");
    let payloads: Vec<String> = got.into_iter().map(|m| m.0).collect();
    assert_eq!(payloads, names("o", 0..100));
    disconnect(&client, &mut conn);
}

#[test]
fn a_clean_session_discards_the_old_one() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (client, mut conn, _) = connect(gateway.mqtt(), "dash", false);
    subscribe(&client, &mut conn, "state/#", QoS::AtLeastOnce);
    disconnect(&client, &mut conn);
    publish(gateway.port(), "state/x", "s", 0..5, 1);
    let (client, mut conn, present) = connect(gateway.mqtt(), "dash", true);
    assert!(!present, "clean_session = 1 starts afresh");
    disconnect(&client, &mut conn);
    let (client, mut conn, present) = connect(gateway.mqtt(), "dash", false);
    assert!(!present, "the old session is gone");
    // Its subscription went with it: a new one sees only what comes next.
    subscribe(&client, &mut conn, "state/#", QoS::AtLeastOnce);
    publish(gateway.port(), "state/x", "t", 0..1, 1);
    let payloads: Vec<String> = payloads(&mut conn, 1);
    assert_eq!(payloads, names("t", 0..1));
    disconnect(&client, &mut conn);
}

#[test]
fn an_mqtt5_session_ends_after_its_expiry() {
    use rumqttc::v5::{Client as Client5, Event as Event5, MqttOptions as Options5};
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    let connect5 = |expiry: u32| {
        let mut options = Options5::new("short-lived", addr.ip().to_string(), addr.port());
        options.set_clean_start(false);
        let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        props.session_expiry_interval = Some(expiry);
        options.set_connect_properties(props);
        let (client, mut connection) = Client5::new(options, 16);
        for event in connection.iter() {
            if let Ok(Event5::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) = event {
                return (client, connection, ack.session_present);
            }
            event.unwrap();
        }
        panic!("no CONNACK");
    };
    let (client, mut connection, present) = connect5(1);
    assert!(!present);
    client
        .subscribe("x/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .unwrap();
    for event in connection.iter() {
        if let Ok(Event5::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))) = event {
            break;
        }
    }
    client.disconnect().unwrap();
    for event in connection.iter() {
        if event.is_err() {
            break;
        }
    }
    // The expiry is a duration: waiting it out is the test.
    std::thread::sleep(Duration::from_millis(1500));
    let (client, _connection, present) = connect5(60);
    assert!(!present, "the session expired 1 s after its client left");
    client.disconnect().unwrap();
    let metrics = gateway.get("/metrics").unwrap();
    assert!(
        !metrics.contains("tidewell_mqtt_sessions_expired_total 0"),
        "{metrics}"
    );
}

#[test]
fn mosquitto_sub_with_a_persistent_session_gets_the_backlog() {
    harness::mosquitto::require_clients();
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port().to_string();
    let sub = |count: &str| {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-c",
                "-i",
                "ha-1",
                "-q",
                "1",
            ])
            .args(["-t", "sensors/#", "-C", count, "-W", "20"])
            .output()
            .unwrap()
    };
    // -E: exit once subscribed (mosquitto_sub 2.0).
    let first = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            "-i",
            "ha-1",
            "-q",
            "1",
        ])
        .args(["-t", "sensors/#", "-E"])
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");
    publish(gateway.port(), "sensors/temp", "r", 0..1500, 1);
    let out = sub("1500");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        names("r", 0..1500),
        "more than Mosquitto's 1,000 queued"
    );
}

#[test]
fn two_instances_of_an_app_split_a_shared_subscription() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (a, mut conn_a, _) = connect(gateway.mqtt(), "worker-a", true);
    let (b, mut conn_b, _) = connect(gateway.mqtt(), "worker-b", true);
    subscribe(&a, &mut conn_a, "$share/workers/jobs/#", QoS::AtLeastOnce);
    subscribe(&b, &mut conn_b, "$share/workers/jobs/#", QoS::AtLeastOnce);
    publish(gateway.port(), "jobs/resize", "j", 0..100, 1);
    // Round robin over two members: 50 each.
    let got_a = receive(&mut conn_a, 50);
    let got_b = receive(&mut conn_b, 50);
    let mut all: Vec<String> = got_a.iter().chain(&got_b).map(|m| m.0.clone()).collect();
    all.sort_by_key(|p| p[2..].parse::<usize>().unwrap());
    assert_eq!(
        all,
        names("j", 0..100),
        "each message to exactly one member"
    );
    // One member leaves: the other gets everything.
    disconnect(&b, &mut conn_b);
    publish(gateway.port(), "jobs/resize", "k", 0..10, 1);
    let got: Vec<String> = payloads(&mut conn_a, 10);
    assert_eq!(got, names("k", 0..10));
    disconnect(&a, &mut conn_a);
}

#[test]
fn a_second_connection_takes_the_session_over_with_its_subscription() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (first, mut first_conn, _) = connect(gateway.mqtt(), "roaming", false);
    subscribe(&first, &mut first_conn, "fleet/#", QoS::AtLeastOnce);
    // The device reappears on a new link before the old one timed out.
    let (second, mut second_conn, present) = connect(gateway.mqtt(), "roaming", false);
    assert!(present, "the new connection gets the session");
    publish(gateway.port(), "fleet/cmd", "f", 0..20, 1);
    let got: Vec<String> = payloads(&mut second_conn, 20);
    assert_eq!(got, names("f", 0..20));
    disconnect(&second, &mut second_conn);
    drop(first);
}

/// (packet id, DUP, payload) of a 3.1.1 QoS 1 PUBLISH frame.
fn qos1_publish(frame: (u8, Vec<u8>)) -> (u16, bool, String) {
    let (header, body) = frame;
    assert_eq!(header & 0xF6, 0x32, "a QoS 1 PUBLISH");
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let pkid = u16::from_be_bytes([body[2 + len], body[3 + len]]);
    let payload = String::from_utf8_lossy(&body[4 + len..]).into_owned();
    (pkid, header & 0x08 != 0, payload)
}

#[test]
fn unfinished_deliveries_come_again_in_the_order_they_were_first_sent() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    let hello = raw::connect(4, "ordered", false, &[], None);
    let (mut s, _) = raw::connected(addr, &hello);
    let mut body = vec![0, 1];
    raw::string(b"o/#", &mut body);
    body.push(1);
    raw::send(&mut s, &raw::frame(0x82, &body));
    assert_eq!(raw::read_frame(&mut s).unwrap().0, 0x90, "SUBACK");
    publish(gateway.port(), "o/t", "m", 0..10, 1);
    let first: Vec<(u16, bool, String)> = (0..10)
        .map(|_| qos1_publish(raw::read_frame(&mut s).unwrap()))
        .collect();
    for (pkid, _, _) in &first[..9] {
        raw::send(&mut s, &raw::frame(0x40, &pkid.to_be_bytes()));
    }
    drop(s);
    // Back: m-9 again; then two new ones, none acknowledged.
    let (mut s, connack) = raw::connected(addr, &hello);
    assert_eq!(connack, [1, 0], "session present");
    let again = qos1_publish(raw::read_frame(&mut s).unwrap());
    assert_eq!((again.1, again.2.as_str()), (true, "m-9"));
    publish(gateway.port(), "o/t", "n", 0..2, 1);
    let new: Vec<String> = (0..2)
        .map(|_| qos1_publish(raw::read_frame(&mut s).unwrap()).2)
        .collect();
    assert_eq!(new, names("n", 0..2));
    drop(s);
    let (mut s, _) = raw::connected(addr, &hello);
    let resent: Vec<(bool, String)> = (0..3)
        .map(|_| {
            let (_, dup, payload) = qos1_publish(raw::read_frame(&mut s).unwrap());
            (dup, payload)
        })
        .collect();
    assert_eq!(
        resent,
        [
            (true, "m-9".into()),
            (true, "n-0".into()),
            (true, "n-1".into())
        ],
        "first-sent order, though the packet ids restarted"
    );
}
