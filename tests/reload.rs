//! Reload on SIGHUP against the real binary: while a device publishes at
//! QoS 1, a password is rotated, a user revoked, the TLS certificate
//! replaced and a quota changed; no acknowledged message is lost and the
//! unchanged device's connection stays up. A broken file changes nothing.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use harness::{dump, wait_for, Gateway};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const LIMIT: Duration = Duration::from_secs(30);

struct Users {
    ann: String,
    bob: Option<String>,
    cal: String,
}

fn config(dir: &Path, users: &Users, certs: &str, quota: &str) -> String {
    let p = |name: &str| dir.join(certs).join(name).to_str().unwrap().to_string();
    let mut text = format!(
        "{data_dir}log_level = \"info\"\n[topics.ingest]\n{quota}\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\nallow_anonymous = false\n\
         [mqtt.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        p("server.pem"),
        p("server.key"),
        data_dir = harness::data_dir_line(dir),
    );
    let mut user = |name: &str, hash: &str| {
        text.push_str(&format!(
            "[[mqtt.users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\npublish_acl = [\"devices/{{client_id}}/#\"]\n"
        ));
    };
    user("ann", &users.ann);
    if let Some(bob) = &users.bob {
        user("bob", bob);
    }
    user("cal", &users.cal);
    text
}

fn hup(gateway: &Gateway) {
    let out = Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Sends SIGHUP and waits for the gateway's verdict line (the n-th of its kind).
fn reload(gateway: &Gateway, verdict: &str, n: usize) {
    hup(gateway);
    wait_for(verdict, LIMIT, || {
        gateway
            .stderr()
            .lines()
            .iter()
            .filter(|l| l.starts_with(verdict))
            .count()
            >= n
    });
}

fn mosquitto_pub(port: u16, extra: &[&str], user: &str, password: &str, id: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(extra)
        .args(["-u", user, "-P", password, "-i", id])
        .args(["-t", &format!("devices/{id}/t"), "-m", id])
        .output()
        .unwrap()
}

/// A device publishing at QoS 1 on one connection until stopped: counts the
/// PUBACKs and every connection error (there must be none).
struct Device {
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Device {
    fn start(port: u16, id: &str, user: &str, password: &str) -> Device {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(user, password);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(o, 64);
        let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e, s) = (acked.clone(), errors.clone(), stop.clone());
        let events = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        e.fetch_add(1, Ordering::SeqCst);
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        let (s, topic) = (stop.clone(), format!("devices/{id}/t"));
        let publisher = std::thread::spawn(move || {
            let mut seq = 0u64;
            while !s.load(Ordering::SeqCst) {
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, format!("{seq}"))
                    .is_err()
                {
                    return;
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = client.disconnect();
        });
        Device {
            acked,
            errors,
            stop,
            threads: vec![events, publisher],
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let acked = self.acked.clone();
        for t in self.threads {
            t.join().unwrap();
        }
        acked.load(Ordering::SeqCst)
    }
}

#[test]
fn sighup_rotates_revokes_replaces_the_certificate_and_changes_a_quota_without_losing_anything() {
    harness::mosquitto::require_clients();
    let dir = harness::temp_dir();
    std::fs::create_dir_all(dir.path().join("old")).unwrap();
    std::fs::create_dir_all(dir.path().join("new")).unwrap();
    harness::make_certs(&dir.path().join("old"));
    harness::make_certs(&dir.path().join("new"));
    let before = Users {
        ann: harness::hash_password("ann-1"),
        bob: Some(harness::hash_password("bob-1")),
        cal: harness::hash_password("cal-1"),
    };
    let path = harness::write_config(dir.path(), &config(dir.path(), &before, "old", ""));
    let gateway = harness::Launch::config_file(dir.path(), &path).start();
    let port = gateway.port();
    let tls_port = gateway.mqtts().unwrap().port();
    let cafile = |certs: &str| {
        dir.path()
            .join(certs)
            .join("ca.pem")
            .to_str()
            .unwrap()
            .to_string()
    };

    let cal = Device::start(port, "cal-1", "cal", "cal-1");
    let bob = Device::start(port, "bob-1", "bob", "bob-1");
    wait_for("both devices acknowledged", LIMIT, || {
        cal.acked() > 50 && bob.acked() > 50
    });

    let after = Users {
        ann: harness::hash_password("ann-2"),
        bob: None,
        cal: before.cal.clone(),
    };
    let quota = "retention_bytes = 50000000";
    std::fs::write(&path, config(dir.path(), &after, "new", quota)).unwrap();
    reload(&gateway, "tidewell: reloaded", 1);

    // The rotated password: the old one is refused, the new one accepted.
    assert!(!mosquitto_pub(port, &[], "ann", "ann-1", "ann-1")
        .status
        .success());
    let ok = mosquitto_pub(port, &[], "ann", "ann-2", "ann-4");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The revoked user: its connection was closed, and it cannot come back.
    wait_for("bob's connection closed", LIMIT, || bob.errors() > 0);
    let bob_acked = bob.stop();
    assert!(!mosquitto_pub(port, &[], "bob", "bob-1", "bob-2")
        .status
        .success());
    // New TLS connections see the new certificate (the old CA no longer verifies it).
    let (old, new) = (cafile("old"), cafile("new"));
    let old_ca = ["--cafile", old.as_str()];
    let new_ca = ["--cafile", new.as_str()];
    assert!(!mosquitto_pub(tls_port, &old_ca, "ann", "ann-2", "ann-2")
        .status
        .success());
    let ok = mosquitto_pub(tls_port, &new_ca, "ann", "ann-2", "ann-2");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The quota.
    assert_eq!(gateway.metric("tidewell_topic_quota_bytes"), 50_000_000.0);

    // A broken file: refused, everything keeps running as it was.
    let acked_then = cal.acked();
    std::fs::write(&path, "data_dir = 5\n[mqtt]\nlisten = \"nowhere\"\n").unwrap();
    reload(&gateway, "tidewell: reload refused", 1);
    assert!(gateway.stderr_contains("nothing changed"));
    let ok = mosquitto_pub(port, &[], "ann", "ann-2", "ann-3");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(gateway.metric("tidewell_topic_quota_bytes"), 50_000_000.0);
    wait_for("cal still publishing", LIMIT, || {
        cal.acked() > acked_then + 50
    });

    assert_eq!(
        cal.errors(),
        0,
        "the unchanged user's connection was dropped"
    );
    let cal_acked = cal.stop();
    gateway.stop();
    let records = dump(&harness::data_dir(dir.path()));
    let count = |id: &str| {
        records
            .iter()
            .filter(|r| r["key"].as_str().is_some_and(|k| k.contains(id)))
            .count() as u64
    };
    assert!(
        count("cal-1") >= cal_acked,
        "cal: {} of {cal_acked} acked",
        count("cal-1")
    );
    assert!(
        count("bob-1") >= bob_acked,
        "bob: {} of {bob_acked} acked",
        count("bob-1")
    );
}

/// `curl` against an HTTPS port: `Some(http status)`, or `None` when the
/// TLS handshake failed (the CA does not verify the certificate).
fn curl(port: u16, ca: &Path, args: &[&str]) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .arg(format!("https://127.0.0.1:{port}/v1/topics/ingest"))
        .output()
        .expect("curl (apt-get install curl)");
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout).trim().parse().ok(),
        _ => None,
    }
}

