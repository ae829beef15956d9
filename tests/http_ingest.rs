//! HTTP ingest and read-back end to end: curl and Python (`requests`,
//! `httpx`, raw sockets) against the real gateway binary; `tidewell log
//! dump` reads back what is on disk.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{wait_for, Gateway, Launch};

/// A gateway with HTTP ingest on loopback (anonymous allowed) and topic
/// `ingest`; `extra` is appended to the config (more tables, users).
fn config(dir: &Path, http: &str, extra: &str) -> String {
    format!(
        "{data}[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[topics.ingest]\n[http_ingest]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{http}\n{extra}\n",
        data = harness::data_dir_line(dir),
    )
}

fn base(gw: &Gateway) -> String {
    format!(
        "http://{}",
        gw.addr("http_ingest")
            .expect("http_ingest in the ready line")
    )
}

/// What curl got: status, headers (lower case), body.
struct Got {
    code: u16,
    headers: String,
    body: String,
}

/// `curl -s ARGS`; the last header block and the body.
fn curl(args: &[&str]) -> Got {
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Skip interim `100 Continue` blocks.
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code == 100 {
            rest = body;
            continue;
        }
        return Got {
            code,
            headers: head.to_lowercase(),
            body: body.to_string(),
        };
    }
}

fn post(gw: &Gateway, path: &str, body: &str, extra: &[&str]) -> Got {
    let url = format!("{}{path}", base(gw));
    let mut args = vec!["-X", "POST", "--data-binary", body, url.as_str()];
    args.extend_from_slice(extra);
    curl(&args)
}

