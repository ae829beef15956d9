//! The `tidewell` command line. `anyhow` lives here and in `main` only.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::daemon::Gateway;
use crate::log::{self, Log, OsStorage};

#[derive(Parser)]
#[command(
    name = "tidewell",
    version,
    about = "Edge ingestion gateway: MQTT and serial in, a power-loss-safe log, Kafka upstream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded defaults without --config).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspect the on-disk log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show a running gateway's state (from its HTTP endpoint's /status).
    Status {
        /// The gateway's configuration, to find its HTTP address.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The HTTP address, overriding the configuration.
        #[arg(long)]
        http: Option<String>,
        /// Print the raw JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that compare Tidewell with its peers in one run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// MQTT helpers.
    #[command(subcommand)]
    Mqtt(MqttCommand),
    /// Simulators that play devices.
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    Sim(SimCommand),
}

#[cfg(feature = "sim")]
#[derive(Subcommand)]
enum SimCommand {
    /// Play a firmware-proto sensor on a serial port (or pseudo-terminal).
    Serial(crate::sim::serial::SimArgs),
}

#[derive(Subcommand)]
enum MqttCommand {
    /// Read a password from stdin (first line) and print its argon2 hash for `[[mqtt.users]] password_hash`.
    HashPassword,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every problem (with its key and line); exit 1 if there is any.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every batch of every segment (CRC, structure, offsets, indexes). Changes nothing.
    Verify {
        #[arg(long, default_value = "tidewell-data")]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print records as JSON lines. Changes nothing.
    Dump(DumpArgs),
}

#[derive(Args)]
struct DumpArgs {
    #[arg(long, default_value = "tidewell-data")]
    data_dir: PathBuf,
    /// Only this topic (default: all).
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at this offset (default: the start of each partition).
    #[arg(long)]
    from: Option<u64>,
    /// Keep going: print records as they become durable, read through the
    /// running gateway's HTTP read-back API (`--url`); needs `--topic`
    /// (`--partition` defaults to 0). Never prints a record not yet on disk.
    #[arg(long, requires = "topic")]
    follow: bool,
    /// The gateway's `[http_ingest]` listener, for `--follow` (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    url: String,
    /// A `[[mqtt.users]]` user for `--follow`; its password is read from
    /// `--password-file`.
    #[arg(long, requires = "password_file")]
    user: Option<String>,
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable appends from concurrent producers, against SQLite and the raw fdatasync rate.
    Log(crate::bench::log::BenchArgs),
    /// Readings/s from the device simulator through a pty pair to the gateway, vs the line rate.
    #[cfg(feature = "sim")]
    Serial(crate::bench::serial::SerialBenchArgs),
    /// Polls/s of simulated RTU slaves through a pty pair against the line's limit, and CPU per poll.
    Modbus(crate::bench::modbus::ModbusBenchArgs),
    /// Time to open a large log: after a clean stop, and after a crash with a torn tail.
    Open(crate::bench::open::OpenArgs),
    /// Drain of 1M records to a Kafka-API broker, against confluent-kafka's producer.
    Replicate(crate::bench::replicate::ReplicateBenchArgs),
    /// Bytes on the wire per replicated MQTT reading, per record shape and compression, against confluent-kafka.
    #[cfg(feature = "bench-mqtt")]
    Wire(crate::bench::wire::WireBenchArgs),
    /// Journal entries/s from a journal directory into the log, against journalctl's raw read rate.
    Journal(crate::bench::journal::JournalBenchArgs),
    /// Records/s of 16 keep-alive HTTP clients (fsync always) against the log's durable rate.
    Http(crate::bench::http::HttpBenchArgs),
    /// Messages/s the bridge drains from a Mosquitto queue (PUBACK after fsync), against mosquitto_sub.
    Bridge(crate::bench::bridge::BridgeBenchArgs),
    /// A reconnect storm of authenticated devices, and the memory of idle ones against Mosquitto.
    Connect(crate::bench::connect::ConnectBenchArgs),
    /// MQTT load (N clients x M messages): Tidewell (fsync always) against Mosquitto, or any broker.
    #[cfg(feature = "bench-mqtt")]
    Mqtt(crate::bench::mqtt::BenchArgs),
    /// Deliveries/s from 1 publisher to 50 QoS 1 subscribers and from 50 publishers to 1, against Mosquitto.
    #[cfg(feature = "bench-mqtt")]
    Fanout(crate::bench::fanout::FanoutBenchArgs),
    /// A persistent QoS 1 subscriber returns after 100,000 messages: what it gets and how fast, against Mosquitto.
    #[cfg(feature = "bench-mqtt")]
    Catchup(crate::bench::catchup::CatchupBenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidewell: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr: plain and without timestamps under systemd (the
/// journal adds its own), JSON with `TIDEWELL_LOG_FORMAT=json`, colours only
/// on a terminal. `TIDEWELL_LOG` filters (default `info`); the config's
/// `log_level` replaces it at start and at each reload.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TIDEWELL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let format = std::env::var("TIDEWELL_LOG_FORMAT").unwrap_or_default();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Each format is its own subscriber type, so each gets its own handle.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            crate::daemon::reload::set_log_filter_reloader(Box::new(move |spec: &str| {
                let filter = EnvFilter::try_new(spec).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }};
    }
    let _ = match format.as_str() {
        "json" => install!(builder.json()),
        "plain" => install!(builder.without_time()),
        _ if journal => install!(builder.without_time()),
        _ => install!(builder),
    };
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => run(config.as_deref()),
        Command::Log(LogCommand::Verify { data_dir, json }) => verify(&data_dir, json),
        Command::Config(ConfigCommand::Check { config }) => config_check(&config),
        Command::Status { config, http, json } => status(config.as_deref(), http, json),
        Command::Log(LogCommand::Dump(args)) => dump(&args),
        #[cfg(feature = "sim")]
        Command::Sim(SimCommand::Serial(args)) => {
            crate::sim::serial::run(&args).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "sim")]
        Command::Bench(BenchCommand::Serial(args)) => {
            crate::bench::serial::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Modbus(args)) => {
            crate::bench::modbus::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Open(args)) => {
            crate::bench::open::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Replicate(args)) => {
            crate::bench::replicate::run(&args).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "bench-mqtt")]
        Command::Bench(BenchCommand::Wire(args)) => {
            crate::bench::wire::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Bridge(args)) => {
            crate::bench::bridge::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Connect(args)) => {
            crate::bench::connect::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Http(args)) => {
            crate::bench::http::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Journal(args)) => {
            crate::bench::journal::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Log(args)) => {
            crate::bench::log::run(&args).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "bench-mqtt")]
        Command::Bench(BenchCommand::Mqtt(args)) => {
            crate::bench::mqtt::run(&args).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "bench-mqtt")]
        Command::Bench(BenchCommand::Fanout(args)) => {
            crate::bench::fanout::run(&args).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "bench-mqtt")]
        Command::Bench(BenchCommand::Catchup(args)) => {
            crate::bench::catchup::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Mqtt(MqttCommand::HashPassword) => hash_password(),
    }
}

fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    crate::daemon::reload::apply_log_level(&config).map_err(anyhow::Error::msg)?;
    let storage = crate::daemon::storage().map_err(anyhow::Error::msg)?;
    let mut gateway = Gateway::start(&config, storage)?;
    gateway.announce_ready();
    gateway.wait_for_stop_signal(config_path);
    gateway.stop();
    Ok(ExitCode::SUCCESS)
}

fn config_check(path: &Path) -> anyhow::Result<ExitCode> {
    match crate::config::check::check_file(path) {
        Ok(_) => {
            println!("{}: OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for problem in &problems {
                println!("{}: {problem}", path.display());
            }
            println!("{}: {} problem(s)", path.display(), problems.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn status(config: Option<&Path>, http: Option<String>, as_json: bool) -> anyhow::Result<ExitCode> {
    let addr = match (http, config) {
        (Some(addr), _) => addr,
        (None, Some(path)) => Config::load(path)?.http.listen.to_string(),
        (None, None) => Config::default().http.listen.to_string(),
    };
    let sample = || -> anyhow::Result<serde_json::Value> {
        let body = crate::observe::get(&addr, "/status")
            .with_context(|| format!("asking the gateway at {addr} (is it running?)"))?;
        Ok(serde_json::from_str(&body)?)
    };
    let first = sample()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&first)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pause = std::time::Duration::from_secs(1);
    std::thread::sleep(pause); // two samples a second apart give the drain rate
    let second = sample()?;
    print!(
        "{}",
        crate::observe::status::table(&first, &second, pause.as_secs_f64())
    );
    Ok(ExitCode::SUCCESS)
}

fn hash_password() -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on stdin");
    }
    let hash = crate::ingest::mqtt::hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

fn open_existing(data_dir: &Path) -> anyhow::Result<Log> {
    if !data_dir.is_dir() {
        bail!("{}: no such directory", data_dir.display());
    }
    Ok(Log::open_read_only(Arc::new(OsStorage), data_dir)?)
}

fn verify(data_dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let log = open_existing(data_dir)?;
    let report = log::verify::verify(&log)?;
    let notes = log::verify::notes(&log);
    if as_json {
        let json = json!({"report": report, "notes": notes, "ok": !report.damaged()});
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        report.write_text(&notes, &mut std::io::stdout().lock())?;
    }
    Ok(if report.damaged() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn dump(args: &DumpArgs) -> anyhow::Result<ExitCode> {
    if args.follow {
        return follow(args);
    }
    let log = open_existing(&args.data_dir)?;
    if let Some(topic) = &args.topic {
        if log.topic(topic).is_none() {
            bail!("no topic {topic:?} in {}", args.data_dir.display());
        }
    }
    let filter = log::dump::DumpFilter {
        topic: args.topic.clone(),
        partition: args.partition,
        from: args.from,
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let damaged = log::dump::dump(&log, &filter, &mut out, &mut |topic, partition, e| {
        eprintln!("tidewell: {topic}/{partition}: {e}");
    })?;
    out.flush()?;
    Ok(if damaged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `log dump --follow`: the partition through the gateway's read-back API.
fn follow(args: &DumpArgs) -> anyhow::Result<ExitCode> {
    use crate::ingest::http::client;
    let addr = client::parse_url(&args.url)?;
    let auth = match (&args.user, &args.password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(client::basic_auth(
                user,
                password.trim_end_matches(['\r', '\n']),
            ))
        }
        _ => None,
    };
    let topic = args.topic.as_deref().unwrap_or_default();
    let mut path = format!(
        "/v1/topics/{topic}/partitions/{}/records?follow=true",
        args.partition.unwrap_or(0)
    );
    if let Some(from) = args.from {
        path.push_str(&format!("&offset={from}"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    runtime.block_on(client::follow(addr, &path, auth.as_deref(), &mut out))?;
    Ok(ExitCode::SUCCESS)
}
