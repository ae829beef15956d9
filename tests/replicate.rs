//! Replication to a real Kafka-API broker (tansu, one per test): records
//! published over MQTT arrive upstream in per-key order with their headers,
//! survive a broker outage and repeated SIGKILLs of the gateway without loss
//! or duplicates, and quota drops are reported as gaps. What arrived is read
//! back with rdkafka and, independently, with confluent-kafka (Python).

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/kafka.rs"]
mod kafka;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::mqtt::publish;
use harness::tansu::{Broker, TlsFront};
use harness::{free_port, wait_until, Gateway, Launch};
use kafka::{by_key, consume_all, consume_all_python, consume_all_with, drained, status};
use tidewell::bench::proxy::CountingProxy;

const GATEWAY_ID: &str = "gw-test";
const REMOTE: &str = "gw-test.ingest";
const PARTITIONS: u32 = 2;

/// A gateway with two local partitions (keyed by device), mirrored to
/// `gw-test.ingest` with the same partition numbers; short timeouts so
/// outages are noticed fast. `extra` is appended to `[upstream]`.
fn config(dir: &Path, broker: &Broker, topic_extra: &str, extra: &str) -> String {
    config_mirror(dir, broker, topic_extra, extra, "")
}

/// As [`config`], with `mirror_extra` appended to the mirror rule.
fn config_mirror(
    dir: &Path,
    broker: &Broker,
    topic_extra: &str,
    extra: &str,
    mirror_extra: &str,
) -> String {
    format!(
        r#"{data_dir}
gateway_id = "{GATEWAY_ID}"

[topics.ingest]
partitions = {PARTITIONS}
fsync = "never"
{topic_extra}

[mqtt]
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"

[[mqtt.routes]]
filter = "devices/+/temp"
topic = "ingest"
key = "segment:1"

[upstream]
bootstrap_servers = "{bootstrap}"
message_timeout_ms = 5000
request_timeout_ms = 10000
dedupe_tail_records = 3000
backoff_initial_ms = 100
backoff_max_ms = 1000
slow_retry_ms = 1000
checkpoint_interval_ms = 200
{extra}

[[upstream.mirror]]
local = "ingest"
remote = "{{gateway_id}}.{{topic}}"
partitioning = "same"
{mirror_extra}
"#,
        data_dir = harness::data_dir_line(dir),
        bootstrap = broker.bootstrap(),
    )
}

fn setup() -> (tempfile::TempDir, Broker) {
    let dir = harness::temp_dir();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Broker::start(&broker_dir);
    broker.create_topic(REMOTE, PARTITIONS);
    (dir, broker)
}

