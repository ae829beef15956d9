//! Authentication, ACLs and explicit refusals, against the real binary:
//! argon2 users from the config, per-client topic permissions with the
//! MQTT 5 reason codes (0x87, 0x95, 0x97) and 3.1.1 disconnects, live
//! subscriptions, and TLS with a test CA and client certificates.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{dump, header, Gateway};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

const PASSWORD: &str = "correct horse";

fn config(dir: &Path, ann_hash: &str, dash_hash: &str) -> String {
    format!(
        r#"{data_dir}
[topics.ingest]
[topics.small]
retention_bytes = 16384
when_full = "reject_new"
max_segment_bytes = 4096

[mqtt]
listen = "127.0.0.1:0"
allow_anonymous = false
max_payload_bytes = 4096

[[mqtt.users]]
username = "ann"
password_hash = "{ann_hash}"
publish_acl = ["devices/{{client_id}}/#", "quota/#"]

[[mqtt.users]]
username = "dash"
password_hash = "{dash_hash}"
publish_acl = []
subscribe_acl = ["devices/#"]

[[mqtt.routes]]
filter = "quota/#"
topic = "small"
"#,
        data_dir = harness::data_dir_line(dir)
    )
}

fn start(dir: &Path) -> Gateway {
    let ann = harness::hash_password(PASSWORD);
    let dash = harness::hash_password("dash-pw");
    Gateway::start(dir, &config(dir, &ann, &dash))
}

fn options(port: u16, id: &str, user: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Polls until the first connection error (or `limit` events), returning it.
async fn first_error(events: &mut rumqttc::v5::EventLoop, limit: usize) -> Option<ConnectionError> {
    for _ in 0..limit {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(e),
            Err(_) => return None,
        }
    }
    None
}

/// Waits for the first PUBACK (success) or error.
async fn publish_outcome(
    port: u16,
    id: &str,
    topic: &str,
    payload: Vec<u8>,
) -> Result<(), ConnectionError> {
    let (client, mut events) = AsyncClient::new(options(port, id, "ann", PASSWORD), 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("no answer to the publish"),
        }
    }
}

#[test]
fn wrong_password_and_anonymous_clients_are_refused() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path());
    let port = gateway.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_c, mut events) = AsyncClient::new(options(port, "c1", "ann", "guess"), 10);
        let err = first_error(&mut events, 5).await;
        assert!(
            matches!(
                err,
                Some(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::BadUserNamePassword
                ))
            ),
            "{err:?}"
        );
        // The same client id again at once is slowed down: not even the right
        // password is checked for a second (MQTT 5: 0x9F).
        let (_c, mut events) = AsyncClient::new(options(port, "c1", "ann", PASSWORD), 10);
        let err = first_error(&mut events, 5).await;
        assert!(
            matches!(
                err,
                Some(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::ConnectionRateExceeded
                ))
            ),
            "{err:?}"
        );
        let (_c, mut events) = AsyncClient::new(options(port, "c9", "nobody", PASSWORD), 10);
        let err = first_error(&mut events, 5).await;
        assert!(
            matches!(
                err,
                Some(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::BadUserNamePassword
                ))
            ),
            "{err:?}"
        );
        let (_c, mut events) = AsyncClient::new(MqttOptions::new("anon", "127.0.0.1", port), 10);
        let err = first_error(&mut events, 5).await;
        assert!(
            matches!(
                err,
                Some(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::NotAuthorized
                ))
            ),
            "{err:?}"
        );
        // Once the delay has passed, the right password gets in and publishes.
        let slowed = Instant::now();
        loop {
            match publish_outcome(port, "c1", "devices/c1/t", b"ok".to_vec()).await {
                Ok(()) => break,
                Err(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::ConnectionRateExceeded,
                )) if slowed.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    });
    // And mosquitto_pub (MQTT 3.1.1) sees the refusal too.
    harness::mosquitto::require_clients();
    let out = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-i",
            "c2",
            "-u",
            "ann",
            "-P",
            "guess",
        ])
        .args(["-t", "devices/c2/t", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        text.contains("refused") || text.contains("not authorised"),
        "{text}"
    );
}

#[test]
fn forbidden_topic_gets_0x87_on_mqtt5_and_a_disconnect_on_3_1_1() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path());
    let port = gateway.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let refused = publish_outcome(port, "c1", "devices/someone-else/t", b"x".to_vec()).await;
        assert!(
            matches!(
                refused,
                Err(ConnectionError::MqttState(StateError::PubAckFail {
                    reason: PubAckReason::NotAuthorized
                }))
            ),
            "{refused:?}"
        );
        // MQTT 3.1.1 has no negative PUBACK: the connection is closed instead.
        let mut o = rumqttc::MqttOptions::new("c3", "127.0.0.1", port);
        o.set_credentials("ann", PASSWORD);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
        client
            .publish("devices/other/t", rumqttc::QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let mut closed = false;
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .unwrap()
            {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    panic!("forbidden publish acked")
                }
                Ok(_) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "3.1.1 client not disconnected");
    });
    drop(rt);
    gateway.stop();
    let records = dump(&harness::data_dir(dir.path()));
    assert!(records
        .iter()
        .all(|r| header(r, "mqtt.topic") != Some("devices/someone-else/t")));
    assert!(records
        .iter()
        .all(|r| header(r, "mqtt.topic") != Some("devices/other/t")));
}

