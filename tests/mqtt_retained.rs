//! Retained messages and wills as real firmware and apps use them, against
//! the real binary: a Tasmota-like device (retained will, retained
//! `Online`), a Zigbee2MQTT-like bridge (retained will, clean exit), a
//! Home-Assistant-like subscriber reading retained discovery topics, MQTT 5
//! retain handling and retain-as-published, and retained messages across
//! SIGKILL of the gateway (replayed from the log, then from the checkpoint).

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/mqtt_raw.rs"]
mod raw;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use harness::{header, Gateway};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

fn config(dir: &std::path::Path) -> String {
    format!(
        "{}[topics.ingest]\npartitions = 2\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        harness::data_dir_line(dir)
    )
}

/// What `mosquitto_sub --retained-only` prints for `filter` (`topic payload`
/// lines, retained messages only), as a map.
fn retained(port: u16, filter: &str) -> BTreeMap<String, String> {
    harness::mosquitto::require_clients();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
        .args(["--retained-only", "-v", "-W", "1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// One retained QoS 1 publish with mosquitto_pub (`-n`: empty payload).
fn publish_retained(port: u16, topic: &str, message: Option<&str>) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", topic]);
    match message {
        Some(m) => cmd.args(["-m", m]),
        None => cmd.arg("-n"),
    };
    assert!(cmd.status().unwrap().success());
}

fn tasmota_will() -> raw::Will<'static> {
    raw::Will {
        topic: "tele/plug/LWT",
        payload: b"Offline",
        qos: 1,
        retain: true,
        props: Vec::new(),
    }
}

#[test]
fn a_tasmota_like_device_leaves_online_then_its_retained_will_across_sigkill() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let addr = gateway.mqtt();
    // Tasmota: retained will at CONNECT (3.1.1), then a retained `Online`.
    let (mut device, connack) = raw::connected(
        addr,
        &raw::connect(4, "plug", true, &[], Some(&tasmota_will())),
    );
    assert_eq!(connack, [0, 0], "CONNACK accepted");
    let mut online = raw::publish_v4("tele/plug/LWT", 1, 1, false, b"Online");
    online[0] |= 1;
    raw::send(&mut device, &online);
    assert_eq!(raw::read_frame(&mut device).unwrap(), (0x40, vec![0, 1]));
    let want = |p: &str| BTreeMap::from([("tele/plug/LWT".to_string(), p.to_string())]);
    assert_eq!(retained(addr.port(), "tele/#"), want("Online"));
    // Power pulled: TCP closes without DISCONNECT, the will replaces it.
    drop(device);
    harness::wait_for("the retained will", Duration::from_secs(10), || {
        retained(addr.port(), "tele/#") == want("Offline")
    });
    let gateway = gateway.restart();
    assert_eq!(retained(gateway.port(), "tele/#"), want("Offline"));
    let records = gateway.dump();
    let kept: Vec<_> = records
        .iter()
        .filter(|r| header(r, "mqtt.topic") == Some("tele/plug/LWT"))
        .map(|r| (header(r, "mqtt.retain"), r["payload"].as_str()))
        .collect();
    assert_eq!(
        kept,
        [(Some("1"), Some("Online")), (Some("1"), Some("Offline"))]
    );
}

#[test]
fn a_zigbee2mqtt_like_bridge_that_exits_cleanly_keeps_its_retained_state() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    let mut options = rumqttc::MqttOptions::new("zigbee2mqtt", "127.0.0.1", port);
    options.set_last_will(rumqttc::LastWill::new(
        "zigbee2mqtt/bridge/state",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(
            "zigbee2mqtt/bridge/state",
            rumqttc::QoS::AtLeastOnce,
            true,
            "online",
        )
        .unwrap();
    for event in connection.iter() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event.unwrap() {
            break;
        }
    }
    client.disconnect().unwrap();
    for event in connection.iter() {
        if event.is_err()
            || matches!(
                event,
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))
            )
        {
            break;
        }
    }
    drop(connection);
    harness::wait_for("the bridge to leave", Duration::from_secs(10), || {
        gateway.metric("tidewell_mqtt_connections_open") == 0.0
    });
    let state = retained(port, "zigbee2mqtt/bridge/state");
    assert_eq!(state["zigbee2mqtt/bridge/state"], "online");
    assert!(!gateway
        .dump()
        .iter()
        .any(|r| r["payload"].as_str() == Some("offline")));
}

