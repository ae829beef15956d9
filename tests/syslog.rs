//! Syslog ingest end to end: util-linux `logger` (and socat, and raw
//! sockets for what logger will not send) against the real gateway binary,
//! and `tidewell log dump` to read back what is on disk.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{header, wait_until, Gateway};

/// A gateway with UDP, TCP and unix listeners on loopback; `extra` adds
/// `[syslog]` keys, `topic` `[topics.syslog]` keys.
fn start(dir: &Path, extra: &str, topic: &str) -> Gateway {
    let config = format!(
        "{data}[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[topics.syslog]\n{topic}\n[syslog]\nenabled = true\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\nunix = {sock:?}\n{extra}\n",
        data = harness::data_dir_line(dir),
        sock = dir.join("syslog.sock"),
    );
    Gateway::start(dir, &config)
}

/// `logger ARGS -n 127.0.0.1 -P PORT` (or `-u SOCKET`) MESSAGE, which must succeed.
fn logger(args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(args)
        .arg("--")
        .arg(message)
        .output()
        .expect("util-linux logger (tests/run installs bsdutils)");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn records(gateway: &Gateway) -> Vec<serde_json::Value> {
    gateway
        .dump()
        .into_iter()
        .filter(|r| r["topic"] == "syslog")
        .collect()
}

fn wait_records(gateway: &Gateway, count: usize) -> Vec<serde_json::Value> {
    let arrived = wait_until(Duration::from_secs(20), || records(gateway).len() >= count);
    let got = records(gateway);
    assert!(arrived, "{} of {count} records: {got:?}", got.len());
    got
}

fn by_payload<'a>(records: &'a [serde_json::Value], payload: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["payload"] == payload)
        .unwrap_or_else(|| panic!("no record {payload:?} in {records:?}"))
}

#[test]
fn logger_messages_in_rfc5424_and_rfc3164_over_udp_tcp_and_unix_arrive_with_their_fields() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path(), "", "");
    let udp = gateway.addr("syslog_udp").unwrap().port().to_string();
    let tcp = gateway.addr("syslog_tcp").unwrap().port().to_string();
    let sock = dir.path().join("syslog.sock");
    let sock = sock.to_str().unwrap();
    let net = |proto: &'static str, port: &str| -> Vec<String> {
        ["-n", "127.0.0.1", "-P", port, proto]
            .map(String::from)
            .to_vec()
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (net("-d", &udp), "--rfc5424", "udp 5424"),
        (net("-d", &udp), "--rfc3164", "udp 3164"),
        (net("-T", &tcp), "--rfc5424", "tcp lines 5424"),
        (net("-T", &tcp), "--rfc3164", "tcp lines 3164"),
        (
            [net("-T", &tcp), vec!["--octet-count".into()]].concat(),
            "--rfc5424",
            "tcp octets 5424",
        ),
        (vec!["-u".into(), sock.into()], "--rfc5424", "unix 5424"),
        (vec!["-u".into(), sock.into()], "--rfc3164", "unix 3164"),
    ];
    for (transport, format, message) in &cases {
        let mut args: Vec<&str> = transport.iter().map(String::as_str).collect();
        args.extend([*format, "-t", "pump", "-p", "local3.warning", "--id=4242"]);
        if *format == "--rfc5424" {
            args.extend([
                "--msgid",
                "M17",
                "--sd-id",
                "tide@32473",
                "--sd-param",
                "level=\"7\"",
            ]);
        }
        logger(&args, message);
    }
    let all = wait_records(&gateway, cases.len());
    for (transport, format, message) in &cases {
        let r = by_payload(&all, message);
        let h = |name: &str| header(r, name).map(str::to_string);
        let transport_name = match transport[0].as_str() {
            "-u" => "unix",
            _ if transport.iter().any(|a| a == "-d") => "udp",
            _ => "tcp",
        };
        assert_eq!(
            h("syslog.transport").as_deref(),
            Some(transport_name),
            "{message}"
        );
        assert_eq!(h("syslog.facility").as_deref(), Some("19"), "{message}");
        assert_eq!(h("syslog.severity").as_deref(), Some("4"), "{message}");
        assert_eq!(h("syslog.app_name").as_deref(), Some("pump"), "{message}");
        assert_eq!(h("syslog.procid").as_deref(), Some("4242"), "{message}");
        assert!(h("syslog.hostname").is_some(), "{message}: {r}");
        assert!(h("syslog.peer").is_some(), "{message}");
        if *format == "--rfc5424" {
            assert_eq!(h("syslog.msgid").as_deref(), Some("M17"), "{message}");
            let sd = h("syslog.structured_data").unwrap();
            assert!(sd.contains("[tide@32473 level=\"7\"]"), "{sd}");
        }
        if transport_name != "unix" {
            assert!(
                h("syslog.peer").unwrap().starts_with("127.0.0.1:"),
                "{message}"
            );
        }
    }
    assert_eq!(
        gateway.metric("tidewell_syslog_received_total"),
        cases.len() as f64
    );
    assert_eq!(
        gateway.metric("tidewell_ingest_records_total{source=\"syslog\"}"),
        cases.len() as f64
    );
    assert_eq!(gateway.status()["syslog"]["parse_errors"], 0);
}