/// Publishes `per_device` records from each of `devices` devices, in parallel.
fn publish_devices(port: u16, devices: usize, seqs: std::ops::Range<usize>) {
    let threads: Vec<_> = (0..devices)
        .map(|d| {
            let seqs = seqs.clone();
            std::thread::spawn(move || publish(port, &format!("d{d}"), seqs))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn wait_drained(gateway: &Gateway, records: u64, timeout: Duration) {
    let ok = wait_until(timeout, || drained(gateway, records));
    assert!(
        ok,
        "not drained within {timeout:?}: {:#?}\n{}",
        status(gateway),
        gateway.stderr_text()
    );
}

/// Every device's records arrived exactly once, in publish order.
fn assert_complete(broker: &Broker, devices: usize, per_device: usize) -> usize {
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    let (keys, duplicates) = by_key(&records);
    assert_eq!(keys.len(), devices, "devices upstream");
    for (device, seqs) in &keys {
        let mut unique: Vec<usize> = seqs.clone();
        unique.dedup();
        assert!(
            unique.windows(2).all(|w| w[0] < w[1]),
            "{device}: out of order upstream"
        );
        let want: BTreeSet<usize> = (0..per_device).collect();
        let got: BTreeSet<usize> = seqs.iter().copied().collect();
        assert_eq!(got, want, "{device}: missing records");
    }
    duplicates
}

#[test]
fn published_records_arrive_upstream_in_per_key_order_with_headers() {
    let (dir, broker) = setup();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &broker, "", ""));
    publish_devices(gateway.port(), 4, 0..250);
    wait_drained(&gateway, 1000, Duration::from_secs(60));

    assert_eq!(assert_complete(&broker, 4, 250), 0, "duplicates");
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    for r in &records {
        let value = String::from_utf8(r.value.clone()).unwrap();
        let device = value.split(':').next().unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(device.as_bytes()),
            "key is the device"
        );
        assert_eq!(r.header("tidewell.gateway_id"), Some(GATEWAY_ID));
        assert_eq!(r.header("tidewell.topic"), Some("ingest"));
        let partition: i32 = r.header("tidewell.partition").unwrap().parse().unwrap();
        assert_eq!(partition, r.partition, "same partition number upstream");
        assert_eq!(
            r.header("mqtt.topic"),
            Some(format!("devices/{device}/temp").as_str())
        );
        assert_eq!(r.header("mqtt.client_id"), Some(device));
    }
    // Local offsets arrive in order in each remote partition.
    for p in 0..PARTITIONS as i32 {
        let offsets: Vec<u64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.origin().2)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] + 1 == w[1]),
            "partition {p}: {offsets:?}"
        );
    }

    // The independent client sees the same records, headers included.
    let python = consume_all_python(dir.path(), &broker.bootstrap(), REMOTE, PARTITIONS as i32);
    assert_eq!(python.len(), records.len());
    for (py, r) in python.iter().zip(sorted(&records)) {
        assert_eq!(py["partition"], r.partition);
        assert_eq!(py["offset"], r.offset);
        assert_eq!(py["value"], String::from_utf8(r.value.clone()).unwrap());
        assert_eq!(
            py["headers"]["tidewell.offset"],
            r.header("tidewell.offset").unwrap()
        );
        assert_eq!(
            py["headers"]["mqtt.client_id"],
            r.header("mqtt.client_id").unwrap()
        );
    }
    gateway.stop();
}

