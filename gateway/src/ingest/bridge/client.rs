//! rumqttc's 3.1.1 and 5 clients behind one shape: what the link needs of
//! them (events in, acknowledgements and subscriptions out).
//!
//! rumqttc 0.24 (and its main branch) answers a PUBREL for a packet id it
//! does not hold with an error that drops the connection (bytebeamio/rumqtt
//! issue 664). Its QoS 2 state is cleared at every reconnect, so after any
//! lost link or restart the broker's first re-sent PUBREL would drop the link
//! again, forever. After each CONNACK we therefore mark every packet id as
//! held ([`Events::hold_every_packet_id`]): an unknown PUBREL then gets its
//! PUBCOMP, which is what MQTT 5 prescribes and harmless here (the broker
//! only sends PUBREL after our PUBREC, and we send that only once the
//! message is durable).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{mqttbytes::v4 as p4, QoS};

use super::config::{BrokerConfig, Protocol};
use super::BridgeError;

/// A publish from the broker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// What the link learns from one poll.
#[derive(Debug)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    Publish(Delivery),
    /// PUBREL: the broker has our PUBREC for this id.
    Released(u16),
    /// SUBACK; the filters the broker refused, by index.
    Subscribed {
        refused: Vec<usize>,
    },
    /// The PUBACK or PUBREC handed over with [`Client::try_ack`] was
    /// written to the socket (with every ack written ahead of it).
    AckSent,
    /// Our DISCONNECT (and everything queued before it) was written.
    DisconnectSent,
    Other,
}

/// Why a link went down.
#[derive(Debug, Clone)]
pub struct LinkError {
    /// The broker refused our credentials (retried slowly).
    pub auth: bool,
    pub message: String,
}

pub enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos_of(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5_of(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS as Q;
    match qos {
        0 => Q::AtMostOnce,
        1 => Q::AtLeastOnce,
        _ => Q::ExactlyOnce,
    }
}

/// The client and its event loop for `broker`, not yet connected.
pub fn build(
    broker: &BrokerConfig,
    password: Option<String>,
) -> Result<(Client, Events), BridgeError> {
    let (host, port) = broker.host_port().ok_or_else(|| BridgeError::Config {
        broker: broker.name.clone(),
        message: format!("address {:?} is not host:port", broker.address),
    })?;
    let transport = transport(broker)?;
    let keep_alive = Duration::from_secs(u64::from(broker.keep_alive_s));
    // What goes through rumqttc's request queue: one SUBSCRIBE per
    // connection, at most one ack at a time (the wake-up, see `acker.rs`;
    // the others are written into its buffer directly) and one DISCONNECT.
    let capacity = 8;
    let credentials = broker
        .username
        .clone()
        .map(|u| (u, password.unwrap_or_default()));
    Ok(match broker.protocol {
        Protocol::V4 => {
            let mut o = rumqttc::MqttOptions::new(&broker.client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(broker.max_packet_bytes, 64 << 10)
                .set_transport(transport);
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            let (client, events) = rumqttc::AsyncClient::new(o, capacity);
            (Client::V4(client), Events::V4(Box::new(events)))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&broker.client_id, host, port);
            let mut props = p5::ConnectProperties::new();
            props.session_expiry_interval = Some(broker.session_expiry_s);
            props.receive_maximum = Some(broker.max_inflight);
            props.max_packet_size = Some(broker.max_packet_bytes as u32);
            o.set_keep_alive(keep_alive)
                .set_clean_start(false)
                .set_manual_acks(true)
                .set_connect_properties(props)
                .set_transport(transport);
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(o, capacity);
            (Client::V5(client), Events::V5(Box::new(events)))
        }
    })
}

fn transport(broker: &BrokerConfig) -> Result<rumqttc::Transport, BridgeError> {
    let Some(tls) = &broker.tls else {
        return Ok(rumqttc::Transport::tcp());
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| BridgeError::Config {
            broker: broker.name.clone(),
            message: format!("reading {}: {e}", path.display()),
        })
    };
    let ca = read(&tls.ca_file)?;
    let client_auth = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        },
    ))
}

