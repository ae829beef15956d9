//! MQTT protocol details found by an interoperability run, each against the
//! real binary: wills reach live subscribers (on an abrupt end only, short
//! MQTT 5 DISCONNECTs included), MQTT 5 message properties are forwarded
//! and kept in the log, the client's Maximum Packet Size is honoured, topic
//! aliases and Receive Maximum are enforced with their reason codes, topic
//! aliases are set up toward subscribers that allow them, a
//! 3.1.1 empty client id without a clean session gets 0x02, the advertised
//! maximum packet size is what is accepted, and loopback-only defaults let
//! anonymous clients publish to any topic.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/mqtt_raw.rs"]
mod raw;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use harness::{header, Gateway, Launch};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

fn config(dir: &std::path::Path) -> String {
    format!(
        "{}[topics.ingest]\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\nreceive_maximum = 4\nmax_payload_bytes = 4096\n",
        harness::data_dir_line(dir)
    )
}

/// A rumqttc MQTT 5 subscriber on its own thread; publishes arrive on `rx`.
struct Subscriber {
    rx: mpsc::Receiver<Publish>,
    _client: Client,
}

impl Subscriber {
    fn start(port: u16, id: &str, filters: &[&str], max_packet: Option<u32>) -> Subscriber {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(max_packet);
        let (client, mut connection) = Client::new(options, 64);
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let wanted = filters.len();
        std::thread::spawn(move || {
            let mut acked = 0;
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acked += 1;
                        if acked == wanted {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("SUBACK");
        Subscriber {
            rx,
            _client: client,
        }
    }

    /// Everything received up to and including the first publish on `topic`.
    fn until(&self, topic: &str) -> Vec<Publish> {
        let mut got = Vec::new();
        loop {
            let p = self
                .rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("nothing on {topic}; got {got:?}"));
            let done = p.topic == topic.as_bytes();
            got.push(p);
            if done {
                return got;
            }
        }
    }
}

/// One QoS 1 publish with mosquitto_pub (3.1.1), which must succeed.
fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    harness::mosquitto::require_clients();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", message])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub -t {topic}");
}

fn will(topic: &str) -> raw::Will<'_> {
    raw::Will {
        topic,
        payload: b"gone",
        qos: 1,
        retain: false,
        props: Vec::new(),
    }
}

#[test]
fn a_will_reaches_live_subscribers_after_an_abrupt_end_only() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    let sub = Subscriber::start(addr.port(), "watcher", &["wills/#", "marker"], None);
    // 3.1.1, TCP closed without DISCONNECT: the will goes out.
    let (s, _) = raw::connected(
        addr,
        &raw::connect(4, "w1", true, &[], Some(&will("wills/w1"))),
    );
    drop(s);
    // MQTT 5 normal disconnects, long and short forms: no will.
    for (id, disconnect) in [
        ("w2", &[0xE0, 0x00][..]),
        ("w3", &[0xE0, 0x01, 0x00][..]),
        ("w4", &[0xE0, 0x02, 0x00, 0x00][..]),
    ] {
        let topic = format!("wills/{id}");
        let (mut s, _) = raw::connected(addr, &raw::connect(5, id, true, &[], Some(&will(&topic))));
        raw::send(&mut s, disconnect);
        assert!(raw::frames_until_closed(&mut s).is_empty());
    }
    // MQTT 5 "disconnect with will message" (0x04), short form: the will.
    let (mut s, _) = raw::connected(
        addr,
        &raw::connect(5, "w5", true, &[], Some(&will("wills/w5"))),
    );
    raw::send(&mut s, &[0xE0, 0x01, 0x04]);
    raw::frames_until_closed(&mut s);
    harness::wait_for("the connections to end", Duration::from_secs(10), || {
        gateway.metric("tidewell_mqtt_connections_open") == 1.0
    });
    mosquitto_pub(addr.port(), "marker", "m");
    let got: BTreeSet<String> = sub
        .until("marker")
        .iter()
        .filter(|p| p.topic != "marker")
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    assert_eq!(got, BTreeSet::from(["wills/w1".into(), "wills/w5".into()]));
    let logged: BTreeSet<String> = gateway
        .dump()
        .iter()
        .filter_map(|r| header(r, "mqtt.topic").map(str::to_string))
        .filter(|t| t.starts_with("wills/"))
        .collect();
    assert_eq!(logged, got);
}