/// A rumqttc MQTT 5 subscriber that subscribes with `filters` and collects
/// publishes until `quiet` passes without one.
fn collect(port: u16, id: &str, filters: Vec<Filter>, then: impl FnOnce()) -> Vec<Publish> {
    let (client, mut connection) = Client::new(MqttOptions::new(id, "127.0.0.1", port), 64);
    let wanted = filters.len();
    for f in filters {
        client.subscribe_many([f]).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
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
                Err(_) => return,
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    then();
    let got = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(700)).ok()).collect();
    drop(client);
    got
}

fn filter(path: &str, rule: RetainForwardRule, rap: bool) -> Filter {
    let mut f = Filter::new(path, QoS::AtLeastOnce);
    f.retain_forward_rule = rule;
    f.preserve_retain = rap;
    f
}

#[test]
fn a_home_assistant_like_subscriber_reads_retained_discovery_after_sigkill() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    for dev in ["kitchen", "hall", "attic"] {
        let topic = format!("homeassistant/sensor/{dev}/config");
        publish_retained(port, &topic, Some(&format!("{{\"name\":\"{dev}\"}}")));
    }
    // A device removed from discovery: an empty retained payload clears it.
    publish_retained(port, "homeassistant/sensor/attic/config", None);
    let gateway = gateway.restart();
    let rule = RetainForwardRule::OnEverySubscribe;
    let got = collect(
        gateway.port(),
        "ha",
        vec![filter("homeassistant/#", rule, false)],
        || (),
    );
    let mut topics: Vec<_> = got
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.topic).into_owned(), p.retain))
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            ("homeassistant/sensor/hall/config".to_string(), true),
            ("homeassistant/sensor/kitchen/config".to_string(), true),
        ]
    );
    // Restarted again, now from the checkpoint written after the replay.
    let gateway = gateway.restart();
    assert_eq!(retained(gateway.port(), "homeassistant/#").len(), 2);
    assert!(gateway.stderr_contains("retained messages restored"));
}

#[test]
fn v5_retain_handling_and_retain_as_published() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    publish_retained(port, "state/a", Some("1"));
    let never = collect(
        port,
        "s1",
        vec![filter("state/#", RetainForwardRule::Never, false)],
        || (),
    );
    assert!(never.is_empty(), "{never:?}");
    // Only on a new subscription: the same filter twice sends it once.
    let rule = RetainForwardRule::OnNewSubscribe;
    let once = collect(
        port,
        "s2",
        vec![
            filter("state/#", rule.clone(), false),
            filter("state/#", rule, false),
        ],
        || (),
    );
    assert_eq!(once.len(), 1, "{once:?}");
    // Live retained publishes keep the flag only with retain-as-published.
    for rap in [true, false] {
        let rule = RetainForwardRule::Never;
        let live = collect(port, "s3", vec![filter("state/#", rule, rap)], || {
            publish_retained(port, "state/b", Some("2"));
        });
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].retain, rap);
    }
}

#[test]
fn acknowledged_retained_messages_survive_sigkill() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let (client, mut connection) = rumqttc::Client::new(
        rumqttc::MqttOptions::new("many", "127.0.0.1", gateway.port()),
        200,
    );
    std::thread::spawn(move || {
        for i in 0..100 {
            let payload = format!("v{i}");
            client
                .publish(
                    format!("r/{}", i % 40),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .unwrap();
        }
    });
    let mut acked = 0;
    for event in connection.iter() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event.unwrap() {
            acked += 1;
            if acked == 100 {
                break;
            }
        }
    }
    let gateway = gateway.restart();
    let got = retained(gateway.port(), "r/#");
    let want: BTreeMap<String, String> = (60..100)
        .map(|i| (format!("r/{}", i % 40), format!("v{i}")))
        .collect();
    assert_eq!(got, want);
}
