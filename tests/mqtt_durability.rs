//! An acknowledged publish survives SIGKILL: many clients (rumqttc 3.1.1 and
//! 5, and the real mosquitto_pub) publish QoS 1 and 2, the gateway is killed
//! with SIGKILL the moment the last acknowledgement arrives (while one more
//! client is still publishing), restarted, and every acknowledged message is
//! found by `tidewell log dump`, in per-device order, QoS 2 without duplicates.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{dump, header, Gateway};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const RUMQTTC_CLIENTS: usize = 16;
const MOSQUITTO_CLIENTS: usize = 4;
const MESSAGES: usize = 200;

/// Acknowledged sequence numbers per device.
type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<usize>>>>;

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"{}
[topics.ingest]
partitions = 1
[topics.telemetry]
partitions = 4

[mqtt]
listen = "127.0.0.1:0"

[[mqtt.routes]]
filter = "devices/+/telemetry"
topic = "telemetry"
key = "segment:1"
"#,
        harness::data_dir_line(dir)
    )
}

fn qos_of(client: usize) -> QoS {
    if client.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// Publishes `count` messages (`None`: until `stop`) from device `id` with
/// rumqttc over MQTT 3.1.1, recording each acknowledgement (PUBACK, or
/// PUBREC for QoS 2: that is when the record is durable).
async fn rumqttc_device(
    port: u16,
    id: String,
    qos: QoS,
    count: Option<usize>,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(20);
    let (client, mut events) = AsyncClient::new(options, 64);
    let topic = format!("devices/{id}/telemetry");
    let total = count.unwrap_or(usize::MAX);
    let publisher = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            for seq in 0..total {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let payload = format!("{seq}");
                if client.publish(&topic, qos, false, payload).await.is_err() {
                    break;
                }
                if count.is_none() {
                    // The straggler only needs to be mid-stream at the kill.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    });
    // rumqttc sends publishes in request order: the n-th outgoing packet id
    // belongs to sequence number n.
    let mut sent = 0usize;
    let mut pkid_seq = BTreeMap::new();
    let mut done = 0usize;
    while done < total {
        let acked_pkid = match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                pkid_seq.insert(pkid, sent);
                sent += 1;
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => Some(ack.pkid),
            Ok(Event::Incoming(Packet::PubRec(rec))) => Some(rec.pkid),
            Ok(_) => None,
            Err(_) => break,
        };
        if let Some(seq) = acked_pkid.and_then(|p| pkid_seq.remove(&p)) {
            acked
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .insert(seq);
            done += 1;
        }
    }
    publisher.abort();
}

/// mosquitto_pub -l: one message per stdin line; `-d` prints each PUBACK or
/// PUBREC with its message id, which counts up from 1 in line order.
fn mosquitto_device(port: u16, id: &str, qos: u8, acked: Acked) -> std::thread::JoinHandle<()> {
    // stdbuf: mosquitto_pub's stdout is a pipe, and each ack line must
    // arrive when the ack does, not when a 4 KiB buffer fills.
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            id,
        ])
        .args([
            "-t",
            &format!("devices/{id}/telemetry"),
            "-q",
            &qos.to_string(),
        ])
        .args([
            "-l",
            "-d",
            "-V",
            if qos == 1 { "mqttv311" } else { "mqttv5" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let id = id.to_string();
    std::thread::spawn(move || {
        let writer = std::thread::spawn(move || {
            for seq in 0..MESSAGES {
                if writeln!(stdin, "{seq}").is_err() {
                    return;
                }
            }
            // stdin stays open until every ack is in (EOF would disconnect).
            std::thread::sleep(Duration::from_secs(120));
        });
        let wanted = if qos == 1 {
            "received PUBACK"
        } else {
            "received PUBREC"
        };
        let mut count = 0;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.contains(wanted) {
                continue;
            }
            let mid: usize = line
                .split("Mid: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .expect("message id in mosquitto_pub -d output");
            acked
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .insert(mid - 1);
            count += 1;
            if count == MESSAGES {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(writer);
    })
}

fn acked_total(acked: &Acked) -> usize {
    acked.lock().unwrap().values().map(BTreeSet::len).sum()
}

#[test]
fn every_acknowledged_publish_survives_sigkill_in_device_order() {
    harness::mosquitto::require_clients();
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let port = gateway.port();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut tasks = Vec::new();
    for c in 0..RUMQTTC_CLIENTS {
        let (acked, stop) = (acked.clone(), stop.clone());
        let id = format!("r{c}");
        tasks.push(runtime.spawn(rumqttc_device(
            port,
            id,
            qos_of(c),
            Some(MESSAGES),
            acked,
            stop,
        )));
    }
    let mosquittos: Vec<_> = (0..MOSQUITTO_CLIENTS)
        .map(|m| mosquitto_device(port, &format!("m{m}"), 1 + (m % 2) as u8, acked.clone()))
        .collect();
    // A device still publishing when the gateway dies.
    let straggler = runtime.spawn(rumqttc_device(
        port,
        "late".into(),
        QoS::AtLeastOnce,
        None,
        acked.clone(),
        stop.clone(),
    ));
    let expected = (RUMQTTC_CLIENTS + MOSQUITTO_CLIENTS) * MESSAGES;
    let all_acked = harness::wait_until(Duration::from_secs(60), || {
        let acks = acked.lock().unwrap();
        let finished: usize = acks
            .iter()
            .filter(|(id, _)| id.as_str() != "late")
            .map(|(_, s)| s.len())
            .sum();
        finished >= expected
    });
    let gateway_log = gateway.stderr();
    gateway.kill();
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<(String, usize)> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(id, s)| (id.clone(), s.len()))
        .collect();
    assert!(
        all_acked,
        "only {} of {expected} acknowledged: {counts:?}\n{}",
        acked_total(&acked),
        gateway_log.text()
    );
    for m in mosquittos {
        m.join().unwrap();
    }
    runtime.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
        let _ = straggler.await;
    });
    drop(runtime);

    // Restart on the same directory (recovery runs), stop cleanly, read back.
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    gateway.stop();
    let records = dump(&harness::data_dir(dir.path()));
    check(&records, &acked.lock().unwrap());
}

/// Every acked message is stored; per device, messages are in publish order;
/// no device has a message twice (no reconnects happened, so not even QoS 1
/// may duplicate here); each device's records share one partition.
fn check(records: &[serde_json::Value], acked: &BTreeMap<String, BTreeSet<usize>>) {
    let mut stored: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["topic"] == "telemetry") {
        let topic = header(r, "mqtt.topic").unwrap();
        let device = topic.split('/').nth(1).unwrap().to_string();
        assert_eq!(
            r["key"].as_str(),
            Some(device.as_str()),
            "key is the device id"
        );
        assert_eq!(header(r, "mqtt.client_id"), Some(device.as_str()));
        let seq: usize = r["payload"].as_str().unwrap().parse().unwrap();
        let partition = r["partition"].as_u64().unwrap();
        stored.entry(device).or_default().push((partition, seq));
    }
    let mut late_acked = 0;
    for (device, acked_seqs) in acked {
        let rows = stored.get(device).map(Vec::as_slice).unwrap_or_default();
        let partitions: BTreeSet<u64> = rows.iter().map(|(p, _)| *p).collect();
        assert!(
            partitions.len() <= 1,
            "{device} spread over partitions {partitions:?}"
        );
        let seqs: Vec<usize> = rows.iter().map(|(_, s)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{device}: out of order or duplicated: {seqs:?}"
        );
        let have: BTreeSet<usize> = seqs.iter().copied().collect();
        let lost: Vec<_> = acked_seqs.difference(&have).collect();
        assert!(lost.is_empty(), "{device}: acknowledged but lost: {lost:?}");
        if device == "late" {
            late_acked = acked_seqs.len();
        }
    }
    assert_eq!(
        acked.len(),
        RUMQTTC_CLIENTS + MOSQUITTO_CLIENTS + usize::from(late_acked > 0)
    );
    eprintln!(
        "checked {} records; {} acknowledged, {late_acked} of them from the device still publishing at the kill",
        records.len(),
        acked.values().map(BTreeSet::len).sum::<usize>()
    );
}

fn qos2_publish(topic: &str, pkid: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut frame = vec![if dup { 0x3C } else { 0x34 }];
    frame.push((2 + topic.len() + 2 + payload.len()) as u8);
    frame.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(&pkid.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn expect(s: &mut std::net::TcpStream, wanted: [u8; 4]) {
    use std::io::Read;
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, wanted);
}

/// A QoS 2 PUBLISH re-sent (DUP) before its PUBREL gets its PUBREC again
/// but is appended once; after PUBREL the packet id is free for a new message.
#[test]
fn a_resent_qos2_publish_is_appended_once() {
    use std::io::Write;
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path()));
    let mut s = std::net::TcpStream::connect(gateway.mqtt()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let id = b"q2dev";
    let mut connect = vec![
        0x10,
        12 + id.len() as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        2,
        0,
        30,
    ];
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id);
    s.write_all(&connect).unwrap();
    expect(&mut s, [0x20, 2, 0, 0]);
    let topic = "devices/q2dev/telemetry";
    s.write_all(&qos2_publish(topic, 5, b"7", false)).unwrap();
    expect(&mut s, [0x50, 2, 0, 5]);
    s.write_all(&qos2_publish(topic, 5, b"7", true)).unwrap();
    expect(&mut s, [0x50, 2, 0, 5]);
    s.write_all(&[0x62, 2, 0, 5]).unwrap();
    expect(&mut s, [0x70, 2, 0, 5]);
    s.write_all(&qos2_publish(topic, 5, b"8", false)).unwrap();
    expect(&mut s, [0x50, 2, 0, 5]);
    s.write_all(&[0x62, 2, 0, 5, 0xE0, 0]).unwrap();
    expect(&mut s, [0x70, 2, 0, 5]);
    gateway.stop();
    let payloads: Vec<_> = dump(&harness::data_dir(dir.path()))
        .iter()
        .filter(|r| header(r, "mqtt.client_id") == Some("q2dev"))
        .map(|r| r["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(payloads, ["7", "8"]);
}
