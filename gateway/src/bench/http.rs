//! `tidewell bench http`: 16 keep-alive clients, each POSTing one 100-byte
//! record per request and waiting for its answer (sent after the fsync),
//! against a gateway started from this binary (fsync `always`). In the same
//! run, `bench log`'s durable rate with as many producers in one process:
//! the log is the ceiling, HTTP's cost is the gap. The two halves run one
//! after the other, so each round runs both and the median ratio is
//! reported: on a shared machine the load between them drifts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::log::{bench_tidewell, payload, BenchArgs, CompressionArg, PayloadKind};
use super::{start_gateway, KillOnDrop};
use crate::ingest::http::client;
use crate::log::FsyncPolicy;

#[derive(Args, Debug, Clone)]
pub struct HttpBenchArgs {
    /// Directory to run in (on the disk you want to measure); a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Requests in total (split across clients), one record each.
    #[arg(long, default_value_t = 40_000)]
    pub requests: usize,
    /// Concurrent keep-alive clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Rounds, each HTTP then the log right after it; the median ratio is
    /// reported (on a shared machine the load drifts between the halves).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// What the HTTP side measured.
struct Measured {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU time per request of the gateway, and of the clients (this process).
    gateway_cpu_us: f64,
    client_cpu_us: f64,
}

pub fn run(args: &HttpBenchArgs) -> anyhow::Result<()> {
    let root = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(args: &HttpBenchArgs, root: &Path) -> anyhow::Result<()> {
    println!(
        "bench http: {} requests of {} bytes, {} keep-alive clients, fsync always, {} rounds, in {}",
        args.requests,
        args.size,
        args.clients,
        args.rounds,
        root.display()
    );
    let mut ratios = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds.max(1) {
        let dir = root.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ratio = one_round(args, &dir, round);
        let _ = std::fs::remove_dir_all(&dir);
        ratios.push(ratio?);
    }
    ratios.sort_by(f64::total_cmp);
    println!("---");
    println!(
        "http / log records/s: median {:.2} of {:?} (target >= 0.70)",
        ratios[ratios.len() / 2],
        ratios
            .iter()
            .map(|r| (r * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// HTTP, then `bench log` right after; their ratio.
fn one_round(args: &HttpBenchArgs, dir: &Path, round: usize) -> anyhow::Result<f64> {
    let http = http_side(args, dir)?;
    println!(
        "round {round}: tidewell http: {:>9.0} records/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        http.per_s, http.p50_ms, http.p99_ms, http.max_ms
    );
    println!(
        "round {round}: tidewell http:  CPU per request: gateway {:.1} us, clients {:.1} us",
        http.gateway_cpu_us, http.client_cpu_us
    );
    let log_args = BenchArgs {
        dir: dir.to_path_buf(),
        records: args.requests,
        size: args.size,
        producers: args.clients,
        fsync: "always".into(),
        compression: CompressionArg::None,
        payload: PayloadKind::Json,
        no_sqlite: true,
        raw_seconds: 0.0,
    };
    let log = bench_tidewell(&log_args, FsyncPolicy::Always, &dir.join("log"))?;
    let ratio = http.per_s / log.records_per_s;
    println!(
        "round {round}: tidewell log:  {:>9.0} records/s  ({} producers in one process, bench log's durable rate); http / log {ratio:.2}",
        log.records_per_s, args.clients
    );
    Ok(ratio)
}

fn http_side(args: &HttpBenchArgs, root: &Path) -> anyhow::Result<Measured> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = root.join("http.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[topics.bench]\nfsync = \"always\"\n[http_ingest]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n",
            root.join("http-data")
        ),
    )?;
    let (child, _) = start_gateway(&config)?;
    let gateway = KillOnDrop(child);
    let pid = gateway.0.id();
    let cpu_before = (
        super::cpu_seconds(pid)?,
        super::cpu_seconds(std::process::id())?,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let per_client = args.requests / args.clients.max(1);
    let started = Instant::now();
    let mut latencies = runtime.block_on(async {
        let clients: Vec<_> = (0..args.clients)
            .map(|c| tokio::spawn(one_client(addr, c, per_client, args.size)))
            .collect();
        let mut all = Vec::with_capacity(args.requests);
        for client in clients {
            all.extend(client.await.context("client task")??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = started.elapsed();
    let cpu = (
        super::cpu_seconds(pid)? - cpu_before.0,
        super::cpu_seconds(std::process::id())? - cpu_before.1,
    );
    latencies.sort_unstable();
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Measured {
        per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        gateway_cpu_us: cpu.0 * 1e6 / latencies.len().max(1) as f64,
        client_cpu_us: cpu.1 * 1e6 / latencies.len().max(1) as f64,
    })
}

/// One keep-alive connection posting `count` records, one at a time.
async fn one_client(
    addr: SocketAddr,
    client: usize,
    count: usize,
    size: usize,
) -> anyhow::Result<Vec<Duration>> {
    use http_body_util::BodyExt;
    let mut sender = client::connect(addr).await?;
    let mut latencies = Vec::with_capacity(count);
    for seq in 0..count {
        let body: Bytes = payload(PayloadKind::Json, size, client, seq);
        let request = client::request(Method::POST, addr, "/v1/topics/bench", None, body)?;
        let sent = Instant::now();
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let answer = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            code == 200,
            "POST answered {code}: {}",
            String::from_utf8_lossy(&answer)
        );
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}