impl Client {
    /// Hands a PUBACK (QoS 1) or PUBREC (QoS 2) to the event loop without
    /// waiting (the caller holds the generation lock); an error if its
    /// queue is full.
    pub fn try_ack(&self, qos: u8, pkid: u16) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let mut p = p4::Publish::new("", qos_of(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = p5::Publish::new("", qos5_of(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a DISCONNECT: written after everything queued before it, so
    /// the acks written so far reach the broker. An error if the event
    /// loop is gone.
    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }

    /// Queues one SUBSCRIBE with every filter; false if the queue is full.
    pub fn try_subscribe(&self, subscriptions: &[super::config::Subscription]) -> bool {
        match self {
            Client::V4(c) => {
                let filters = subscriptions
                    .iter()
                    .map(|s| p4::SubscribeFilter::new(s.filter.clone(), qos_of(s.qos)));
                c.try_subscribe_many(filters).is_ok()
            }
            Client::V5(c) => {
                let filters = subscriptions.iter().map(|s| {
                    let mut f = p5::Filter::new(s.filter.clone(), qos5_of(s.qos));
                    // The broker keeps our subscriptions in the session:
                    // re-subscribing must not re-send its retained messages.
                    f.retain_forward_rule = p5::RetainForwardRule::OnNewSubscribe;
                    f
                });
                c.try_subscribe_many(filters).is_ok()
            }
        }
    }
}

impl Events {
    /// The next event; `Err` when the link went down (the next call
    /// reconnects).
    pub async fn poll(&mut self) -> Result<Event, LinkError> {
        match self {
            Events::V4(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => Ok(event_v4(packet)),
                Ok(rumqttc::Event::Outgoing(out)) => Ok(outgoing(&out)),
                Err(e) => Err(error_v4(e)),
            },
            Events::V5(e) => match e.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => Ok(event_v5(packet)),
                Ok(rumqttc::v5::Event::Outgoing(out)) => Ok(outgoing(&out)),
                Err(e) => Err(error_v5(e)),
            },
        }
    }

    /// Writes PUBACKs (QoS 1) and PUBRECs (QoS 2) for `acks`, in order,
    /// into the event loop's write buffer: they go out with its next
    /// flush, which follows every read and every queued request. Call it
    /// only while connected (right after a poll returned an event).
    pub fn write_acks(&mut self, acks: &[(u8, u16)]) -> Result<(), LinkError> {
        match self {
            Events::V4(e) => {
                let queued = e.state.events.len();
                for &(qos, pkid) in acks {
                    let request = if qos == 1 {
                        rumqttc::Request::PubAck(p4::PubAck::new(pkid))
                    } else {
                        rumqttc::Request::PubRec(p4::PubRec::new(pkid))
                    };
                    e.state
                        .handle_outgoing_packet(request)
                        .map_err(|e| local_error(&e))?;
                }
                // Their "outgoing" events say nothing the link needs.
                e.state.events.truncate(queued);
            }
            Events::V5(e) => {
                let queued = e.state.events.len();
                for &(qos, pkid) in acks {
                    let request = if qos == 1 {
                        rumqttc::v5::Request::PubAck(p5::PubAck::new(pkid, None))
                    } else {
                        rumqttc::v5::Request::PubRec(p5::PubRec::new(pkid, None))
                    };
                    e.state
                        .handle_outgoing_packet(request)
                        .map_err(|e| local_error(&e))?;
                }
                e.state.events.truncate(queued);
            }
        }
        Ok(())
    }

    /// Drops the connection (if any) and everything rumqttc still holds
    /// for it: the requests queued, the bytes in its write buffer (acks
    /// [`Events::write_acks`] put there, or the wake-up, whose flush
    /// failed) and the events it read but had not handed over. rumqttc's
    /// `clean` keeps the last two, so the next connection's first flush
    /// would send the old one's acks and the link would act on its reads.
    /// An ack must not reach the next connection: there its packet id may
    /// name no message in flight, and Mosquitto answers a PUBREC for an
    /// unknown id with a PUBREL anyway, which ends our hold on that id
    /// (`inflight.rs`) before the broker sends the message again, so it
    /// would be appended twice.
    pub fn forget_connection(&mut self) {
        match self {
            Events::V4(e) => {
                e.clean();
                e.pending.clear();
                e.state.write.clear();
                e.state.events.clear();
            }
            Events::V5(e) => {
                e.clean();
                e.pending.clear();
                e.state.write.clear();
                e.state.events.clear();
            }
        }
    }

    /// Marks every packet id as a held QoS 2 receipt (see the module doc).
    pub fn hold_every_packet_id(&mut self) {
        match self {
            Events::V4(e) => {
                let queued = e.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = p4::Publish::new("", QoS::ExactlyOnce, Vec::new());
                    p.pkid = pkid;
                    let _ = e.state.handle_incoming_packet(p4::Packet::Publish(p));
                }
                e.state.events.truncate(queued);
            }
            Events::V5(e) => {
                let queued = e.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = p5::Publish::new("h", qos5_of(2), Vec::new(), None);
                    p.pkid = pkid;
                    let _ = e.state.handle_incoming_packet(p5::Packet::Publish(p));
                }
                e.state.events.truncate(queued);
            }
        }
    }
}

