//! A reconnect storm must not take the gateway down: a thousand devices
//! with valid credentials at once, a brute force of wrong passwords among
//! valid devices, a thousand sockets that never send CONNECT (or drip it a
//! byte at a time), and a descriptor limit that runs out. Raw MQTT 3.1.1
//! CONNECTs from tokio sockets, as device firmware sends them.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use harness::{Gateway, Launch};

/// A 3.1.1 CONNECT, clean session, with username and password when given.
fn connect_frame(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let flags = if login.is_some() { 0xC2 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    let mut field = |s: &str| {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    };
    field(client_id);
    if let Some((user, password)) = login {
        field(user);
        field(password);
    }
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

async fn dial(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Sends CONNECT and returns the CONNACK return code with the open stream.
async fn connect(
    from: IpAddr,
    to: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> std::io::Result<(u8, TcpStream)> {
    let mut s = dial(from, to).await?;
    s.write_all(&connect_frame(client_id, login)).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut connack))
        .await
        .map_err(|_| std::io::Error::other("no CONNACK within 30 s"))??;
    assert_eq!(connack[..2], [0x20, 2], "a CONNACK");
    Ok((connack[3], s))
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// `count` users `user-N` with password `pw-N`, hashed in parallel.
fn users(count: usize) -> String {
    let hashes: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    (t..count)
                        .step_by(4)
                        .map(|i| {
                            (
                                i,
                                tidewell::ingest::mqtt::hash_password(format!("pw-{i}").as_bytes())
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, String)> =
            chunks.into_iter().flat_map(|c| c.join().unwrap()).collect();
        all.sort();
        all.into_iter().map(|(_, h)| h).collect()
    });
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| format!("[[mqtt.users]]\nusername = \"user-{i}\"\npassword_hash = \"{h}\"\n"))
        .collect()
}

/// Anonymous access when `users` is empty; a 10 s connect timeout unless
/// `extra` says otherwise.
fn config(dir: &Path, extra: &str, users: &str) -> String {
    let anonymous = users.is_empty();
    let timeout = if extra.contains("connect_timeout_ms") {
        ""
    } else {
        "connect_timeout_ms = 10000\n"
    };
    format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\nallow_anonymous = {anonymous}\n{timeout}{extra}\n{users}",
        harness::data_dir_line(dir)
    )
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// The product's budget is a 64 MiB peak; its release build idles at about
/// 9 MiB, this debug build at about 18 MiB. So what the storm may add to the
/// idle gateway is held to 64 - 9 = 55 MiB, whatever the build.
fn assert_peak_within_budget(idle_kib: u64, peak_kib: u64) {
    const RELEASE_IDLE_KIB: u64 = 9 * 1024;
    let added = peak_kib.saturating_sub(idle_kib);
    assert!(
        added + RELEASE_IDLE_KIB < 64 * 1024,
        "the storm added {added} KiB to an idle {idle_kib} KiB"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// After a power blip every device reconnects at once. Before the gate,
/// 1,000 of them grew the gateway to 18.4 GB (512 argon2 checks at once).
#[test]
fn a_thousand_authenticated_devices_connecting_at_once_get_in_with_bounded_memory() {
    const DEVICES: usize = 1000;
    // 100 accounts of 10 devices each (a credential per site or batch); the
    // devices of an account arrive together and share one check.
    const ACCOUNTS: usize = 100;
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), "", &users(ACCOUNTS)));
    let addr = gateway.mqtt();
    let idle = status_kib(gateway.pid(), "VmRSS:");
    let started = Instant::now();
    let connected = runtime().block_on(async move {
        let tasks: Vec<_> = (0..DEVICES)
            .map(|i| {
                tokio::spawn(async move {
                    let account = i % ACCOUNTS;
                    let (user, pw) = (format!("user-{account}"), format!("pw-{account}"));
                    let login = Some((user.as_str(), pw.as_str()));
                    connect(loopback(1), addr, &format!("dev-{i}"), login).await
                })
            })
            .collect();
        let mut open = Vec::new();
        for task in tasks {
            let (code, stream) = task.await.unwrap().expect("connected");
            assert_eq!(code, 0, "CONNACK accepted");
            open.push(stream);
        }
        open.len()
    });
    let took = started.elapsed();
    let hwm = status_kib(gateway.pid(), "VmHWM:");
    eprintln!(
        "{connected} devices connected in {took:?}; {} password checks; gateway RSS {idle} KiB idle, peak {hwm} KiB",
        gateway.metric("tidewell_mqtt_auth_checks_total")
    );
    assert_eq!(connected, DEVICES);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_peak_within_budget(idle, hwm);
    assert!(gateway.metric("tidewell_mqtt_auth_checks_total") <= 2.0 * ACCOUNTS as f64);
}

/// A brute force from one address (10,000 wrong passwords) among 100 valid
/// devices on another: every valid device gets in, on its first try, and
/// the attacker's address is slowed down after a few checks.
#[test]
fn ten_thousand_wrong_passwords_do_not_keep_valid_devices_out() {
    const WRONG: usize = 10_000;
    const VALID: usize = 100;
    let dir = harness::temp_dir();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), "", &users(VALID)));
    let addr = gateway.mqtt();
    let idle = status_kib(gateway.pid(), "VmRSS:");
    let (valid_ok, refused) = runtime().block_on(async move {
        let attacker = tokio::spawn(async move {
            let mut refused = 0;
            // 50 at a time, as fast as the gateway answers.
            let mut batch = Vec::new();
            for i in 0..WRONG {
                batch.push(tokio::spawn(async move {
                    let id = format!("guess-{i}");
                    let user = format!("user-{}", i % VALID);
                    connect(loopback(2), addr, &id, Some((&user, "wrong"))).await
                }));
                if batch.len() == 50 || i + 1 == WRONG {
                    for t in batch.drain(..) {
                        let (code, _) = t.await.unwrap().expect("an answer");
                        assert_ne!(code, 0, "a wrong password let in");
                        refused += 1;
                    }
                }
            }
            refused
        });
        let mut valid_ok = 0;
        for i in 0..VALID {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (user, pw) = (format!("user-{i}"), format!("pw-{i}"));
            let (code, _) = connect(loopback(1), addr, &format!("dev-{i}"), Some((&user, &pw)))
                .await
                .expect("valid device answered");
            assert_eq!(code, 0, "valid device {i} refused with {code}");
            valid_ok += 1;
        }
        (valid_ok, attacker.await.unwrap())
    });
    let hwm = status_kib(gateway.pid(), "VmHWM:");
    let checks = gateway.metric("tidewell_mqtt_auth_checks_total");
    let bad = gateway.metric("tidewell_mqtt_refusals_total{reason=\"auth\"}");
    let throttled = gateway.metric("tidewell_mqtt_auth_refusals_total{reason=\"throttled\"}");
    let busy = gateway.metric("tidewell_mqtt_auth_refusals_total{reason=\"busy\"}");
    eprintln!(
        "valid {valid_ok}/{VALID}; wrong {refused}: {bad} checked and refused, {throttled} throttled, {busy} busy; {checks} checks; peak RSS {hwm} KiB"
    );
    assert_eq!(valid_ok, VALID);
    assert_eq!(refused, WRONG);
    assert_eq!(
        bad + throttled + busy,
        WRONG as f64,
        "every failure counted"
    );
    assert!(
        throttled > 9_000.0,
        "the attacker was slowed down: {throttled}"
    );
    assert_peak_within_budget(idle, hwm);
}

