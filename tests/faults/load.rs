//! MQTT load generators for the fault campaigns: each device publishes
//! ledger messages (QoS 1 or 2) until its connection dies or it is told to
//! stop, and records every acknowledgement in the ledger.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use super::ledger::{self, Ledger};

/// Where and how a device connects.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// A pause between publishes (a sensor's rate), or none (flat out).
    pub pace: Option<Duration>,
}

/// One device: publishes ledger messages until its connection dies, the n-th
/// outgoing PUBLISH being the n-th message sent (rumqttc keeps request
/// order). PUBACK, or PUBREC for QoS 2, marks the message acknowledged: the
/// gateway sends either only once the record is durable.
pub async fn device(
    target: Target,
    id: String,
    qos: QoS,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut options = MqttOptions::new(id.clone(), target.host.clone(), target.port);
    if let Some((user, password)) = &target.credentials {
        options.set_credentials(user, password);
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(16);
    let (client, mut events) = AsyncClient::new(options, 16);
    let queued: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let publisher = tokio::spawn({
        let (ledger, queued, id) = (ledger.clone(), queued.clone(), id.clone());
        let pace = target.pace;
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let topic = format!("devices/{id}/telemetry");
            while !stop.load(Ordering::Relaxed) {
                let message = ledger.send(&id, rng.usize(ledger::MIN_PAYLOAD_BYTES..400));
                queued.lock().unwrap().push_back(message.seq);
                if client
                    .publish(&topic, qos, false, message.payload)
                    .await
                    .is_err()
                {
                    break;
                }
                if let Some(pace) = pace {
                    tokio::time::sleep(pace).await;
                }
            }
            let _ = client.disconnect().await;
        }
    });
    let mut in_flight = HashMap::new();
    loop {
        let acked = match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let seq = queued.lock().unwrap().pop_front();
                in_flight.insert(pkid, seq.expect("a publish the ledger saw"));
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => Some(ack.pkid),
            Ok(Event::Incoming(Packet::PubRec(rec))) => Some(rec.pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => None,
            Err(_) => break,
        };
        if let Some(seq) = acked.and_then(|pkid| in_flight.remove(&pkid)) {
            ledger.ack(&id, seq);
        }
    }
    publisher.abort();
}