fn outgoing(out: &rumqttc::Outgoing) -> Event {
    match out {
        rumqttc::Outgoing::PubAck(_) | rumqttc::Outgoing::PubRec(_) => Event::AckSent,
        rumqttc::Outgoing::Disconnect => Event::DisconnectSent,
        _ => Event::Other,
    }
}

fn local_error(e: &dyn std::fmt::Display) -> LinkError {
    LinkError {
        auth: false,
        message: format!("writing acks: {e}"),
    }
}

fn event_v4(packet: p4::Packet) -> Event {
    match packet {
        p4::Packet::ConnAck(ack) => Event::Connected {
            session_present: ack.session_present,
        },
        p4::Packet::Publish(p) => Event::Publish(Delivery {
            topic: Bytes::from(p.topic.into_bytes()),
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            retain: p.retain,
            user_properties: Vec::new(),
        }),
        p4::Packet::PubRel(rel) => Event::Released(rel.pkid),
        p4::Packet::SubAck(ack) => Event::Subscribed {
            refused: refused(
                ack.return_codes
                    .iter()
                    .map(|c| matches!(c, p4::SubscribeReasonCode::Success(_))),
            ),
        },
        _ => Event::Other,
    }
}

fn event_v5(packet: p5::Packet) -> Event {
    match packet {
        p5::Packet::ConnAck(ack) => Event::Connected {
            session_present: ack.session_present,
        },
        p5::Packet::Publish(p) => Event::Publish(Delivery {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            retain: p.retain,
            user_properties: p.properties.map(|p| p.user_properties).unwrap_or_default(),
        }),
        p5::Packet::PubRel(rel) => Event::Released(rel.pkid),
        p5::Packet::SubAck(ack) => Event::Subscribed {
            refused: refused(
                ack.return_codes
                    .iter()
                    .map(|c| matches!(c, p5::SubscribeReasonCode::Success(_))),
            ),
        },
        _ => Event::Other,
    }
}

fn refused(granted: impl Iterator<Item = bool>) -> Vec<usize> {
    granted
        .enumerate()
        .filter(|(_, ok)| !ok)
        .map(|(i, _)| i)
        .collect()
}

fn error_v4(e: rumqttc::ConnectionError) -> LinkError {
    use p4::ConnectReturnCode as C;
    let auth = matches!(
        e,
        rumqttc::ConnectionError::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized)
    );
    LinkError {
        auth,
        message: e.to_string(),
    }
}

fn error_v5(e: rumqttc::v5::ConnectionError) -> LinkError {
    use p5::ConnectReturnCode as C;
    let auth = matches!(
        e,
        rumqttc::v5::ConnectionError::ConnectionRefused(
            C::BadUserNamePassword | C::NotAuthorized | C::Banned | C::BadAuthenticationMethod
        )
    );
    LinkError {
        auth,
        message: e.to_string(),
    }
}