#[test]
fn malformed_messages_are_stored_raw_with_a_parse_error_and_counted() {
    let dir = harness::temp_dir();
    let gateway = start(dir.path(), "", "");
    let tcp = gateway.addr("syslog_tcp").unwrap();
    let mut socat = Command::new("socat")
        .arg("-")
        .arg(format!("TCP:{tcp}"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("socat (tests/run installs it)");
    socat
        .stdin
        .take()
        .unwrap()
        .write_all(b"this is not syslog\n<999>too high\n")
        .unwrap();
    assert!(socat.wait().unwrap().success());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"\xff\xfe binary junk", gateway.addr("syslog_udp").unwrap())
        .unwrap();
    let all = wait_records(&gateway, 3);
    let raw = by_payload(&all, "this is not syslog");
    assert_eq!(
        header(raw, "syslog.parse_error"),
        Some("no <PRI> at the start")
    );
    let high = by_payload(&all, "<999>too high");
    assert!(header(high, "syslog.parse_error").unwrap().contains("191"));
    let junk = all
        .iter()
        .find(|r| r["payload_base64"].is_string())
        .unwrap();
    assert!(header(junk, "syslog.parse_error").is_some());
    assert_eq!(gateway.metric("tidewell_syslog_parse_errors_total"), 3.0);
}

#[test]
fn a_64_kib_line_is_kept_whole_under_the_limit_and_cut_and_counted_over_it() {
    let line = "x".repeat(64 << 10);
    for (max, kept, cut) in [(70_000usize, 64 << 10, false), (16_384, 16_384, true)] {
        let dir = harness::temp_dir();
        let gateway = start(dir.path(), &format!("max_message_bytes = {max}"), "");
        let tcp = gateway.addr("syslog_tcp").unwrap().port().to_string();
        logger(
            &[
                "-n",
                "127.0.0.1",
                "-P",
                &tcp,
                "-T",
                "--rfc3164",
                "--size",
                "70000",
                "-t",
                "big",
            ],
            &line,
        );
        let all = wait_records(&gateway, 1);
        let payload = all[0]["payload"].as_str().unwrap();
        if cut {
            assert_eq!(header(&all[0], "syslog.truncated"), Some("true"));
            assert!(payload.len() < kept && payload.chars().all(|c| c == 'x'));
            assert_eq!(gateway.metric("tidewell_syslog_oversize_total"), 1.0);
        } else {
            assert_eq!(payload.len(), kept, "the whole line");
            assert_eq!(header(&all[0], "syslog.truncated"), None);
            assert_eq!(gateway.metric("tidewell_syslog_oversize_total"), 0.0);
        }
    }
}

#[test]
fn a_non_loopback_listener_needs_allowed_peers_and_other_peers_are_refused() {
    let dir = harness::temp_dir();
    let path = harness::write_config(
        dir.path(),
        "data_dir = \"d\"\n[topics.syslog]\n[syslog]\nenabled = true\nudp = \"0.0.0.0:5514\"\n",
    );
    let out = harness::tidewell(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    );
    let (stdout, _) = harness::text(&out);
    assert!(!out.status.success());
    assert!(
        stdout.contains("syslog.udp") && stdout.contains("allowed_peers"),
        "{stdout}"
    );

    let gateway = start(dir.path(), "allowed_peers = [\"10.99.0.0/16\"]", "");
    let udp = gateway.addr("syslog_udp").unwrap().port().to_string();
    let tcp = gateway.addr("syslog_tcp").unwrap().port().to_string();
    logger(
        &["-n", "127.0.0.1", "-P", &udp, "-d"],
        "from outside the list",
    );
    let _ = Command::new("logger")
        .args([
            "-n",
            "127.0.0.1",
            "-P",
            &tcp,
            "-T",
            "--",
            "refused over tcp",
        ])
        .output();
    assert!(wait_until(Duration::from_secs(10), || {
        gateway.metric("tidewell_syslog_refused_peers_total") >= 2.0
    }));
    assert!(records(&gateway).is_empty());
}

#[test]
fn a_full_topic_under_reject_new_drops_datagrams_with_a_count_and_accounts_for_every_one() {
    let dir = harness::temp_dir();
    let gateway = start(
        dir.path(),
        "",
        "retention_bytes = 16384\nwhen_full = \"reject_new\"",
    );
    let target = gateway.addr("syslog_udp").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let body = "y".repeat(200);
    for i in 0..400 {
        udp.send_to(
            format!("<13>1 - host app - - - {i} {body}").as_bytes(),
            target,
        )
        .unwrap();
        if i % 50 == 49 {
            // Let each burst be judged, so the queue is not what drops them.
            wait_until(Duration::from_secs(5), || {
                gateway.metric("tidewell_syslog_received_total") > f64::from(i) - 1.0
            });
        }
    }
    let received = || gateway.metric("tidewell_syslog_received_total");
    let settled = || {
        gateway.metric("tidewell_syslog_records_appended_total")
            + gateway.metric("tidewell_syslog_dropped_log_full_total")
            + gateway.metric("tidewell_syslog_dropped_queue_full_total")
    };
    assert!(wait_until(Duration::from_secs(20), || received() > 0.0
        && settled() == received()));
    assert!(gateway.metric("tidewell_syslog_dropped_log_full_total") > 0.0);
    assert!(gateway.status()["syslog"]["dropped"].as_u64().unwrap() > 0);
}
