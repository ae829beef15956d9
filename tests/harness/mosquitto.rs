//! The Debian mosquitto clients, as a second, independent MQTT client.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// Fails clearly when the Debian mosquitto clients are missing (CI installs
/// them: `apt-get install -y mosquitto-clients mosquitto`).
pub fn require_clients() {
    let found = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "mosquitto_pub not found: apt-get install -y mosquitto-clients"
    );
}

/// Publishes `count` messages `reading 0`, `reading 1`, ... to `topic` at
/// QoS 1 as client `dev1`, one `mosquitto_pub` each; each must succeed.
pub fn publish(mqtt: SocketAddr, topic: &str, count: usize) {
    let (host, port) = (mqtt.ip().to_string(), mqtt.port().to_string());
    for i in 0..count {
        let status = Command::new("mosquitto_pub")
            .args(["-h", &host, "-p", &port, "-q", "1", "-i", "dev1"])
            .args(["-t", topic, "-m", &format!("reading {i}")])
            .status()
            .expect("mosquitto_pub (mosquitto-clients)");
        assert!(status.success());
    }
}