fn sorted(records: &[kafka::Upstream]) -> Vec<kafka::Upstream> {
    let mut out = records.to_vec();
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

#[test]
fn broker_outage_loses_nothing_and_duplicates_nothing() {
    let (dir, mut broker) = setup();
    // The outage shows as transport errors; a message timeout long enough
    // that a slow broker working through the backlog does not fail the
    // session (a failed session opens the documented duplicate window).
    let cfg = config(dir.path(), &broker, "", "")
        .replace("message_timeout_ms = 5000", "message_timeout_ms = 60000");
    let gateway = Gateway::start(dir.path(), &cfg);
    publish_devices(gateway.port(), 4, 0..125);
    wait_drained(&gateway, 500, Duration::from_secs(60));

    broker.stop();
    publish_devices(gateway.port(), 4, 125..2625);
    let noticed = wait_until(Duration::from_secs(30), || {
        status(&gateway).is_some_and(|s| s["state"] != "connected")
    });
    assert!(
        noticed,
        "the outage is not in the status: {:#?}",
        status(&gateway)
    );
    assert!(
        !drained(&gateway, 10_500),
        "backlog while the broker is down"
    );

    broker.restart();
    wait_drained(&gateway, 10_500, Duration::from_secs(120));
    let duplicates = assert_complete(&broker, 4, 2625);
    assert_eq!(duplicates, 0, "duplicates after the outage");
    let python = consume_all_python(dir.path(), &broker.bootstrap(), REMOTE, PARTITIONS as i32);
    assert_eq!(python.len(), 10_500, "confluent-kafka count");
    gateway.stop();
}

#[test]
fn sigkill_while_draining_adds_no_duplicates() {
    let (dir, mut broker) = setup();
    // A capped uplink so the drain takes seconds and the kills land mid-drain.
    let extra = "bandwidth_bytes_per_s = 4000\nmax_in_flight_records = 1000\n";
    let cfg = config(dir.path(), &broker, "", extra);
    let gateway = Gateway::start(dir.path(), &cfg);
    broker.stop();
    publish_devices(gateway.port(), 4, 0..1000);
    gateway.kill();
    broker.restart();

    let mut kills = 0;
    for round in 0..6 {
        let gateway = Gateway::start(dir.path(), &cfg);
        // Kill once this round has replicated something new.
        let before = replicated(&gateway);
        let moved = wait_until(Duration::from_secs(20), || replicated(&gateway) > before);
        if drained(&gateway, 4000) {
            break;
        }
        assert!(
            moved,
            "round {round}: no progress: {:#?}\n{}\nbroker:\n{}",
            status(&gateway),
            gateway.stderr_text(),
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(150 * (round % 3) as u64));
        gateway.kill();
        kills += 1;
    }
    let gateway = Gateway::start(dir.path(), &cfg);
    wait_drained(&gateway, 4000, Duration::from_secs(180));
    let duplicates = assert_complete(&broker, 4, 1000);
    eprintln!("sigkill test: {kills} kills while draining, {duplicates} duplicates upstream");
    assert!(kills >= 3, "the drain ended before enough kills ({kills})");
    assert_eq!(duplicates, 0, "duplicates after {kills} kills");
    gateway.stop();
}

/// `bandwidth_bytes_per_s` holds a backlog's drain to the cap on the wire:
/// bytes counted by a proxy between the gateway and the broker (the broker
/// advertises the proxy, so produce requests go through it) stay within
/// the rate plus one second of burst, and the drain is paced by those
/// compressed bytes, not by the records' much larger size before
/// compression.
#[test]
fn the_bandwidth_cap_paces_a_backlog_drain_by_bytes_on_the_wire() {
    const CAP: u64 = 4_000;
    let (dir, mut broker) = setup();
    let broker_addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.port));
    let proxy = CountingProxy::start("127.0.0.1:0".parse().unwrap(), broker_addr).unwrap();
    broker.stop();
    broker.advertised_port = Some(proxy.addr.port());
    broker.restart();
    let cfg = config(
        dir.path(),
        &broker,
        "",
        &format!("bandwidth_bytes_per_s = {CAP}\n"),
    );
    let gateway = Gateway::start(dir.path(), &cfg);
    broker.stop();
    publish_devices(gateway.port(), 4, 0..500);
    let before = proxy.sent();
    broker.restart();
    let started = Instant::now();
    wait_drained(&gateway, 2000, Duration::from_secs(120));
    let elapsed = started.elapsed().as_secs_f64();
    let wire = proxy.sent() - before;

    assert_eq!(assert_complete(&broker, 4, 500), 0, "duplicates");
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    let record_bytes: usize = records
        .iter()
        .map(|r| {
            let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            r.key.as_ref().map_or(0, Vec::len) + r.value.len() + headers
        })
        .sum();
    let wire_rate = wire as f64 / elapsed;
    eprintln!(
        "bandwidth cap {CAP} B/s: {wire} bytes on the wire in {elapsed:.1} s ({wire_rate:.0} B/s); {record_bytes} record bytes before compression"
    );
    // At most the rate plus one second of burst, and 10% for the estimate
    // of the last quarter second.
    assert!(
        wire as f64 <= CAP as f64 * (elapsed + 1.0) * 1.1,
        "{wire} bytes on the wire in {elapsed:.1} s at a cap of {CAP} B/s"
    );
    // The cap paces the drain: it took about as long as the wire bytes need.
    assert!(
        elapsed >= (wire as f64 / CAP as f64 - 1.0) * 0.9,
        "{wire} bytes on the wire in only {elapsed:.1} s at a cap of {CAP} B/s"
    );
    // Counting bytes before compression would have taken this much longer.
    assert!(
        elapsed < record_bytes as f64 / CAP as f64 / 2.0,
        "{record_bytes} record bytes took {elapsed:.1} s: the cap counted them, not the wire"
    );
    gateway.stop();
}

/// Sum of the replicated offsets in the status.
fn replicated(gateway: &Gateway) -> u64 {
    status(gateway)
        .and_then(|s| s["partitions"].as_array().cloned())
        .map_or(0, |parts| {
            parts
                .iter()
                .map(|p| p["replicated"].as_u64().unwrap_or(0))
                .sum()
        })
}

