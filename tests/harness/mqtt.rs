//! MQTT publishers built on rumqttc.

use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Publishes `devices/<device>/temp` with payloads `<device>:<seq>` for every
/// seq, QoS 1, and returns once every one is acknowledged.
pub fn publish(port: u16, device: &str, seqs: std::ops::Range<usize>) {
    let mut options = MqttOptions::new(device, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut connection) = Client::new(options, 256);
    let total = seqs.len();
    let topic = format!("devices/{device}/temp");
    let device = device.to_string();
    let sender = std::thread::spawn(move || {
        for seq in seqs {
            client
                .publish(&topic, QoS::AtLeastOnce, false, format!("{device}:{seq}"))
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == total {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("mqtt publish: {e}"),
        }
    }
    let _ = sender.join().unwrap().disconnect();
}
