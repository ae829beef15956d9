//! MQTT over WebSockets against the real binary, with a real client: the
//! Eclipse Paho Python client over `transport="websockets"` (subprotocol
//! `mqtt`), on `ws_listen` and on `[mqtt.wss]` with a test CA; raw sockets
//! for what a well-behaved client never sends.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{dump, wait_for, Gateway};

/// The Paho client, driven by one JSON argument:
/// `{"port", "id", "v5", "ca"?, "user"?, "password"?, "pub": [[topic, payload]]?, "sub": topic?}`.
/// Prints one JSON line per event: `connack`, `puback` (with the v5 reason
/// code), `suback`, `message`.
const CLIENT: &str = r#"
import json, ssl, sys, threading
import paho.mqtt.client as mqtt
cfg = json.loads(sys.argv[1])
out = lambda **kw: print(json.dumps(kw), flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg["id"],
                protocol=mqtt.MQTTv5 if cfg["v5"] else mqtt.MQTTv311, transport="websockets")
c.ws_set_options(path="/mqtt")
if cfg.get("ca"):
    c.tls_set(ca_certs=cfg["ca"])
if cfg.get("user"):
    c.username_pw_set(cfg["user"], cfg.get("password"))
done = threading.Event()
def on_connect(c, u, flags, rc, props):
    out(event="connack", rc=rc.value)
    if rc.is_failure:
        done.set()
    elif cfg.get("sub"):
        c.subscribe(cfg["sub"], qos=1)
    else:
        for topic, payload in cfg["pub"]:
            c.publish(topic, payload, qos=1)
def on_publish(c, u, mid, rc, props):
    out(event="puback", mid=mid, rc=rc.value)
    if mid == len(cfg.get("pub", [])):
        done.set()
c.on_connect = on_connect
c.on_publish = on_publish
c.on_subscribe = lambda c, u, mid, rcs, props: out(event="suback", rc=[r.value for r in rcs])
c.on_message = lambda c, u, m: out(event="message", topic=m.topic, payload=m.payload.decode())
c.on_disconnect = lambda c, u, flags, rc, props: done.set()
c.connect("localhost" if cfg.get("ca") else "127.0.0.1", cfg["port"], keepalive=30)
c.loop_start()
done.wait(float(cfg.get("seconds", 20)))
c.disconnect()
c.loop_stop()
"#;

/// A running client and the JSON lines it printed so far.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Client {
    fn start(args: serde_json::Value) -> Client {
        let mut child = Command::new("python3")
            .args(["-c", CLIENT, &args.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with paho-mqtt (tests/run installs it)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Client { child, lines }
    }

    /// Runs a client to its end; its events.
    fn run(args: serde_json::Value) -> Vec<serde_json::Value> {
        let mut client = Client::start(args);
        let status = client.child.wait().unwrap();
        assert!(status.success(), "the client failed: {status}");
        // The reader thread sees EOF right after the exit.
        std::thread::sleep(Duration::from_millis(50));
        client.events()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    fn wait_for_event(&self, what: &str, event: &str) -> serde_json::Value {
        wait_for(what, Duration::from_secs(20), || {
            self.events().iter().any(|e| e["event"] == event)
        });
        self.events()
            .into_iter()
            .find(|e| e["event"] == event)
            .unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of<'a>(events: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "{}[mqtt]\nlisten = \"127.0.0.1:0\"\nws_listen = \"127.0.0.1:0\"\nanonymous_publish_acl = [\"#\"]\n{extra}",
        harness::data_dir_line(dir)
    )
}

fn ws_port(gateway: &Gateway) -> u16 {
    gateway
        .addr("mqtt-ws")
        .expect("mqtt-ws in the ready line")
        .port()
}

fn payloads(dir: &Path) -> Vec<String> {
    dump(&harness::data_dir(dir))
        .iter()
        .map(|r| r["payload"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn publish_over_websocket_is_acknowledged_once_in_the_log() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), ""));
    let port = ws_port(&gateway);
    for (v5, payload) in [(false, "over-ws-311"), (true, "over-ws-5")] {
        let events = Client::run(serde_json::json!({
            "port": port, "id": format!("ws-{v5}"), "v5": v5, "pub": [["sensors/ws", payload]],
        }));
        assert_eq!(of(&events, "connack")[0]["rc"], 0, "{events:?}");
        assert_eq!(of(&events, "puback").len(), 1, "{events:?}");
        assert_eq!(of(&events, "puback")[0]["rc"], 0, "{events:?}");
        // PUBACK leaves after the durable append: the record is there now.
        assert!(payloads(dir.path()).contains(&payload.to_string()));
    }
    assert_eq!(payloads(dir.path()), ["over-ws-311", "over-ws-5"]);
}

#[test]
fn websocket_subscriber_gets_live_messages_published_over_tcp() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), ""));
    let sub = Client::start(serde_json::json!({
        "port": ws_port(&gateway), "id": "dashboard", "v5": true, "sub": "sensors/#", "seconds": 30,
    }));
    sub.wait_for_event("the SUBACK over ws", "suback");
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gateway.port().to_string()])
        .args(["-q", "1", "-t", "sensors/temp", "-m", "21.5"])
        .status()
        .unwrap();
    assert!(status.success());
    let message = sub.wait_for_event("the live message over ws", "message");
    assert_eq!(message["topic"], "sensors/temp");
    assert_eq!(message["payload"], "21.5");
}