/// HTTP ingest shares the MQTT users and has its own certificate, as does
/// `[mqtt.wss]`: a reload rotates a password, revokes a user and replaces
/// both certificates for new connections.
#[test]
fn sighup_applies_http_ingest_users_and_the_https_and_wss_certificates() {
    let dir = harness::temp_dir();
    for certs in ["old", "new"] {
        std::fs::create_dir_all(dir.path().join(certs)).unwrap();
        harness::make_certs(&dir.path().join(certs));
    }
    let p = |certs: &str, name: &str| dir.path().join(certs).join(name);
    let config = |ann: &str, bob: Option<&str>, certs: &str| {
        let mut text = format!(
            "{data_dir}[mqtt]\nlisten = \"127.0.0.1:0\"\nallow_anonymous = false\n\
             [mqtt.wss]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [http_ingest]\nenabled = true\nlisten = \"127.0.0.1:0\"\nallow_anonymous = false\n\
             [http_ingest.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n",
            p(certs, "server.pem"),
            p(certs, "server.key"),
            p(certs, "server.pem"),
            p(certs, "server.key"),
            data_dir = harness::data_dir_line(dir.path()),
        );
        for (name, hash) in [("ann", Some(ann)), ("bob", bob)] {
            if let Some(hash) = hash {
                text.push_str(&format!(
                    "[[mqtt.users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\npublish_acl = [\"#\"]\n"
                ));
            }
        }
        text
    };
    let (ann1, ann2, bob1) = (
        harness::hash_password("ann-1"),
        harness::hash_password("ann-2"),
        harness::hash_password("bob-1"),
    );
    let path = harness::write_config(dir.path(), &config(&ann1, Some(&bob1), "old"));
    let gateway = harness::Launch::config_file(dir.path(), &path).start();
    let https = gateway.addr("https_ingest").expect("https_ingest").port();
    let wss = gateway.addr("mqtt-wss").expect("mqtt-wss").port();
    let post = |ca: &str, user: &str| {
        let data = [
            "-u",
            user,
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"t\":1}",
        ];
        curl(https, &p(ca, "ca.pem"), &data)
    };
    assert_eq!(post("old", "ann:ann-1"), Some(200));
    assert_eq!(post("old", "bob:bob-1"), Some(200));
    assert!(
        curl(wss, &p("old", "ca.pem"), &[]).is_some(),
        "wss under the old CA"
    );

    std::fs::write(&path, config(&ann2, None, "new")).unwrap();
    reload(&gateway, "tidewell: reloaded", 1);
    // New connections get the new certificates: the old CA no longer verifies them.
    assert_eq!(post("old", "ann:ann-2"), None);
    assert_eq!(curl(wss, &p("old", "ca.pem"), &[]), None);
    assert!(
        curl(wss, &p("new", "ca.pem"), &[]).is_some(),
        "wss under the new CA"
    );
    // The rotated password and the revoked user (the good login first: a
    // refused one slows its address down, answered 429 for a while).
    assert_eq!(post("new", "ann:ann-2"), Some(200));
    assert_eq!(post("new", "bob:bob-1"), Some(401));
    let old_password = post("new", "ann:ann-1");
    assert!(
        matches!(old_password, Some(401 | 429)),
        "the old password: {old_password:?}"
    );
    gateway.stop();
    let records = dump(&harness::data_dir(dir.path()));
    assert_eq!(records.len(), 3, "three POSTs answered 200: {records:?}");
}