#[test]
fn v5_message_properties_reach_subscribers_and_the_log() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    let sub = Subscriber::start(port, "app", &["req/#"], None);
    let (client, mut connection) = Client::new(MqttOptions::new("dev", "127.0.0.1", port), 10);
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("resp/dev".into()),
        correlation_data: Some(Bytes::from_static(b"c-17")),
        user_properties: vec![("unit".into(), "C".into())],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties("req/dev", QoS::AtLeastOnce, false, "21.5", props)
        .unwrap();
    for event in connection.iter() {
        if matches!(event.unwrap(), Event::Incoming(Packet::PubAck(_))) {
            break;
        }
    }
    let got = sub.until("req/dev").pop().unwrap();
    let p = got.properties.expect("properties forwarded");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("resp/dev"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"c-17"[..]));
    assert_eq!(p.user_properties, vec![("unit".into(), "C".into())]);
    let expiry = p.message_expiry_interval.unwrap();
    assert!((3590..=3600).contains(&expiry), "expiry {expiry}");
    let records = gateway.dump();
    let r = records
        .iter()
        .find(|r| header(r, "mqtt.topic") == Some("req/dev"))
        .unwrap();
    assert_eq!(header(r, "mqtt.content_type"), Some("text/plain"));
    assert_eq!(header(r, "mqtt.response_topic"), Some("resp/dev"));
    assert_eq!(header(r, "mqtt.correlation_data"), Some("c-17"));
    assert_eq!(header(r, "mqtt.payload_format"), Some("1"));
    assert_eq!(header(r, "mqtt.message_expiry_s"), Some("3600"));
    assert_eq!(header(r, "mqtt.user.unit"), Some("C"));
}

#[test]
fn deliveries_over_the_clients_maximum_packet_size_are_not_sent() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    // rumqttc fails the connection on a packet over its maximum.
    let sub = Subscriber::start(port, "small", &["big", "marker"], Some(256));
    mosquitto_pub(port, "big", &"x".repeat(1000));
    mosquitto_pub(port, "marker", "m");
    let got = sub.until("marker");
    assert_eq!(got.len(), 1, "only the marker: {got:?}");
    assert_eq!(
        gateway.metric("tidewell_mqtt_deliveries_too_large_total"),
        1.0
    );
}

#[test]
fn topic_aliases_are_used_and_alias_0_or_over_the_maximum_gets_0x94() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    let (mut s, connack) = raw::connected(addr, &raw::connect(5, "a1", true, &[], None));
    assert_eq!(
        raw::connack_u32(&connack, 0x22),
        Some(32),
        "topic alias maximum"
    );
    raw::send(
        &mut s,
        &raw::publish_v5("alias/t", 1, 1, &[0x23, 0, 1], b"one"),
    );
    raw::send(&mut s, &raw::publish_v5("", 1, 2, &[0x23, 0, 1], b"two"));
    for pkid in [1u8, 2] {
        let (h, body) = raw::read_frame(&mut s).unwrap();
        assert_eq!((h, body[1]), (0x40, pkid), "PUBACK {pkid}");
    }
    raw::send(
        &mut s,
        &raw::publish_v5("alias/t", 1, 3, &[0x23, 0, 0], b"x"),
    );
    assert_eq!(
        raw::disconnect_reason(&raw::frames_until_closed(&mut s)),
        Some(0x94)
    );
    let (mut s, _) = raw::connected(addr, &raw::connect(5, "a2", true, &[], None));
    raw::send(
        &mut s,
        &raw::publish_v5("alias/t", 0, 0, &[0x23, 0, 33], b"x"),
    );
    assert_eq!(
        raw::disconnect_reason(&raw::frames_until_closed(&mut s)),
        Some(0x94)
    );
    let payloads: Vec<String> = gateway
        .dump()
        .iter()
        .filter(|r| header(r, "mqtt.topic") == Some("alias/t"))
        .map(|r| r["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(payloads, ["one", "two"]);
}

#[test]
fn more_unacknowledged_publishes_than_receive_maximum_get_0x93() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (mut s, connack) = raw::connected(gateway.mqtt(), &raw::connect(5, "r1", true, &[], None));
    assert_eq!(raw::connack_u32(&connack, 0x21), Some(4), "receive maximum");
    // QoS 2 publishes stay unacknowledged until their PUBREL, never sent here.
    for pkid in 1..=5 {
        raw::send(&mut s, &raw::publish_v5("rm/t", 2, pkid, &[], b"x"));
    }
    let frames = raw::frames_until_closed(&mut s);
    let pubrecs = frames.iter().filter(|(h, _)| *h == 0x50).count();
    assert_eq!(pubrecs, 4, "{frames:?}");
    assert_eq!(raw::disconnect_reason(&frames), Some(0x93));
}

