//! MQTT load generators for the fault campaigns: each device publishes
//! ledger messages (QoS 1 or 2) until its connection dies or it is told to
//! stop, and records every acknowledgement in the ledger; a persistent
//! subscriber records every delivery in its [`Inbox`].
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
};

use super::ledger::{self, Inbox, Ledger};

/// How long a subscriber's CONNACK (and SUBACK) may take.
const SUBSCRIBER_SETUP: Duration = Duration::from_secs(60);

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

/// One connection of a persistent subscriber: MQTT 3.1.1, `clean_session =
/// 0`, QoS 1, client id `id` (the same in every connection, so the gateway
/// keeps its session). Records `session_present` of the CONNACK; with
/// `filter`, subscribes and records the SUBACK (with every device's next
/// sequence number, from which on the subscription holds), else relies on
/// the session's subscriptions. Returns once that is done, with the task
/// that records every PUBLISH received until the connection dies. rumqttc
/// PUBACKs a batch of packets as soon as it has read it, but hands out every
/// event of a batch before it touches the network again, so each delivery
/// the gateway saw acknowledged is recorded.
pub async fn subscriber(
    target: Target,
    id: &str,
    filter: Option<&str>,
    ledger: Arc<Ledger>,
    inbox: Arc<Inbox>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut options = MqttOptions::new(id, target.host.clone(), target.port);
    if let Some((user, password)) = &target.credentials {
        options.set_credentials(user, password);
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 16);
    let setup = subscriber_setup(&client, &mut events, filter, &ledger, &inbox);
    tokio::time::timeout(SUBSCRIBER_SETUP, setup)
        .await
        .map_err(|_| format!("subscriber {id}: no CONNACK/SUBACK within {SUBSCRIBER_SETUP:?}"))?
        .map_err(|e| format!("subscriber {id}: {e}"))?;
    Ok(tokio::spawn(async move {
        // The event loop ends when every client handle is gone: keep one.
        let _client = client;
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                inbox.deliver(&p.payload);
            }
        }
    }))
}

/// CONNACK, then SUBACK when subscribing.
async fn subscriber_setup(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: Option<&str>,
    ledger: &Ledger,
    inbox: &Inbox,
) -> Result<(), String> {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) =
            events.poll().await.map_err(|e| e.to_string())?
        {
            inbox.connected(ack.session_present);
            break;
        }
    }
    let Some(filter) = filter else {
        return Ok(());
    };
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match events.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes != [SubscribeReasonCode::Success(QoS::AtLeastOnce)] {
                    return Err(format!("SUBACK {:?} for {filter}", ack.return_codes));
                }
                inbox.subscribed(ledger.next_seqs());
                return Ok(());
            }
            Event::Incoming(Packet::Publish(p)) => inbox.deliver(&p.payload),
            _ => {}
        }
    }
}
