//! Wills: the message a client leaves at CONNECT, published for it when the
//! connection ends without a normal DISCONNECT (or with 0x04, "disconnect
//! with will message").
//!
//! A will is published like any publish: appended to the log and, once
//! durable, handed to live subscribers and, when retained, to the retained
//! store. Nobody is left to acknowledge it to, so a failed append is logged
//! and counted, not retried. An MQTT 5 will delay interval postpones it; a
//! new connection with the same client id before then cancels it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttd::protocol::{LastWill, LastWillProperties};
use tokio::task::AbortHandle;

use super::message::{Live, Props};
use super::stats::MqttStats;
use super::Shared;
use crate::log;

/// A will as CONNECT set it.
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Live,
    /// MQTT 5 will delay interval (0: publish at once).
    pub delay_s: u32,
}

impl Will {
    pub fn from_connect(will: LastWill, props: Option<LastWillProperties>, conn: u64) -> Will {
        let props = props.unwrap_or(LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
        Will {
            message: Live {
                topic: will.topic,
                payload: will.message,
                qos: will.qos as u8,
                retain: will.retain,
                props: Props {
                    payload_format: props.payload_format_indicator,
                    content_type: props.content_type,
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    expiry_s: props.message_expiry_interval,
                    user: props.user_properties,
                },
                received_ms: 0,
                origin: conn,
                shared_to: Vec::new(),
            },
            delay_s: props.delay_interval.unwrap_or(0),
        }
    }
}

/// Wills waiting out their delay, by client id.
#[derive(Default)]
pub struct Delayed(Mutex<HashMap<String, AbortHandle>>);

impl Delayed {
    /// A client with this id connected again: its delayed will is not sent.
    pub fn cancel(&self, client_id: &str) {
        let mut delayed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = delayed.remove(client_id) {
            task.abort();
        }
    }

    fn insert(&self, client_id: String, task: AbortHandle) {
        let mut delayed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = delayed.insert(client_id, task) {
            old.abort();
        }
    }

    fn remove(&self, client_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(client_id);
    }
}

/// Publishes `will` for `client_id` (after its delay, capped at
/// `session_expiry_s`: a will is sent at the latest when its session ends).
pub fn publish(shared: &Arc<Shared>, client_id: &str, will: Will, session_expiry_s: u32) {
    let delay_s = will.delay_s.min(session_expiry_s);
    let task = tokio::spawn({
        let (shared, client_id) = (shared.clone(), client_id.to_string());
        async move {
            if delay_s > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(delay_s))).await;
                shared.wills.remove(&client_id);
            }
            append(&shared, &client_id, will.message).await;
        }
    });
    if delay_s > 0 {
        shared
            .wills
            .insert(client_id.to_string(), task.abort_handle());
    }
}

/// Appends the will and, once durable, delivers it.
async fn append(shared: &Arc<Shared>, client_id: &str, mut message: Live) {
    let Ok(topic) = std::str::from_utf8(&message.topic) else {
        return;
    };
    message.received_ms = log::now_ms();
    let router = shared.live.router();
    let dest = router.route(topic, client_id);
    let record = message.record(client_id, 0, dest.key);
    let _retained = message.retain.then(|| shared.retained.guard());
    let appended = match shared.log.append(dest.topic, dest.partition, vec![record]) {
        Ok(ticket) => ticket.await,
        Err(e) => Err(e),
    };
    match appended {
        Ok(_) => {
            MqttStats::inc(&shared.stats.publishes_appended);
            shared.durable(message);
        }
        Err(e) => {
            MqttStats::inc(&shared.stats.refused_log_error);
            tracing::warn!(client_id, "mqtt will not appended: {e}");
        }
    }
}