#[test]
fn quota_drops_only_the_oldest_and_replication_reports_the_gap() {
    let (dir, mut broker) = setup();
    let quota = "retention_bytes = 65536\nmax_segment_bytes = 16384\nwhen_full = \"drop_oldest\"\n";
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &broker, quota, ""));
    broker.stop();
    publish(gateway.port(), "d0", 0..3000);
    let dropped = |s: &serde_json::Value| -> u64 {
        s["partitions"].as_array().map_or(0, |ps| {
            ps.iter()
                .map(|p| p["dropped_records"].as_u64().unwrap_or(0))
                .sum()
        })
    };
    let recorded = wait_until(Duration::from_secs(30), || {
        status(&gateway).is_some_and(|s| dropped(&s) > 0)
    });
    assert!(recorded, "no drop recorded: {:#?}", status(&gateway));

    broker.restart();
    wait_drained(&gateway, 3000, Duration::from_secs(120));
    let s = status(&gateway).unwrap();
    let dropped = dropped(&s);
    let part = s["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dropped_records"].as_u64() > Some(0))
        .unwrap()
        .clone();
    assert_eq!(
        part["counters"]["gap_records"].as_u64(),
        Some(dropped),
        "the replicator reports the gap"
    );
    let gaps = part["gaps"].as_array().unwrap();
    assert_eq!(gaps[0][0], 0, "the oldest records went first: {gaps:?}");
    assert!(gateway.stderr_contains("before they were replicated"));

    // Upstream holds exactly the records that were kept: the newest, in order.
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    let (keys, duplicates) = by_key(&records);
    assert_eq!(duplicates, 0);
    let seqs = &keys["d0"];
    let first = dropped as usize;
    assert!(first > 0 && first < 3000);
    let kept: Vec<usize> = (first..3000).collect();
    assert!(
        *seqs == kept,
        "kept records upstream: {:?}..{:?} ({})",
        seqs.first(),
        seqs.last(),
        seqs.len()
    );
    gateway.stop();
}

/// librdkafka raises a fatal idempotence error (the kind a fenced producer
/// or an unknown producer id brings) every 300 acknowledgements: each time
/// the producer is recreated and replication resumes from the cursor, with
/// nothing skipped.
#[test]
fn fatal_producer_errors_recreate_the_producer_and_skip_nothing() {
    let (dir, broker) = setup();
    // The old producer's last requests can still be in the broker when it
    // is dropped: a one-second backoff lets them land before the new
    // session reads the remote tail (otherwise the documented window).
    // A session moves 300 acknowledged records plus what is in flight (at
    // most 100 per partition) by the time the error is reported, so 4,000
    // records take several sessions (5 in the runs here).
    let cfg = config(dir.path(), &broker, "", "max_in_flight_records = 100\n")
        .replace("backoff_initial_ms = 100", "backoff_initial_ms = 1000");
    let env = [("TIDEWELL_FAULT_FATAL_AFTER_ACKS", "300")];
    let gateway = Launch::config(dir.path(), &cfg).envs(&env).start();
    publish_devices(gateway.port(), 4, 0..1000);
    wait_drained(&gateway, 4000, Duration::from_secs(120));

    let s = status(&gateway).unwrap();
    let sessions = s["sessions"].as_u64().unwrap();
    assert!(
        sessions >= 3,
        "producer recreated: {s:#?}\n{}",
        gateway.stderr_text()
    );
    assert!(
        gateway.stderr_contains("fatal producer error"),
        "the fatal error is logged"
    );
    let duplicates = assert_complete(&broker, 4, 1000);
    eprintln!("fatal-error test: {sessions} sessions, {duplicates} duplicates upstream");
    assert_eq!(duplicates, 0, "duplicates after {sessions} sessions");
    gateway.stop();
}