/// Sockets that never send CONNECT, and ones that send it a byte a second,
/// are closed at the connect timeout; memory does not grow with them.
#[test]
fn silent_and_dripping_sockets_are_closed_at_the_connect_timeout_with_flat_memory() {
    let dir = harness::temp_dir();
    let cfg = config(dir.path(), "connect_timeout_ms = 3000\n", "");
    let gateway = Gateway::start(dir.path(), &cfg);
    let addr = gateway.mqtt();
    let pid = gateway.pid();
    let before = status_kib(pid, "VmRSS:");
    let (closed, during) = runtime().block_on(async move {
        let mut silent = Vec::new();
        for _ in 0..1000 {
            silent.push(dial(loopback(1), addr).await.unwrap());
        }
        let drip = (0..20).map(|i| {
            tokio::spawn(async move {
                let mut s = dial(loopback(1), addr).await.unwrap();
                let frame = connect_frame(&format!("drip-{i}"), None);
                let started = Instant::now();
                for byte in frame {
                    if s.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
                assert!(
                    rest.is_empty(),
                    "no CONNACK for a CONNECT past the deadline"
                );
                started.elapsed()
            })
        });
        let drip: Vec<_> = drip.collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = status_kib(pid, "VmRSS:");
        let mut closed = 0;
        for mut s in silent {
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "a silent socket was left open");
            closed += 1;
        }
        for d in drip {
            let took = d.await.unwrap();
            assert!(
                took < Duration::from_secs(8),
                "a dripping CONNECT held on for {took:?}"
            );
        }
        (closed, during)
    });
    let after = status_kib(pid, "VmRSS:");
    eprintln!("1000 silent + 20 dripping sockets: RSS {before} KiB before, {during} KiB with them open, {after} KiB after");
    assert_eq!(closed, 1000);
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    assert!(gateway.metric("tidewell_mqtt_refusals_total{reason=\"connect_timeout\"}") >= 1020.0);
}

