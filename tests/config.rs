//! `tidewell config check` and `tidewell run` on good and bad configuration
//! files: every problem is reported with its key path and line.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;
use std::sync::Arc;

use harness::{write_config, Launch};
use tidewell::log::{Log, LogConfig, OsStorage, TopicConfig};

/// `tidewell config check --config PATH`: (success, stdout).
fn check(path: &Path) -> (bool, String) {
    let out = harness::tidewell(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    );
    (out.status.success(), harness::text(&out).0)
}

#[test]
fn the_commented_example_is_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/tidewell.toml"),
    )
    .unwrap();
    // Its secret file must exist to be readable; point it into the temp dir.
    let secret = dir.path().join("kafka-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = example
        .replace("/etc/tidewell/kafka-password", secret.to_str().unwrap())
        .replace(
            "/var/lib/tidewell",
            dir.path().join("data").to_str().unwrap(),
        );
    let (ok, out) = check(&write_config(dir.path(), &text));
    assert!(ok, "{out}");
    assert!(out.contains(": OK"));
}

#[test]
fn a_wrong_type_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "data_dir = \"d\"\n\n[topics.ingest]\npartitions = \"four\"\n",
    );
    let (ok, out) = check(&path);
    assert!(!ok);
    assert!(
        out.contains("line 4") && out.contains("invalid type"),
        "{out}"
    );
}

#[test]
fn an_unknown_key_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[mqtt]\nlisten = \"127.0.0.1:1883\"\nlisen = \"oops\"\n",
    );
    let (ok, out) = check(&path);
    assert!(!ok);
    assert!(
        out.contains("line 3") && out.contains("unknown field `lisen`"),
        "{out}"
    );
}

#[test]
fn every_semantic_problem_is_listed_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
data_dir = \"data\"

[topics.ingest]
partitions = 0

[mqtt.tls]
listen = \"127.0.0.1:8883\"
cert_file = \"/nonexistent/server.pem\"
key_file = \"/nonexistent/server.key\"

[[mqtt.routes]]
filter = \"devices/#\"
topic = \"ingest\"

[[mqtt.routes]]
filter = \"devices/+/telemetry\"
topic = \"ingest\"
";
    let (ok, out) = check(&write_config(dir.path(), text));
    assert!(!ok);
    for expected in [
        "line 4: topics.ingest.partitions: must be at least 1",
        "line 8: mqtt.tls.cert_file: cannot read /nonexistent/server.pem",
        "line 9: mqtt.tls.key_file: cannot read",
        "line 16: mqtt.routes[1].filter: \"devices/+/telemetry\" can never match",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains("4 problem(s)"), "{out}");
}

#[test]
fn changing_the_partition_count_of_a_topic_on_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = Log::open(
        Arc::new(OsStorage),
        LogConfig::new(&data).with_topic("ingest", TopicConfig::default()),
    )
    .unwrap();
    log.close();
    let path = write_config(
        dir.path(),
        &format!(
            "data_dir = \"{}\"\n[topics.ingest]\npartitions = 4\n",
            data.display()
        ),
    );
    let (ok, out) = check(&path);
    assert!(!ok);
    assert!(
        out.contains("line 3: topics.ingest.partitions") && out.contains("with 1 partitions"),
        "{out}"
    );

    let run = Launch::config_file(dir.path(), &path).run_to_exit();
    assert!(!run.status.success(), "run refuses the same file");
    assert!(
        run.stderr.contains("topics.ingest.partitions"),
        "{}",
        run.stderr
    );
}

/// `run` refuses a route (or the default route) to a topic that is not
/// configured, so `config check` reports it too.
#[test]
fn routes_to_unconfigured_topics_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
data_dir = \"data\"

[topics.telemetry]
partitions = 1

[[mqtt.routes]]
filter = \"devices/#\"
topic = \"telemtry\"
";
    let (ok, out) = check(&write_config(dir.path(), text));
    assert!(!ok, "{out}");
    assert!(
        out.contains("mqtt.routes[0].topic: no such topic \"telemtry\""),
        "{out}"
    );
    assert!(
        out.contains("mqtt.default_topic: no such topic \"ingest\""),
        "{out}"
    );
}

/// A disabled MQTT listener routes nothing, so its default topic need not
/// exist: the config `tidewell bench replicate` writes (a `bench` topic, no
/// MQTT) was refused for it, and the bench never started.
#[test]
fn a_disabled_mqtt_listener_needs_no_default_topic() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
data_dir = \"data\"

[topics.bench]
partitions = 1

[mqtt]
enabled = false
";
    let (ok, out) = check(&write_config(dir.path(), text));
    assert!(ok, "{out}");
}