/// A remote topic that does not exist is an operator's mistake: it is
/// logged as an error, counted, shown in the status, retried slowly, and
/// replication starts by itself once the topic is created.
#[test]
fn a_missing_remote_topic_is_reported_and_retried_until_created() {
    let dir = harness::temp_dir();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Broker::start(&broker_dir);
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &broker, "", ""));
    publish_devices(gateway.port(), 2, 0..100);

    let missing = |s: &serde_json::Value| s["missing_topic_errors"].as_u64();
    let reported = wait_until(Duration::from_secs(30), || {
        status(&gateway).is_some_and(|s| missing(&s) >= Some(2))
    });
    let s = status(&gateway).unwrap();
    assert!(reported, "retried and counted: {s:#?}");
    assert_eq!(s["state"], "backing_off");
    let error = s["last_error"].as_str().unwrap();
    assert!(
        error.contains(REMOTE) && error.contains("does not exist"),
        "{error}"
    );
    assert!(gateway.stderr_contains("ERROR"), "logged as an error");
    let counted = gateway.metric("tidewell_upstream_missing_topic_errors_total");
    assert!(counted >= 2.0, "metric: {counted}");
    assert!(!drained(&gateway, 200), "nothing replicated yet");

    broker.create_topic(REMOTE, PARTITIONS);
    wait_drained(&gateway, 200, Duration::from_secs(60));
    assert_eq!(assert_complete(&broker, 2, 100), 0, "duplicates");
    gateway.stop();
}

/// SASL (SCRAM-SHA-512) over TLS, the way a central cluster is reached: a
/// wrong password is an authorization error (logged, counted, in the status,
/// retried slowly); once the password file is corrected, the next attempt
/// connects and everything drains, nothing skipped.
#[test]
fn scram_over_tls_reports_a_wrong_password_and_recovers_when_corrected() {
    let (dir, mut broker) = setup();
    broker.create_user("gateway", "s3cret");
    let tls_port = free_port();
    broker.require_authentication(tls_port);
    harness::make_certs(dir.path());
    let p = |name: &str| dir.path().join(name);
    let _front = TlsFront::start(tls_port, &p("server.pem"), &p("server.key"), &broker);
    std::fs::write(p("password"), "wrong\n").unwrap();
    let security = format!(
        "\n[upstream.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         username = \"gateway\"\npassword_file = {:?}\nca_file = {:?}\n",
        p("password"),
        p("ca.pem"),
    );
    let cfg = config(dir.path(), &broker, "", &security)
        .replace(&broker.bootstrap(), &format!("127.0.0.1:{tls_port}"));
    let gateway = Gateway::start(dir.path(), &cfg);
    publish_devices(gateway.port(), 2, 0..100);

    let refused = wait_until(Duration::from_secs(60), || {
        status(&gateway).is_some_and(|s| s["authorization_errors"].as_u64() >= Some(1))
    });
    let s = status(&gateway).unwrap();
    assert!(
        refused,
        "authorization error counted: {s:#?}\n{}",
        gateway.stderr_text()
    );
    assert!(
        !drained(&gateway, 200),
        "nothing replicated with a wrong password"
    );
    assert!(gateway.stderr_contains("not authorized"), "logged");

    std::fs::write(p("password"), "s3cret\n").unwrap();
    wait_drained(&gateway, 200, Duration::from_secs(60));
    let ca = p("ca.pem").to_str().unwrap().to_string();
    let records = consume_all_with(
        &format!("127.0.0.1:{tls_port}"),
        REMOTE,
        PARTITIONS as i32,
        &[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "gateway"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", &ca),
        ],
    );
    let (keys, duplicates) = by_key(&records);
    assert_eq!(duplicates, 0);
    assert_eq!(keys.len(), 2);
    for seqs in keys.values() {
        assert_eq!(*seqs, (0..100).collect::<Vec<_>>());
    }
    gateway.stop();
}