#[test]
fn empty_client_id_without_clean_session_gets_connack_0x02_on_3_1_1() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (_s, connack) = raw::connected(gateway.mqtt(), &raw::connect(4, "", false, &[], None));
    assert_eq!(connack, [0, 2]);
}

#[test]
fn the_advertised_maximum_packet_size_is_what_is_accepted() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (mut s, connack) = raw::connected(gateway.mqtt(), &raw::connect(5, "m1", true, &[], None));
    let max = raw::connack_u32(&connack, 0x27).unwrap() as usize;
    assert_eq!(max, 4096);
    // A whole PUBLISH of exactly `max` bytes: header 1 + length 2 + topic
    // 2 + 3 + packet id 2 + properties 1, then the payload.
    let exact = raw::publish_v5("m/t", 1, 1, &[], &vec![b'x'; max - 11]);
    assert_eq!(exact.len(), max);
    raw::send(&mut s, &exact);
    let (h, body) = raw::read_frame(&mut s).unwrap();
    assert_eq!((h, &body[..2]), (0x40, &[0u8, 1][..]), "PUBACK");
    assert!(body.get(2).is_none_or(|r| *r == 0), "reason {body:?}");
    raw::send(
        &mut s,
        &raw::publish_v5("m/t", 1, 2, &[], &vec![b'x'; max - 10]),
    );
    assert_eq!(
        raw::disconnect_reason(&raw::frames_until_closed(&mut s)),
        Some(0x95)
    );
}

#[test]
fn loopback_only_defaults_let_anonymous_clients_publish_anywhere_and_say_so() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    mosquitto_pub(gateway.port(), "sensors/temp", "21.5");
    assert!(gateway.stderr_contains("anonymous clients may publish to every topic"));
    let records = gateway.dump();
    assert!(records
        .iter()
        .any(|r| header(r, "mqtt.topic") == Some("sensors/temp")));
    // The embedded defaults (no config at all) say the same.
    let embedded = harness::temp_dir();
    let defaults = Launch::embedded_defaults(embedded.path())
        .own_network_if_root()
        .start();
    assert!(defaults.stderr_contains("anonymous clients may publish to every topic"));
}

/// QoS 2 toward a subscriber (PUBREC, PUBREL, PUBCOMP), with its
/// subscription identifier and no-local: with a Receive Maximum of 1 the
/// second message only comes once the first flow completed.
#[test]
fn qos2_deliveries_complete_and_carry_the_subscription_identifier() {
    use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties};
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    let mut options = MqttOptions::new("q2sub", "127.0.0.1", port);
    options.set_receive_maximum(Some(1));
    let (client, mut connection) = Client::new(options, 10);
    let props = SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    client
        .subscribe_with_properties("q2/#", QoS::ExactlyOnce, props)
        .unwrap();
    let mut own = Filter::new("own/#", QoS::AtLeastOnce);
    own.nolocal = true;
    client.subscribe_many([own]).unwrap();
    let mut acks = 0;
    let mut got = Vec::new();
    for event in connection.iter() {
        match event.unwrap() {
            Event::Incoming(Packet::SubAck(_)) => {
                acks += 1;
                if acks == 2 {
                    client
                        .publish("own/x", QoS::AtLeastOnce, false, "mine")
                        .unwrap();
                    mosquitto_pub(port, "own/x", "theirs");
                    for i in 0..2 {
                        let status = Command::new("mosquitto_pub")
                            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "2"])
                            .args(["-t", "q2/x", "-m", &format!("m{i}")])
                            .status()
                            .unwrap();
                        assert!(status.success());
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                got.push(p);
                if got.len() == 3 {
                    break;
                }
            }
            _ => {}
        }
    }
    let payloads: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, ["theirs", "m0", "m1"]);
    for p in &got[1..] {
        assert_eq!(p.qos, QoS::ExactlyOnce);
        let ids = &p.properties.as_ref().unwrap().subscription_identifiers;
        assert_eq!(ids, &[7]);
    }
}