fn payloads(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["payload"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A Python program run with `args`, its stdout lines collected as they come.
struct Python {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Python {
    fn start(program: &str, args: &[&str]) -> Python {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (tests/run installs requests and httpx)");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Python { child, lines }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the program to end by itself.
    fn join(&mut self, limit: Duration) {
        wait_for("the python client to exit", limit, || {
            self.child.try_wait().unwrap().is_some()
        });
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 16 keep-alive clients until the gateway goes away: even ones POST one
/// record each with `requests`, odd ones 5-line NDJSON batches with
/// `httpx`. Prints every payload answered 200 (batch lines as stored).
const LOAD: &str = r#"
import sys, threading, requests, httpx
base = sys.argv[1]
lock = threading.Lock()
def out(lines):
    with lock:
        sys.stdout.write("".join(l + "\n" for l in lines)); sys.stdout.flush()
def single(c):
    s = requests.Session()
    for n in range(1_000_000):
        body = f"c{c}-{n}"
        try:
            r = s.post(f"{base}/v1/topics/ingest", data=body, timeout=10)
        except Exception:
            return
        if r.status_code == 200:
            out([body])
def batch(c):
    with httpx.Client(timeout=10) as s:
        for n in range(1_000_000):
            lines = [f'"c{c}-{n}-{i}"' for i in range(5)]
            try:
                r = s.post(f"{base}/v1/topics/ingest", content="\n".join(lines), headers={"content-type": "application/x-ndjson"})
            except Exception:
                return
            if r.status_code == 200:
                out(lines)
threads = [threading.Thread(target=single if c % 2 == 0 else batch, args=(c,)) for c in range(16)]
for t in threads: t.start()
for t in threads: t.join()
"#;

#[test]
fn every_answered_post_is_in_the_log_after_sigkill_under_16_clients() {
    let dir = harness::temp_dir();
    let gw = Gateway::start(dir.path(), &config(dir.path(), "", ""));
    let mut load = Python::start(LOAD, &[&base(&gw)]);
    wait_for("3000 answered records", Duration::from_secs(120), || {
        load.count() >= 3000
    });
    gw.kill();
    load.join(Duration::from_secs(30));
    let acked = load.lines();
    let stored = payloads(&harness::dump(&harness::data_dir(dir.path())));
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no record is in the log twice");
    let missing: Vec<&String> = acked.iter().filter(|a| !unique.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered records are not in the log: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let report = harness::verify_json(&harness::data_dir(dir.path()));
    assert!(!report.contains("\"damaged\":true"), "log verify: {report}");
}

#[test]
fn a_retried_request_appends_once_before_and_after_a_restart() {
    let dir = harness::temp_dir();
    let gw = Gateway::start(dir.path(), &config(dir.path(), "", ""));
    let key = ["-H", "Idempotency-Key: order-17"];
    let first = post(&gw, "/v1/topics/ingest", "pump on", &key);
    assert_eq!(first.code, 200, "{}", first.body);
    assert!(!first.headers.contains("idempotent-replayed"));
    let again = post(&gw, "/v1/topics/ingest", "pump on", &key);
    assert_eq!(
        (again.code, again.body.as_str()),
        (200, first.body.as_str())
    );
    assert!(again.headers.contains("idempotent-replayed: true"));
    let ndjson = [
        "-H",
        "Idempotency-Key: batch-9",
        "-H",
        "Content-Type: application/x-ndjson",
    ];
    let batch = post(
        &gw,
        "/v1/topics/ingest",
        "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n",
        &ndjson,
    );
    assert_eq!(batch.code, 200, "{}", batch.body);
    assert!(batch.body.contains("\"count\":3"), "{}", batch.body);
    let gw = gw.restart();
    let after = post(&gw, "/v1/topics/ingest", "pump on", &key);
    assert_eq!(
        (after.code, after.body.as_str()),
        (200, first.body.as_str())
    );
    assert!(after.headers.contains("idempotent-replayed: true"));
    let batch_after = post(
        &gw,
        "/v1/topics/ingest",
        "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n",
        &ndjson,
    );
    assert_eq!(
        batch_after.body, batch.body,
        "the batch's first answer, after a restart"
    );
    let other = post(
        &gw,
        "/v1/topics/ingest",
        "pump on",
        &["-H", "Idempotency-Key: order-18"],
    );
    assert_eq!(other.code, 200);
    assert_ne!(other.body, first.body, "another key appends");
    let stored = payloads(&gw.dump());
    assert_eq!(
        stored,
        ["pump on", "{\"a\":1}", "{\"a\":2}", "{\"a\":3}", "pump on"]
    );
    assert_eq!(
        gw.metric("tidewell_http_ingest_idempotent_replays_total"),
        2.0
    );
}

/// Sends raw bytes and returns the first response line.
const RAW: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(sys.argv[2].encode().decode("unicode_escape").encode("latin-1"))
print(s.recv(4096).decode("latin-1").split("\r\n")[0])
"#;

fn raw_first_line(gw: &Gateway, request: &str) -> String {
    let addr = gw.addr("http_ingest").unwrap().to_string();
    let mut py = Python::start(RAW, &[&addr, request]);
    py.join(Duration::from_secs(20));
    py.lines().join("\n")
}

#[test]
fn malformed_unknown_too_large_and_full_requests_get_their_codes() {
    let dir = harness::temp_dir();
    let topics = "[topics.full]\nretention_bytes = 16384\nwhen_full = \"reject_new\"\n";
    let gw = Gateway::start(
        dir.path(),
        &config(dir.path(), "max_body_bytes = 1000", topics),
    );
    let ok = post(
        &gw,
        "/v1/topics/ingest",
        "{\"a\":1}\n",
        &["-H", "Content-Type: application/x-ndjson"],
    );
    assert_eq!(ok.code, 200);
    let bad = post(
        &gw,
        "/v1/topics/ingest",
        "{\"a\":2}\n{oops\n",
        &["-H", "Content-Type: application/x-ndjson"],
    );
    assert_eq!(bad.code, 400, "{}", bad.body);
    assert!(bad.body.contains("line 2"), "{}", bad.body);
    assert_eq!(
        post(&gw, "/v1/topics/ingest", "[1, 2", &[]).code,
        200,
        "without batch=array a body is one record"
    );
    assert_eq!(
        post(&gw, "/v1/topics/ingest?batch=array", "[1, 2", &[]).code,
        400
    );
    assert_eq!(
        payloads(&gw.dump()),
        ["{\"a\":1}", "[1, 2"],
        "nothing of a malformed batch is appended"
    );
    assert_eq!(post(&gw, "/v1/topics/nope", "x", &[]).code, 404);
    assert_eq!(
        post(&gw, "/v1/topics/ingest?partition=3", "x", &[]).code,
        404
    );
    assert_eq!(
        curl(&[&format!(
            "{}/v1/topics/ingest/partitions/1/records",
            base(&gw)
        )])
        .code,
        404
    );
    assert_eq!(curl(&[&format!("{}/elsewhere", base(&gw))]).code, 404);
    assert_eq!(
        curl(&[&format!("{}/v1/topics/ingest", base(&gw))]).code,
        405
    );
    let range = curl(&[&format!(
        "{}/v1/topics/ingest/partitions/0/records?offset=99",
        base(&gw)
    )]);
    assert_eq!(range.code, 416, "{}", range.body);
    let big = "x".repeat(1001);
    assert_eq!(
        post(
            &gw,
            "/v1/topics/ingest",
            &big,
            &["-H", "Expect: 100-continue"]
        )
        .code,
        413
    );
    // A declared length over the limit is refused before any body is sent:
    // no `100 Continue`, the 413 comes first.
    let head = "POST /v1/topics/ingest HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 50000000\\r\\nExpect: 100-continue\\r\\n\\r\\n";
    assert_eq!(raw_first_line(&gw, head), "HTTP/1.1 413 Payload Too Large");
    let chunked = format!("POST /v1/topics/ingest HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n7d0\\r\\n{}\\r\\n", "y".repeat(2000));
    assert_eq!(
        raw_first_line(&gw, &chunked),
        "HTTP/1.1 413 Payload Too Large"
    );
    let record = "z".repeat(900);
    let mut full = None;
    for _ in 0..200 {
        let got = post(&gw, "/v1/topics/full", &record, &[]);
        if got.code != 200 {
            full = Some(got);
            break;
        }
    }
    let full = full.expect("reject_new refuses once the quota is reached");
    assert_eq!(full.code, 503, "{}", full.body);
    assert!(full.headers.contains("retry-after: "), "{}", full.headers);
    assert!(gw.metric("tidewell_http_ingest_refusals_total{reason=\"full\"}") >= 1.0);
}

#[test]
fn a_poisoned_log_answers_503_with_retry_after() {
    let dir = harness::temp_dir();
    let gw = Launch::config(dir.path(), &config(dir.path(), "", ""))
        .env("TIDEWELL_FAULT_EIO", "fsync:4")
        .start();
    let codes: Vec<Got> = (0..6)
        .map(|i| post(&gw, "/v1/topics/ingest", &format!("r{i}"), &[]))
        .collect();
    let first_bad = codes
        .iter()
        .position(|g| g.code != 200)
        .expect("an fsync fails");
    assert!(first_bad >= 1, "the first appends are durable");
    for got in &codes[first_bad..] {
        assert_eq!(got.code, 503, "{}", got.body);
        assert!(got.headers.contains("retry-after: "));
    }
    // What was answered 200 is exactly what a reader can get.
    let read = curl(&[&format!(
        "{}/v1/topics/ingest/partitions/0/records?offset=0",
        base(&gw)
    )]);
    assert_eq!(read.body.lines().count(), first_bad, "{}", read.body);
}

#[test]
fn users_need_their_password_and_their_acl_also_over_tls() {
    let dir = harness::temp_dir();
    harness::make_certs(dir.path());
    let hash = harness::hash_password("s3cret");
    let tls = format!(
        "allow_anonymous = false\n[http_ingest.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.path().join("server.pem"),
        dir.path().join("server.key")
    );
    let users = format!("[topics.other]\n[[mqtt.users]]\nusername = \"ann\"\npassword_hash = {hash:?}\npublish_acl = [\"ingest\"]\nsubscribe_acl = [\"ingest\"]\n");
    let gw = Gateway::start(dir.path(), &config(dir.path(), &tls, &users));
    let none = post(&gw, "/v1/topics/ingest", "x", &[]);
    assert_eq!(none.code, 401);
    assert!(
        none.headers.contains("www-authenticate: basic"),
        "{}",
        none.headers
    );
    assert_eq!(
        post(&gw, "/v1/topics/ingest", "x", &["-u", "ann:wrong"]).code,
        401
    );
    let throttled = post(&gw, "/v1/topics/ingest", "x", &["-u", "ann:wrong"]);
    assert_eq!(
        throttled.code, 429,
        "a failed login slows the next one: {}",
        throttled.body
    );
    assert!(throttled.headers.contains("retry-after: "));
    wait_for("the throttle to pass", Duration::from_secs(10), || {
        post(&gw, "/v1/topics/ingest", "by ann", &["-u", "ann:s3cret"]).code == 200
    });
    assert_eq!(
        post(&gw, "/v1/topics/other", "x", &["-u", "ann:s3cret"]).code,
        403
    );
    let read_other = curl(&[
        "-u",
        "ann:s3cret",
        &format!("{}/v1/topics/other/partitions/0/records", base(&gw)),
    ]);
    assert_eq!(read_other.code, 403);
    let https = gw
        .addr("https_ingest")
        .expect("https_ingest in the ready line");
    let url = format!("https://{https}/v1/topics/ingest/partitions/0/records?offset=0");
    let ca = dir.path().join("ca.pem");
    let read = curl(&["--cacert", ca.to_str().unwrap(), "-u", "ann:s3cret", &url]);
    assert_eq!(read.code, 200, "{}", read.body);
    assert!(
        read.body.contains("\"payload\":\"by ann\""),
        "{}",
        read.body
    );
    let stored = gw.dump();
    assert_eq!(payloads(&stored), ["by ann"]);
}

/// Follows a partition from offset 0 (chunked NDJSON with `requests`, or
/// SSE with `httpx`) and prints `offset payload` per record, until
/// `count` records came.
const FOLLOW: &str = r#"
import json, sys, requests, httpx
url, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = 0
def show(line):
    global seen
    r = json.loads(line)
    print(r["offset"], r["payload"], flush=True)
    seen += 1
if mode == "ndjson":
    with requests.get(url + "?offset=0&follow=true", stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line:
                show(line)
            if seen >= count: break
else:
    with httpx.stream("GET", url, headers={"accept": "text/event-stream"}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                show(line[6:])
            if seen >= count: break
"#;

/// Four writers, 150 records each, printing what was answered 200.
const WRITERS: &str = r#"
import sys, threading, requests
base = sys.argv[1]
lock = threading.Lock()
def run(w):
    s = requests.Session()
    for n in range(150):
        body = f"w{w}-{n}"
        if s.post(f"{base}/v1/topics/ingest", data=body, timeout=10).status_code == 200:
            with lock:
                sys.stdout.write(body + "\n"); sys.stdout.flush()
ts = [threading.Thread(target=run, args=(w,)) for w in range(4)]
for t in ts: t.start()
for t in ts: t.join()
"#;

#[test]
fn a_reader_from_offset_zero_sees_every_record_once_in_order() {
    let dir = harness::temp_dir();
    let gw = Gateway::start(dir.path(), &config(dir.path(), "", ""));
    let url = format!("{}/v1/topics/ingest/partitions/0/records", base(&gw));
    let mut ndjson = Python::start(FOLLOW, &[&url, "ndjson", "600"]);
    let mut sse = Python::start(FOLLOW, &[&url, "sse", "600"]);
    wait_for("both readers to connect", Duration::from_secs(20), || {
        gw.metric("tidewell_http_ingest_streams_open") == 2.0
    });
    let mut writers = Python::start(WRITERS, &[&base(&gw)]);
    writers.join(Duration::from_secs(120));
    let acked: BTreeSet<String> = writers.lines().into_iter().collect();
    assert_eq!(acked.len(), 600);
    for reader in [&mut ndjson, &mut sse] {
        reader.join(Duration::from_secs(30));
        let lines = reader.lines();
        let offsets: Vec<u64> = lines
            .iter()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            offsets,
            (0..600).collect::<Vec<u64>>(),
            "every offset once, in order"
        );
        let got: BTreeSet<String> = lines
            .iter()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect();
        assert_eq!(got, acked, "exactly the records that were answered 200");
    }
    // A long poll past the end waits, then answers nothing new.
    let poll = curl(&[&format!("{url}?offset=600&wait_ms=200")]);
    assert_eq!((poll.code, poll.body.as_str()), (200, ""));
    assert!(poll.headers.contains("tidewell-next-offset: 600"));
}

#[test]
fn a_follower_never_sees_a_record_whose_fsync_failed() {
    let dir = harness::temp_dir();
    let gw = Launch::config(dir.path(), &config(dir.path(), "", ""))
        .env("TIDEWELL_FAULT_EIO", "fsync:40")
        .start();
    let url = format!("{}/v1/topics/ingest/partitions/0/records", base(&gw));
    let reader = Python::start(FOLLOW, &[&url, "ndjson", "600"]);
    wait_for("the reader to connect", Duration::from_secs(20), || {
        gw.metric("tidewell_http_ingest_streams_open") == 1.0
    });
    let mut writers = Python::start(WRITERS, &[&base(&gw)]);
    writers.join(Duration::from_secs(120));
    let acked: BTreeSet<String> = writers.lines().into_iter().collect();
    assert!(
        !acked.is_empty() && acked.len() < 600,
        "the failing fsync refused some: {}",
        acked.len()
    );
    wait_for("the reader to catch up", Duration::from_secs(20), || {
        reader.count() >= acked.len()
    });
    // Nothing more becomes readable: the records of the failed group were
    // written to the file, but never made visible.
    let poll = curl(&[&format!("{url}?offset={}&wait_ms=300", acked.len())]);
    assert_eq!((poll.code, poll.body.as_str()), (200, ""), "{}", poll.body);
    let got: BTreeSet<String> = reader
        .lines()
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    assert_eq!(got, acked);
}

#[test]
fn log_dump_follow_prints_records_as_they_become_durable() {
    let dir = harness::temp_dir();
    let gw = Gateway::start(dir.path(), &config(dir.path(), "", ""));
    for i in 0..3 {
        assert_eq!(
            post(&gw, "/v1/topics/ingest", &format!("before-{i}"), &[]).code,
            200
        );
    }
    let mut follow = Command::new(harness::BIN)
        .args([
            "log", "dump", "--follow", "--topic", "ingest", "--from", "1", "--url",
        ])
        .arg(base(&gw))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    wait_for("the two older records", Duration::from_secs(20), || {
        lines.lock().unwrap().len() == 2
    });
    for i in 0..5 {
        assert_eq!(
            post(&gw, "/v1/topics/ingest", &format!("after-{i}"), &[]).code,
            200
        );
    }
    wait_for("the new records", Duration::from_secs(20), || {
        lines.lock().unwrap().len() == 7
    });
    let got = lines.lock().unwrap().clone();
    assert_eq!(
        payloads(&got),
        ["before-1", "before-2", "after-0", "after-1", "after-2", "after-3", "after-4"]
    );
    let offsets: Vec<u64> = got.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..8).collect::<Vec<u64>>());
    // The same JSON shape as `log dump`.
    assert_eq!(got, harness::dump(&harness::data_dir(dir.path()))[1..]);
    let _ = follow.kill();
    let _ = follow.wait();
}