/// A reload with new upstream credentials rebuilds the session with them:
/// after a reload to a wrong password the broker refuses the gateway (so
/// the reload took effect on a working session), after the next reload to
/// a second user's credentials the rest drains; every record arrives once,
/// in order.
#[test]
fn a_reload_applies_new_upstream_credentials_without_loss_or_duplicates() {
    let (dir, mut broker) = setup();
    broker.create_user("gateway", "s3cret");
    broker.create_user("gateway2", "n3w");
    let tls_port = free_port();
    broker.require_authentication(tls_port);
    harness::make_certs(dir.path());
    let p = |name: &str| dir.path().join(name);
    let _front = TlsFront::start(tls_port, &p("server.pem"), &p("server.key"), &broker);
    let bootstrap = format!("127.0.0.1:{tls_port}");
    let cfg = |user: &str, password: &str| {
        let security = format!(
            "\n[upstream.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             username = \"{user}\"\npassword = \"{password}\"\nca_file = {:?}\n",
            p("ca.pem"),
        );
        config(dir.path(), &broker, "", &security).replace(&broker.bootstrap(), &bootstrap)
    };
    let gateway = Gateway::start(dir.path(), &cfg("gateway", "s3cret"));
    let hup = |text: String| {
        std::fs::write(p("tidewell.toml"), text).unwrap();
        let out = std::process::Command::new("kill")
            .args(["-HUP", &gateway.pid().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    publish_devices(gateway.port(), 2, 0..100);
    wait_drained(&gateway, 200, Duration::from_secs(60));

    hup(cfg("gateway", "wrong"));
    let refused = wait_until(Duration::from_secs(60), || {
        status(&gateway).is_some_and(|s| s["authorization_errors"].as_u64() >= Some(1))
    });
    assert!(
        refused,
        "the reloaded wrong password is used: {:#?}\n{}",
        status(&gateway),
        gateway.stderr_text()
    );
    assert!(gateway.stderr_contains("credentials reloaded"));
    publish_devices(gateway.port(), 2, 100..200);

    hup(cfg("gateway2", "n3w"));
    wait_drained(&gateway, 400, Duration::from_secs(60));
    let ca = p("ca.pem").to_str().unwrap().to_string();
    let records = consume_all_with(
        &bootstrap,
        REMOTE,
        PARTITIONS as i32,
        &[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "gateway2"),
            ("sasl.password", "n3w"),
            ("ssl.ca.location", &ca),
        ],
    );
    let (keys, duplicates) = by_key(&records);
    assert_eq!(duplicates, 0);
    assert_eq!(keys.len(), 2);
    for seqs in keys.values() {
        assert_eq!(*seqs, (0..200).collect::<Vec<_>>());
    }
    let s = status(&gateway).unwrap();
    assert!(s["sessions"].as_u64().unwrap() >= 2, "{s:#}");
    gateway.stop();
}

/// Kills the gateway mid-drain up to `kills` times (a capped uplink keeps
/// the drain going for seconds), then lets it finish. Returns the kills.
fn drain_with_kills(
    dir: &Path,
    cfg: &str,
    broker: &mut Broker,
    records: u64,
    kills: usize,
) -> usize {
    let gateway = Gateway::start(dir, cfg);
    broker.stop();
    publish_devices(gateway.port(), 4, 0..(records / 4) as usize);
    gateway.kill();
    broker.restart();
    let mut killed = 0;
    for round in 0..kills {
        let gateway = Gateway::start(dir, cfg);
        let before = replicated(&gateway);
        let moved = wait_until(Duration::from_secs(20), || replicated(&gateway) > before);
        if drained(&gateway, records) {
            break;
        }
        assert!(moved, "round {round}: no progress: {:#?}", status(&gateway));
        gateway.kill();
        killed += 1;
    }
    let gateway = Gateway::start(dir, cfg);
    wait_drained(&gateway, records, Duration::from_secs(180));
    gateway.stop();
    killed
}

/// `provenance = "compact"`: one small binary header instead of four text
/// ones, still enough for the restart dedupe (kills mid-drain add no
/// duplicates) and for consumers to identify each record; only the chosen
/// ingest headers go upstream.
#[test]
fn compact_provenance_identifies_records_and_keeps_restarts_free_of_duplicates() {
    let (dir, mut broker) = setup();
    let extra = "bandwidth_bytes_per_s = 4000\nmax_in_flight_records = 1000\n";
    let mirror = "provenance = \"compact\"\nheaders = [\"mqtt.topic\"]";
    let cfg = config_mirror(dir.path(), &broker, "", extra, mirror);
    let kills = drain_with_kills(dir.path(), &cfg, &mut broker, 2000, 3);
    assert!(kills >= 1, "no kill landed mid-drain");
    assert_eq!(assert_complete(&broker, 4, 500), 0, "duplicates");
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    for r in &records {
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["tw", "mqtt.topic"],
            "one provenance header, the chosen ingest one"
        );
        let tw = &r.headers[0].1;
        assert!(tw.len() <= 6, "compact: {} bytes", tw.len());
        let (topic, partition, _) = r.origin();
        assert_eq!(topic, "(implied)", "the remote topic names the local one");
        assert_eq!(partition as i32, r.partition);
    }
}

/// `value_format = "json_envelope"` with `provenance = "off"`: no headers
/// at all, the value is a JSON object carrying the provenance, key, chosen
/// headers and payload, and the restart dedupe reads it from there.
#[test]
fn the_json_envelope_carries_provenance_for_sinks_that_drop_headers() {
    let (dir, mut broker) = setup();
    let extra = "bandwidth_bytes_per_s = 6000\nmax_in_flight_records = 1000\n";
    let mirror = "provenance = \"off\"\nvalue_format = \"json_envelope\"\nheaders = \"none\"";
    let cfg = config_mirror(dir.path(), &broker, "", extra, mirror);
    let kills = drain_with_kills(dir.path(), &cfg, &mut broker, 2000, 2);
    assert!(kills >= 1, "no kill landed mid-drain");
    let records = consume_all(&broker.bootstrap(), REMOTE, PARTITIONS as i32);
    let mut seen = BTreeSet::new();
    let mut per_device: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for r in &records {
        assert!(r.headers.is_empty(), "no headers: {:?}", r.headers);
        let e: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(e["gateway_id"], GATEWAY_ID);
        assert_eq!(e["topic"], "ingest");
        assert_eq!(e["partition"], r.partition);
        assert!(e["timestamp_ms"].as_i64().unwrap() > 0);
        assert_eq!(e["headers"], serde_json::json!({}));
        let payload = e["value_text"].as_str().unwrap();
        let (device, seq) = payload.split_once(':').unwrap();
        assert_eq!(e["key"], device);
        if seen.insert((e["partition"].as_u64(), e["offset"].as_u64())) {
            per_device
                .entry(device.into())
                .or_default()
                .push(seq.parse().unwrap());
        }
    }
    assert_eq!(seen.len(), records.len(), "duplicates after kills");
    assert_eq!(per_device.len(), 4);
    for (device, seqs) in per_device {
        assert_eq!(
            seqs,
            (0..500).collect::<Vec<_>>(),
            "{device}: every record, in order"
        );
    }
}

/// A mirror rule's `linger_ms` gathers live records: published one every
/// 40 ms for 3 s, they reach the broker in a few steps (about one a
/// linger) instead of one by one, and every one arrives.
#[test]
fn live_records_linger_and_go_upstream_together() {
    let (dir, broker) = setup();
    let cfg = config_mirror(dir.path(), &broker, "", "", "linger_ms = 1000");
    let gateway = Gateway::start(dir.path(), &cfg);
    let watcher = {
        let bootstrap = broker.bootstrap();
        std::thread::spawn(move || watermark_steps(&bootstrap, Duration::from_secs(6)))
    };
    let port = gateway.port();
    for seq in 0..75 {
        publish(port, "d0", seq..seq + 1);
        std::thread::sleep(Duration::from_millis(40)); // the pace of a live device
    }
    wait_drained(&gateway, 75, Duration::from_secs(30));
    let steps = watcher.join().unwrap();
    eprintln!("linger: 75 records reached the broker in {steps} steps");
    assert!(
        (2..=8).contains(&steps),
        "{steps} steps for 75 records over 3 s with a 1 s linger"
    );
    assert_eq!(assert_complete(&broker, 1, 75), 0);
    gateway.stop();
}

/// How many times the remote high watermarks (both partitions) moved
/// while watched for `span`.
fn watermark_steps(bootstrap: &str, span: Duration) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let (mut last, mut steps) = (0i64, 0);
    let end = Instant::now() + span;
    while Instant::now() < end {
        let total: i64 = (0..PARTITIONS as i32)
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(REMOTE, p, Duration::from_secs(5))
                    .ok()
            })
            .map(|(_, high)| high)
            .sum();
        if total != last {
            steps += 1;
            last = total;
        }
        std::thread::sleep(Duration::from_millis(20)); // sampling the broker
    }
    steps
}