/// A QoS 1 publish durable before SIGKILL, re-sent with DUP = 1 after the
/// restart (its PUBACK counted as lost), is acked and not appended again;
/// a DUP = 1 publish with another payload is a new message.
#[test]
fn a_qos1_resend_after_a_crash_is_acked_without_a_second_append() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (mut s, _) = raw::connected(gateway.mqtt(), &raw::connect(4, "fw1", true, &[], None));
    raw::send(&mut s, &raw::publish_v4("fw/t", 1, 9, false, b"reading-1"));
    assert_eq!(raw::read_frame(&mut s).unwrap(), (0x40, vec![0, 9]));
    let gateway = gateway.restart();
    let (mut s, _) = raw::connected(gateway.mqtt(), &raw::connect(4, "fw1", true, &[], None));
    raw::send(&mut s, &raw::publish_v4("fw/t", 1, 9, true, b"reading-1"));
    assert_eq!(raw::read_frame(&mut s).unwrap(), (0x40, vec![0, 9]));
    raw::send(&mut s, &raw::publish_v4("fw/t", 1, 9, true, b"reading-2"));
    assert_eq!(raw::read_frame(&mut s).unwrap(), (0x40, vec![0, 9]));
    let payloads: Vec<String> = gateway
        .dump()
        .iter()
        .filter(|r| header(r, "mqtt.topic") == Some("fw/t"))
        .map(|r| r["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(payloads, ["reading-1", "reading-2"]);
    assert_eq!(gateway.metric("tidewell_mqtt_qos1_resends_total"), 1.0);
}

/// The topic of an MQTT 5 QoS 0 PUBLISH body, and its Topic Alias (0x23).
fn topic_and_alias(body: &[u8]) -> (Vec<u8>, Option<u16>) {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = body[2..2 + len].to_vec();
    let (props_len, at) = (usize::from(body[2 + len]), 3 + len);
    let props = &body[at..at + props_len];
    let alias = props
        .windows(3)
        .find(|w| w[0] == 0x23)
        .map(|w| u16::from_be_bytes([w[1], w[2]]));
    (topic, alias)
}

#[test]
fn deliveries_use_topic_aliases_when_the_subscriber_allows_them() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    // Topic Alias Maximum 4 in CONNECT.
    let (mut sub, _) = raw::connected(addr, &raw::connect(5, "aliased", true, &[0x22, 0, 4], None));
    let mut body = vec![0, 1, 0];
    raw::string(b"alias/#", &mut body);
    body.push(0);
    raw::send(&mut sub, &raw::frame(0x82, &body));
    assert_eq!(raw::read_frame(&mut sub).unwrap().0, 0x90, "SUBACK");
    let (mut publisher, _) = raw::connected(addr, &raw::connect(4, "pub", true, &[], None));
    for topic in ["alias/a", "alias/a", "alias/b", "alias/a"] {
        raw::send(&mut publisher, &raw::publish_v4(topic, 0, 0, false, b"x"));
    }
    let got: Vec<(Vec<u8>, Option<u16>)> = (0..4)
        .map(|_| {
            let (header, body) = raw::read_frame(&mut sub).unwrap();
            assert_eq!(header & 0xF0, 0x30, "PUBLISH");
            topic_and_alias(&body)
        })
        .collect();
    assert_eq!(
        got,
        [
            (b"alias/a".to_vec(), Some(1)),
            (Vec::new(), Some(1)),
            (b"alias/b".to_vec(), Some(2)),
            (Vec::new(), Some(1)),
        ],
        "the topic once, then the alias alone"
    );
    // Without a Topic Alias Maximum, no aliases.
    let (mut plain, _) = raw::connected(addr, &raw::connect(5, "plain", true, &[], None));
    raw::send(&mut plain, &raw::frame(0x82, &body));
    assert_eq!(raw::read_frame(&mut plain).unwrap().0, 0x90);
    raw::send(
        &mut publisher,
        &raw::publish_v4("alias/a", 0, 0, false, b"x"),
    );
    let (_, body) = raw::read_frame(&mut plain).unwrap();
    assert_eq!(topic_and_alias(&body), (b"alias/a".to_vec(), None));
}
