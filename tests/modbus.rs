//! Modbus ingest end to end: the real gateway binary polls devices played by
//! pymodbus (`tests/modbus/slaves.py`, an independent Modbus
//! implementation): three RTU units on one serial line through a socat
//! pseudo-terminal pair, or a Modbus TCP (or RTU-over-TCP) server; `tidewell
//! log dump` reads back what is on disk.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::pty::Cable;
use harness::{header, wait_for, Gateway};
use serde_json::{json, Value};

/// pymodbus playing units 1, 2 and 3, driven through its stdin.
struct Slaves {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

impl Slaves {
    /// `args`: `rtu PATH BAUD`, `tcp PORT` or `rtutcp PORT`.
    fn start(args: &[&str]) -> Slaves {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/modbus/slaves.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pymodbus (tests/run installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = replies.recv_timeout(Duration::from_secs(20));
        assert_eq!(
            ready.as_deref(),
            Ok("ready"),
            "pymodbus did not start (is pymodbus==3.8.6 installed?)"
        );
        Slaves {
            child,
            stdin,
            replies,
        }
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        let reply = self.replies.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(reply, format!("ok {line}"));
    }
}

impl Drop for Slaves {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every data type and order of the slaves' layout, as points.
const ALL_TYPES: &str = r#"
[[modbus.buses.devices.groups.points]]
name = "i16"
kind = "holding_register"
address = 0
type = "int16"
[[modbus.buses.devices.groups.points]]
name = "u16"
kind = "holding_register"
address = 1
[[modbus.buses.devices.groups.points]]
name = "i32"
kind = "holding_register"
address = 2
type = "int32"
[[modbus.buses.devices.groups.points]]
name = "u32_cdab"
kind = "holding_register"
address = 4
type = "uint32"
order = "CDAB"
[[modbus.buses.devices.groups.points]]
name = "i64_badc"
kind = "holding_register"
address = 6
type = "int64"
order = "BADC"
[[modbus.buses.devices.groups.points]]
name = "u64_dcba"
kind = "holding_register"
address = 10
type = "uint64"
order = "DCBA"
[[modbus.buses.devices.groups.points]]
name = "f32"
kind = "holding_register"
address = 14
type = "float32"
[[modbus.buses.devices.groups.points]]
name = "f32_cdab"
kind = "holding_register"
address = 16
type = "float32"
order = "CDAB"
[[modbus.buses.devices.groups.points]]
name = "f64_badc"
kind = "holding_register"
address = 18
type = "float64"
order = "BADC"
[[modbus.buses.devices.groups.points]]
name = "f64_dcba"
kind = "holding_register"
address = 22
type = "float64"
order = "DCBA"
[[modbus.buses.devices.groups.points]]
name = "name"
kind = "holding_register"
address = 26
type = "string"
length = 8
[[modbus.buses.devices.groups.points]]
name = "bit0"
kind = "holding_register"
address = 30
type = "bool"
bit = 0
[[modbus.buses.devices.groups.points]]
name = "bit1"
kind = "holding_register"
address = 30
type = "bool"
bit = 1
[[modbus.buses.devices.groups.points]]
name = "bit15"
kind = "holding_register"
address = 30
type = "bool"
bit = 15
[[modbus.buses.devices.groups.points]]
name = "temp"
kind = "holding_register"
address = 31
scale = 0.1
offset = -40.0
unit = "degC"
[[modbus.buses.devices.groups.points]]
name = "input"
kind = "input_register"
address = 0
[[modbus.buses.devices.groups.points]]
name = "coil0"
kind = "coil"
address = 0
[[modbus.buses.devices.groups.points]]
name = "coil1"
kind = "coil"
address = 1
[[modbus.buses.devices.groups.points]]
name = "di1"
kind = "discrete_input"
address = 1
"#;

fn expected_all_types(unit: u64) -> Value {
    json!({
        "i16": -1234, "u16": 50000 + unit, "i32": -123456789, "u32_cdab": 3000000000u64,
        "i64_badc": -1234567890123i64, "u64_dcba": 12345678901234567890u64,
        "f32": 21.5, "f32_cdab": -3.25, "f64_badc": 1234.5678, "f64_dcba": -0.001,
        "name": "TIDEWELL", "bit0": true, "bit1": false, "bit15": true,
        "temp": 21.5, "input": 1000 + unit, "coil0": true, "coil1": false, "di1": true,
    })
}

/// A small group reading what tells the units apart.
fn ids_group(interval_ms: u64) -> String {
    format!(
        r#"
[[modbus.buses.devices.groups]]
name = "ids"
interval_ms = {interval_ms}
[[modbus.buses.devices.groups.points]]
name = "id"
kind = "holding_register"
address = 1
"#
    )
}

fn bus_head(transport: &str, endpoint: &str) -> String {
    format!(
        "[[modbus.buses]]\nname = \"line1\"\ntransport = \"{transport}\"\n{endpoint}\nbaud = 19200\npause_ms = 5\ntimeout_ms = 1000\nretries = 1\n"
    )
}

fn device(name: &str, unit: u8) -> String {
    format!("[[modbus.buses.devices]]\nname = \"{name}\"\nunit = {unit}\n")
}

/// u1: every type every 500 ms; u2 and u3: their id every 300 and 400 ms.
fn three_devices(dir: &Path, bus: &str, extra_u3: &str) -> String {
    format!(
        "{data}[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n{bus}{u1}[[modbus.buses.devices.groups]]\nname = \"all\"\ninterval_ms = 500\n{ALL_TYPES}{u2}{g2}{u3}{g3}{extra_u3}",
        data = harness::data_dir_line(dir),
        u1 = device("u1", 1),
        u2 = device("u2", 2),
        g2 = ids_group(300),
        u3 = device("u3", 3),
        g3 = ids_group(400),
    )
}

fn rtu_endpoint(line: &Cable) -> String {
    format!(
        "path = \"{}\"\nparity = \"even\"",
        line.gateway_end.display()
    )
}

/// Decoded payloads of the records of `device`.
fn payloads(gw: &Gateway, device: &str) -> Vec<Value> {
    records(gw, device)
        .iter()
        .map(|r| serde_json::from_str(r["payload"].as_str().unwrap()).unwrap())
        .collect()
}

fn records(gw: &Gateway, device: &str) -> Vec<Value> {
    gw.dump()
        .into_iter()
        .filter(|r| r["key"] == device)
        .collect()
}

/// Three units on an RTU line; a generous timeout (1 s), so one slow reply
/// of pymodbus on a loaded machine is not an error.
fn rtu_setup(dir: &Path, extra_u3: &str) -> (Cable, Slaves, Gateway) {
    rtu_setup_timeout(dir, extra_u3, 1000)
}

fn rtu_setup_timeout(dir: &Path, extra_u3: &str, timeout_ms: u64) -> (Cable, Slaves, Gateway) {
    let line = Cable::plug(dir);
    let slaves = Slaves::start(&["rtu", line.device_end.to_str().unwrap(), "19200"]);
    let config = three_devices(dir, &bus_head("rtu", &rtu_endpoint(&line)), extra_u3)
        .replace("timeout_ms = 1000", &format!("timeout_ms = {timeout_ms}"));
    let gw = Gateway::start(dir, &config);
    (line, slaves, gw)
}

#[test]
fn three_rtu_slaves_on_one_bus_read_back_every_type_and_order_scaled() {
    let dir = harness::temp_dir();
    let (_line, _slaves, gw) = rtu_setup(dir.path(), "");
    wait_for(
        "records of all three units",
        Duration::from_secs(20),
        || {
            ["u1", "u2", "u3"]
                .iter()
                .all(|d| !records(&gw, d).is_empty())
        },
    );
    let u1 = records(&gw, "u1");
    let value: Value = serde_json::from_str(u1[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        value,
        expected_all_types(1),
        "what pymodbus serves, decoded"
    );
    assert_eq!(header(&u1[0], "modbus.bus"), Some("line1"));
    assert_eq!(header(&u1[0], "modbus.unit"), Some("1"));
    assert_eq!(header(&u1[0], "modbus.group"), Some("all"));
    assert!(
        header(&u1[0], "modbus.monotonic_ms")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now_ms - u1[0]["timestamp_ms"].as_i64().unwrap()).abs() < 60_000);
    assert_eq!(payloads(&gw, "u2")[0], json!({"id": 50002}));
    assert_eq!(payloads(&gw, "u3")[0], json!({"id": 50003}));
    // Each group keeps its own interval, measured by the gateway's own
    // monotonic clock in the records' headers.
    wait_for("six polls of each unit", Duration::from_secs(30), || {
        ["u1", "u2", "u3"]
            .iter()
            .all(|d| records(&gw, d).len() >= 7)
    });
    let mean: Vec<f64> = ["u1", "u2", "u3"]
        .iter()
        .map(|d| {
            let gaps = gaps_since(&gw, d, 0);
            gaps.iter().sum::<u64>() as f64 / gaps.len() as f64
        })
        .collect();
    assert!(
        (450.0..=700.0).contains(&mean[0])
            && (270.0..=420.0).contains(&mean[1])
            && (360.0..=560.0).contains(&mean[2])
            && mean[1] < mean[0],
        "mean intervals (ms) of u1, u2, u3 (500, 300, 400 configured): {mean:?}"
    );
    assert_eq!(
        gw.metric("tidewell_modbus_errors_total"),
        0.0,
        "a clean line has no errors"
    );
}

/// The gateway's monotonic clock when it polled for `record`.
fn monotonic_ms(record: &Value) -> u64 {
    header(record, "modbus.monotonic_ms")
        .unwrap()
        .parse()
        .unwrap()
}

/// Gaps between consecutive polls of `device` (from the records' monotonic
/// headers) among those polled at `since_ms` or later.
fn gaps_since(gw: &Gateway, device: &str, since_ms: u64) -> Vec<u64> {
    let at: Vec<u64> = records(gw, device)
        .iter()
        .map(monotonic_ms)
        .filter(|&t| t >= since_ms)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn a_slave_that_stops_answering_is_counted_and_the_others_keep_their_intervals() {
    let dir = harness::temp_dir();
    let (_line, mut slaves, gw) = rtu_setup_timeout(dir.path(), "", 150);
    wait_for("first records", Duration::from_secs(20), || {
        ["u1", "u2", "u3"]
            .iter()
            .all(|d| !records(&gw, d).is_empty())
    });
    // u1's group takes four requests; a silent u1 must cost the bus one
    // timed-out request (and its retry) per poll, not four.
    slaves.command("stop 1");
    let silent = |r: &Value| {
        let payload: Value = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
        payload.get("quality").is_some()
    };
    wait_for("three silent polls of u1", Duration::from_secs(20), || {
        records(&gw, "u1").iter().filter(|r| silent(r)).count() >= 3
    });
    let u1 = records(&gw, "u1");
    let first_silent = u1.iter().find(|r| silent(r)).map(monotonic_ms).unwrap();
    // One dead poll of u1 is 2 x 150 ms; four would be 1.2 s.
    for (device, interval) in [("u2", 300), ("u3", 400)] {
        let gaps = gaps_since(&gw, device, first_silent.saturating_sub(interval));
        assert!(
            gaps.len() >= 3,
            "{device}: polls while u1 is silent: {gaps:?}"
        );
        let max = gaps.iter().max().copied().unwrap();
        assert!(
            max < interval + 700,
            "{device} (every {interval} ms) waited {max} ms while u1 was silent: {gaps:?}"
        );
    }
    let last: Value =
        serde_json::from_str(u1.last().unwrap()["payload"].as_str().unwrap()).unwrap();
    let quality = last["quality"].as_object().unwrap();
    assert_eq!(
        quality.len(),
        expected_all_types(1).as_object().unwrap().len(),
        "every point of a silent device has a quality, the unsent requests' too: {last}"
    );
    assert!(
        quality.values().all(|q| q == "timeout"),
        "a silent device is a quality, not a gap: {last}"
    );
    assert_eq!(
        gw.metric("tidewell_modbus_backoff{device=\"u1\"}"),
        1.0,
        "u1 is backed off"
    );
    let status = gw.status();
    let u1_status = &status["modbus"]["buses"][0]["devices"][0];
    assert!(
        u1_status["timeouts"].as_u64().unwrap() >= 4 && u1_status["backing_off"] == true,
        "{u1_status}"
    );
    slaves.command("start 1");
    wait_for("u1 answering again", Duration::from_secs(40), || {
        payloads(&gw, "u1").last() == Some(&expected_all_types(1))
    });
}

#[test]
fn garbage_on_the_line_is_a_crc_error_and_polling_resynchronises() {
    let dir = harness::temp_dir();
    let (_line, mut slaves, gw) = rtu_setup(dir.path(), "");
    wait_for("first records", Duration::from_secs(20), || {
        !records(&gw, "u2").is_empty()
    });
    slaves.command("garbage 2");
    wait_for("a CRC error of u2", Duration::from_secs(10), || {
        gw.metric("tidewell_modbus_errors_total{device=\"u2\",error=\"crc\"}") >= 1.0
    });
    assert!(
        gw.metric("tidewell_modbus_bus_discarded_bytes_total") >= 4.0,
        "the noise before the frame was dropped"
    );
    let seen = records(&gw, "u2").len();
    wait_for("more good records of u2", Duration::from_secs(10), || {
        records(&gw, "u2").len() >= seen + 3
    });
    let all = payloads(&gw, "u2");
    assert!(
        all.iter().all(|p| p == &json!({"id": 50002})),
        "the retry after the damaged frame read the value: {all:?}"
    );
    assert_eq!(gw.metric("tidewell_modbus_errors_total{device=\"u1\""), 0.0);
}

const EXCEPTION_GROUP: &str = r#"
[[modbus.buses.devices.groups]]
name = "with_bad_address"
interval_ms = 400
[[modbus.buses.devices.groups.points]]
name = "good"
kind = "input_register"
address = 0
[[modbus.buses.devices.groups.points]]
name = "missing"
kind = "holding_register"
address = 9000
"#;

#[test]
fn an_exception_is_counted_with_its_code_and_the_other_points_still_read() {
    let dir = harness::temp_dir();
    let (_line, _slaves, gw) = rtu_setup(dir.path(), EXCEPTION_GROUP);
    let group = |r: &Value| header(r, "modbus.group") == Some("with_bad_address");
    wait_for("a record of the group", Duration::from_secs(20), || {
        records(&gw, "u3").iter().any(group)
    });
    let record = records(&gw, "u3").into_iter().find(group).unwrap();
    let value: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"good": 1003, "missing": null, "quality": {"missing": "exception:2"}})
    );
    assert!(gw.metric("tidewell_modbus_exceptions_total{device=\"u3\",code=\"2\"}") >= 1.0);
    assert!(
        gw.status()["modbus"]["buses"][0]["devices"][2]["exceptions"]["2"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        gw.metric("tidewell_modbus_backoff{device=\"u3\"}"),
        0.0,
        "an exception is an answer: no backoff"
    );
}

const DEADBAND_GROUP: &str = r#"
[[modbus.buses.devices.groups]]
name = "level"
interval_ms = 100
[[modbus.buses.devices.groups.points]]
name = "level"
kind = "holding_register"
address = 40
deadband = 5.0
max_interval_ms = 3000
"#;

/// CLOCK_BOOTTIME in ms, the clock of the records' `modbus.monotonic_ms`.
fn boot_ms() -> u64 {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 1000.0) as u64
}

#[test]
fn a_deadband_holds_small_moves_until_the_max_interval_and_passes_large_ones_at_once() {
    let dir = harness::temp_dir();
    let (_line, mut slaves, gw) = rtu_setup(dir.path(), DEADBAND_GROUP);
    let levels = |gw: &Gateway| -> Vec<(u64, Value)> {
        records(gw, "u3")
            .into_iter()
            .filter(|r| header(r, "modbus.group") == Some("level"))
            .map(|r| {
                let value: Value = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
                (monotonic_ms(&r), value["level"].clone())
            })
            .collect()
    };
    wait_for("the first level record", Duration::from_secs(20), || {
        !levels(&gw).is_empty()
    });
    slaves.command("set 3 40 103");
    let polls = || gw.metric("tidewell_modbus_suppressed_total{device=\"u3\"}");
    let held = polls();
    wait_for(
        "polls held by the deadband",
        Duration::from_secs(10),
        || polls() >= held + 5.0,
    );
    slaves.command("set 3 40 110");
    let moved_ms = boot_ms();
    wait_for(
        "the record of the large move",
        Duration::from_secs(5),
        || levels(&gw).iter().any(|(_, v)| v == 110),
    );
    wait_for(
        "the max-interval record after it",
        Duration::from_secs(10),
        || levels(&gw).iter().skip_while(|(_, v)| v != 110).count() >= 2,
    );
    let all = levels(&gw);
    let large = all.iter().position(|(_, v)| v == 110).unwrap();
    // Before the large move, every record after the first is a max-interval
    // one: a move of 3 inside the deadband of 5 makes no record of its own.
    for w in all[..=large].windows(2) {
        if w[1].1 != 110 {
            assert!(
                w[1].0 - w[0].0 >= 2900,
                "a record inside the deadband before the max interval: {all:?}"
            );
        }
    }
    let (at, _) = all[large];
    assert!(
        at.saturating_sub(moved_ms) < 1500,
        "the large move is sent at once (polled {} ms after the set): {all:?}",
        at as i64 - moved_ms as i64
    );
    let (next, _) = all[large + 1];
    assert!(
        next - at >= 2900,
        "no record before the max interval: {} ms after the large move: {all:?}",
        next - at
    );
}

#[test]
fn sigkill_while_polling_leaves_a_clean_log_and_polling_resumes_after_restart() {
    let dir = harness::temp_dir();
    let (_line, _slaves, gw) = rtu_setup(dir.path(), "");
    wait_for("records", Duration::from_secs(20), || {
        records(&gw, "u2").len() >= 5
    });
    let data_dir = gw.data_dir();
    gw.kill();
    let report: Value = serde_json::from_str(&harness::verify_json(&data_dir)).unwrap();
    assert_eq!(report["ok"], true, "verify after SIGKILL: {report}");
    let count = harness::dump(&data_dir).len();
    let config = std::fs::read_to_string(dir.path().join("tidewell.toml")).unwrap();
    let gw = Gateway::start(dir.path(), &config);
    wait_for("polling after the restart", Duration::from_secs(20), || {
        gw.dump().len() >= count + 5
    });
}

#[test]
fn a_modbus_tcp_server_is_polled_like_an_rtu_bus() {
    let dir = harness::temp_dir();
    let port = harness::free_port();
    let _slaves = Slaves::start(&["tcp", &port.to_string()]);
    let bus = bus_head("tcp", &format!("address = \"127.0.0.1:{port}\""));
    let gw = Gateway::start(
        dir.path(),
        &three_devices(dir.path(), &bus, EXCEPTION_GROUP),
    );
    wait_for("records of u1 and u3", Duration::from_secs(20), || {
        !records(&gw, "u1").is_empty() && records(&gw, "u3").len() >= 2
    });
    assert_eq!(payloads(&gw, "u1")[0], expected_all_types(1));
    assert!(payloads(&gw, "u3")
        .contains(&json!({"good": 1003, "missing": null, "quality": {"missing": "exception:2"}})));
}

#[test]
fn rtu_frames_through_a_tcp_serial_server_are_polled() {
    let dir = harness::temp_dir();
    let port = harness::free_port();
    let _slaves = Slaves::start(&["rtutcp", &port.to_string()]);
    let bus = bus_head("rtu_over_tcp", &format!("address = \"127.0.0.1:{port}\""));
    let gw = Gateway::start(dir.path(), &three_devices(dir.path(), &bus, ""));
    wait_for("records of u1 and u2", Duration::from_secs(20), || {
        !records(&gw, "u1").is_empty() && !records(&gw, "u2").is_empty()
    });
    assert_eq!(payloads(&gw, "u1")[0], expected_all_types(1));
    assert_eq!(payloads(&gw, "u2")[0], json!({"id": 50002}));
}

#[test]
fn a_full_log_under_reject_new_pauses_polling_and_says_so() {
    let dir = harness::temp_dir();
    let port = harness::free_port();
    let _slaves = Slaves::start(&["tcp", &port.to_string()]);
    let bus = bus_head("tcp", &format!("address = \"127.0.0.1:{port}\""));
    let config = three_devices(dir.path(), &bus, "").replace(
        "[mqtt]",
        "[topics.ingest]\nretention_bytes = 16384\nwhen_full = \"reject_new\"\nmax_segment_bytes = 4096\n[mqtt]",
    );
    let gw = Gateway::start(dir.path(), &config);
    wait_for(
        "polling paused by the full log",
        Duration::from_secs(60),
        || gw.metric("tidewell_modbus_bus_paused{bus=\"line1\"}") == 1.0,
    );
    let status = gw.status();
    let paused = status["modbus"]["buses"][0]["paused"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(paused.contains("full"), "status says why: {paused:?}");
    assert!(gw.metric("tidewell_modbus_log_full_pauses_total") >= 1.0);
    assert!(gw.stderr_contains("polling paused"), "the log says so");
    // Paused means paused: polls stop while the log is full.
    let polls = gw.metric("tidewell_modbus_polls_total");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        gw.metric("tidewell_modbus_polls_total") <= polls + 3.0,
        "polling goes on at full rate while the log refuses"
    );
}

#[test]
fn config_check_names_the_key_paths_of_modbus_mistakes() {
    let dir = harness::temp_dir();
    let bad = format!(
        "{data}[[modbus.buses]]\nname = \"b\"\ntransport = \"rtu\"\npath = \"/dev/null\"\nbaud = 9600\n{d}[[modbus.buses.devices.groups]]\nname = \"g\"\ninterval_ms = 10\n{points}",
        data = harness::data_dir_line(dir.path()),
        d = device("d", 1),
        points = "[[modbus.buses.devices.groups.points]]\nname = \"a\"\nkind = \"holding_register\"\naddress = 0\ntype = \"uint32\"\n\
                  [[modbus.buses.devices.groups.points]]\nname = \"b\"\nkind = \"holding_register\"\naddress = 1\n\
                  [[modbus.buses.devices.groups.points]]\nname = \"c\"\nkind = \"holding_register\"\naddress = 65535\ntype = \"float32\"\n\
                  [[modbus.buses.devices.groups.points]]\nname = \"s\"\nkind = \"input_register\"\naddress = 0\ntype = \"string\"\nlength = 300\n",
    );
    let path = harness::write_config(dir.path(), &bad);
    let out = harness::tidewell(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for needle in [
        "modbus.buses[0].devices[0].groups[0].points[1].address: overlaps point \"a\"",
        "modbus.buses[0].devices[0].groups[0].points[2].address",
        "modbus.buses[0].devices[0].groups[0].points[3].length",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let slow = format!(
        "{data}[[modbus.buses]]\nname = \"b\"\ntransport = \"rtu\"\npath = \"/dev/null\"\nbaud = 9600\n{d}[[modbus.buses.devices.groups]]\nname = \"g\"\ninterval_ms = 10\n[[modbus.buses.devices.groups.points]]\nname = \"a\"\nkind = \"holding_register\"\naddress = 0\n",
        data = harness::data_dir_line(dir.path()),
        d = device("d", 1),
    );
    let path = harness::write_config(dir.path(), &slow);
    let out = harness::tidewell(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "modbus.buses[0].devices[0].groups[0].interval_ms: the bus cannot serve its groups"
        ),
        "{text}"
    );
}

#[test]
fn a_server_that_accepts_and_closes_is_reconnected_with_a_growing_delay() {
    let dir = harness::temp_dir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, accepts) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            // Accepted, then closed at once: nothing behind the server.
            drop(stream);
            if tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let bus = bus_head("rtu_over_tcp", &format!("address = \"127.0.0.1:{port}\""));
    let config = format!(
        "{data}[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n{bus}{u1}{g}",
        data = harness::data_dir_line(dir.path()),
        u1 = device("u1", 1),
        g = ids_group(300),
    );
    let _gw = Gateway::start(dir.path(), &config);
    // 250 ms doubling (+ up to 25%): the fifth connect comes >= 2 s after
    // the fourth; a delay reset after every connect would make it ~0.3 s.
    let at: Vec<Instant> = (0..5)
        .map(|_| accepts.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(
        gaps[3] >= 1500 && gaps[3] > gaps[0],
        "gaps between connects (ms): {gaps:?}"
    );
}