#[test]
fn oversize_payload_gets_0x95_and_a_full_log_gets_0x97() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path());
    let port = gateway.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = gateway.stderr();
    rt.block_on(async {
        // CONNACK advertises max_payload_bytes as the Maximum Packet Size, so
        // rumqttc keeps the packet to itself; a client that sends it anyway
        // gets 0x95 (tests/mqtt_protocol.rs, tests/mqtt_abuse.rs).
        let big = publish_outcome(port, "c1", "devices/c1/t", vec![b'x'; 5000]).await;
        assert!(
            matches!(
                big,
                Err(ConnectionError::MqttState(
                    StateError::OutgoingPacketTooLarge { max: 4096, .. }
                ))
            ),
            "{big:?}\n{}",
            log.text()
        );
        // `small` holds 16 KiB under reject_new: 1 KiB publishes are refused
        // with 0x97 once it is full, and not before.
        let mut accepted = 0;
        let outcome = loop {
            match publish_outcome(port, "c1", "quota/c1", vec![b'q'; 1024]).await {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 200, "quota never enforced");
        };
        assert!(
            matches!(
                outcome,
                ConnectionError::MqttState(StateError::PubAckFail {
                    reason: PubAckReason::QuotaExceeded
                })
            ),
            "{outcome:?}"
        );
        assert!(accepted >= 4, "refused too early: after {accepted}");
    });
}

#[test]
fn subscribers_get_durable_records_live_within_their_acl() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path());
    let port = gateway.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // ann may not subscribe: SUBACK 0x87.
        let (client, mut events) = AsyncClient::new(options(port, "c1", "ann", PASSWORD), 10);
        client
            .subscribe("devices/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let err = first_error(&mut events, 10).await;
        assert!(
            matches!(
                err,
                Some(ConnectionError::MqttState(StateError::SubFail {
                    reason: rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized
                }))
            ),
            "{err:?}"
        );
        // dash may: it receives what ann publishes, once durable.
        let (dash, mut dash_events) =
            AsyncClient::new(options(port, "dash1", "dash", "dash-pw"), 10);
        dash.subscribe("devices/+/t", QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = dash_events.poll().await.unwrap() {
                break;
            }
        }
        let publisher = tokio::spawn(async move {
            for i in 0..3 {
                publish_outcome(port, "c1", "devices/c1/t", format!("m{i}").into_bytes())
                    .await
                    .unwrap();
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(10), dash_events.poll()).await;
            if let Event::Incoming(Packet::Publish(p)) = event.unwrap().unwrap() {
                assert_eq!(p.qos, QoS::AtLeastOnce);
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
        }
        assert_eq!(got, ["m0", "m1", "m2"]);
        publisher.await.unwrap();
    });
}

#[test]
fn tls_with_a_test_ca_requires_client_certificates() {
    harness::mosquitto::require_clients();
    let dir = harness::temp_dir();
    harness::make_certs(dir.path());
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let ann = harness::hash_password(PASSWORD);
    let dash = harness::hash_password("dash-pw");
    let config = format!(
        "{}\n[mqtt.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        config(dir.path(), &ann, &dash),
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    let gateway = Gateway::start(dir.path(), &config);
    let tls_port = gateway
        .mqtts()
        .expect("tls address in the ready line")
        .port()
        .to_string();
    let publish = |extra: &[&str], id: &str, message: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &tls_port, "--cafile", &p("ca.pem")])
            .args(extra)
            .args([
                "-i",
                id,
                "-t",
                &format!("devices/{id}/t"),
                "-m",
                message,
                "-q",
                "1",
            ])
            .output()
            .unwrap()
    };
    let client_cert = ["--cert", &p("client.pem"), "--key", &p("client.key")];
    // No client certificate: the TLS handshake fails.
    let no_cert = publish(&["-u", "ann", "-P", PASSWORD], "t0", "no-cert");
    assert!(!no_cert.status.success());
    // Certificate and password.
    let mut with_user = client_cert.to_vec();
    with_user.extend(["-u", "ann", "-P", PASSWORD]);
    let ok = publish(&with_user, "t1", "tls-user");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Certificate only: authenticated by it, with the anonymous ACL.
    let ok = publish(&client_cert, "t2", "tls-cert");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Certificate but a wrong password: refused all the same.
    let mut wrong = client_cert.to_vec();
    wrong.extend(["-u", "ann", "-P", "guess"]);
    assert!(!publish(&wrong, "t3", "tls-wrong").status.success());
    gateway.stop();
    let payloads: Vec<String> = dump(&harness::data_dir(dir.path()))
        .iter()
        .filter_map(|r| r["payload"].as_str().map(String::from))
        .collect();
    assert_eq!(payloads, ["tls-user", "tls-cert"]);
}