/// With a low descriptor limit the gateway keeps serving the connections it
/// has, refuses new ones (closed, not left hanging), says so at a bounded
/// rate, and accepts again once some close.
#[test]
fn out_of_descriptors_the_gateway_serves_what_it_has_and_recovers() {
    let dir = harness::temp_dir();
    let cfg = config(dir.path(), "", "");
    let gateway = Launch::config(dir.path(), &cfg).nofile(256).start();
    let addr = gateway.mqtt();
    let runtime = runtime();
    let open = runtime.block_on(async move {
        let mut open = Vec::new();
        let mut refused = 0;
        for i in 0..400 {
            match connect(loopback(1), addr, &format!("c{i}"), None).await {
                Ok((0, s)) => open.push(s),
                Ok((code, _)) => panic!("CONNACK {code}"),
                Err(_) => refused += 1,
            }
        }
        eprintln!(
            "descriptor limit 256: {} connections served, {refused} refused",
            open.len()
        );
        assert!(open.len() >= 64, "only {} connections", open.len());
        assert!(refused >= 100, "only {refused} refused");
        // The open ones are still served: PINGREQ, PINGRESP.
        for s in open.iter_mut().take(20) {
            s.write_all(&[0xC0, 0]).await.unwrap();
            let mut pong = [0u8; 2];
            s.read_exact(&mut pong).await.unwrap();
            assert_eq!(pong, [0xD0, 0]);
        }
        open.truncate(open.len() - 50);
        open
    });
    // Once connections close, new ones get in again (while the rest stay open).
    let again = harness::wait_until(Duration::from_secs(10), || {
        runtime.block_on(async {
            matches!(connect(loopback(1), addr, "again", None).await, Ok((0, _)))
        })
    });
    assert!(again, "no connection accepted after descriptors freed up");
    drop(open);
    let warnings = gateway
        .stderr()
        .lines()
        .iter()
        .filter(|l| l.contains("mqtt connection refused") || l.contains("out of descriptors"))
        .count();
    assert!(
        (1..=4).contains(&warnings),
        "{warnings} warnings for the refusals"
    );
    assert!(gateway.metric("tidewell_mqtt_refusals_total{reason=\"connection_limit\"}") >= 100.0);
}