/// Sends an upgrade request with `protocol_line` (may be empty); the status
/// line of the answer.
fn upgrade_status(addr: SocketAddr, protocol_line: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol_line}\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    status.trim_end().to_string()
}

#[test]
fn an_upgrade_without_the_mqtt_subprotocol_is_refused() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), ""));
    let addr = gateway.addr("mqtt-ws").unwrap();
    assert_eq!(upgrade_status(addr, ""), "HTTP/1.1 400 Bad Request");
    assert_eq!(
        upgrade_status(addr, "Sec-WebSocket-Protocol: chat\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        upgrade_status(addr, "Sec-WebSocket-Protocol: mqtt\r\n"),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert!(gateway
        .stderr()
        .contains("does not offer the WebSocket subprotocol"));
}

#[test]
fn a_frame_longer_than_the_limit_is_closed_with_1009_before_its_payload() {
    let dir = harness::temp_dir();
    let gateway = Gateway::start(
        dir.path(),
        &config(dir.path(), "max_payload_bytes = 1024\n"),
    );
    let mut stream = TcpStream::connect(gateway.addr("mqtt-ws").unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .unwrap();
    // A binary frame that says 1 GiB follows; none of it is sent.
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&header).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &answer[head_end..],
        [0x88, 0x02, 0x03, 0xf1],
        "a close frame, 1009"
    );
}

#[test]
fn websocket_clients_meet_the_same_passwords_and_acls() {
    let dir = harness::temp_dir();
    let hash = harness::hash_password("dash-pw");
    let users = format!(
        "allow_anonymous = false\n[[mqtt.users]]\nusername = \"dash\"\npassword_hash = \"{hash}\"\npublish_acl = [\"dash/#\"]\nsubscribe_acl = [\"dash/#\"]\n"
    );
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &users));
    let port = ws_port(&gateway);
    let events = Client::run(serde_json::json!({
        "port": port, "id": "dash-1", "v5": true, "user": "dash", "password": "dash-pw",
        "pub": [["dash/x", "allowed"], ["other/x", "refused"]],
    }));
    let acks: Vec<_> = of(&events, "puback")
        .iter()
        .map(|e| e["rc"].clone())
        .collect();
    assert_eq!(acks, [0, 0x87], "{events:?}");
    let sub = Client::start(serde_json::json!({
        "port": port, "id": "dash-2", "v5": true, "user": "dash", "password": "dash-pw",
        "sub": "other/#", "seconds": 5,
    }));
    let suback = sub.wait_for_event("the SUBACK", "suback");
    assert_eq!(suback["rc"], serde_json::json!([0x87]), "{suback:?}");
    drop(sub);
    // Refusals last: failed logins slow down their address (gate.rs).
    let anonymous = Client::run(serde_json::json!({
        "port": port, "id": "anon", "v5": true, "pub": [["dash/x", "no"]], "seconds": 5,
    }));
    assert_ne!(of(&anonymous, "connack")[0]["rc"], 0, "{anonymous:?}");
    let wrong = Client::run(serde_json::json!({
        "port": port, "id": "dash-1", "v5": true, "user": "dash", "password": "nope",
        "pub": [["dash/x", "no"]], "seconds": 5,
    }));
    // Refused (0x86), or slowed down after the anonymous attempt: never in.
    assert!(
        of(&wrong, "connack").iter().all(|e| e["rc"] != 0),
        "{wrong:?}"
    );
    assert!(of(&wrong, "puback").is_empty(), "{wrong:?}");
    assert_eq!(payloads(dir.path()), ["allowed"]);
}

#[test]
fn wss_with_a_test_ca_carries_mqtt() {
    let dir = harness::temp_dir();
    harness::make_certs(dir.path());
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let wss = format!(
        "[mqtt.wss]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n",
        p("server.pem"),
        p("server.key")
    );
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &wss));
    let port = gateway
        .addr("mqtt-wss")
        .expect("mqtt-wss in the ready line")
        .port();
    let events = Client::run(serde_json::json!({
        "port": port, "id": "wss-1", "v5": false, "ca": p("ca.pem"), "pub": [["sensors/wss", "sealed"]],
    }));
    assert_eq!(of(&events, "puback").len(), 1, "{events:?}");
    assert_eq!(payloads(dir.path()), ["sealed"]);
}

#[test]
fn anonymous_websockets_off_loopback_are_refused_by_config_check() {
    let dir = harness::temp_dir();
    let path = harness::write_config(
        dir.path(),
        &format!(
            "{}[mqtt]\nws_listen = \"0.0.0.0:8080\"\n",
            harness::data_dir_line(dir.path())
        ),
    );
    let out = harness::tidewell(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    );
    let (stdout, stderr) = harness::text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("ws_listen = 0.0.0.0:8080 is not a loopback address"),
        "{stdout}{stderr}"
    );
}
