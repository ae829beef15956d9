//! `tidewell bench log`: durable appends from concurrent producers, each
//! waiting for its record to be durable before sending the next (as MQTT
//! clients with one message in flight do). In the same run: the disk's raw
//! rate of small `write` + `fdatasync` calls, and SQLite (WAL,
//! `synchronous=FULL`, one transaction per record) with the same producers.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};

use crate::log::stats::Stats;
use crate::log::{
    Compression, FsyncPolicy, Log, LogConfig, OsStorage, Partition, Record, TopicConfig,
};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Directory to run in (on the disk you want to measure); a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Records in total (split across producers).
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Concurrent producers, each with one record in flight.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Fsync policy: always, never, or a number of milliseconds (interval).
    #[arg(long, default_value = "always")]
    pub fsync: String,
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Payload shape: JSON-like sensor readings, or random bytes.
    #[arg(long, value_enum, default_value_t = PayloadKind::Json)]
    pub payload: PayloadKind,
    /// Skip the SQLite comparison.
    #[arg(long)]
    pub no_sqlite: bool,
    /// Seconds to measure the raw fdatasync rate.
    #[arg(long, default_value_t = 2.0)]
    pub raw_seconds: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum PayloadKind {
    Json,
    Random,
}

/// One side's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub fsyncs_per_s: f64,
    pub disk_bytes_per_record: f64,
    /// Mean fsync time in microseconds, when known.
    pub fsync_us: Option<f64>,
}

fn parse_fsync(text: &str) -> anyhow::Result<FsyncPolicy> {
    Ok(match text {
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        ms => FsyncPolicy::IntervalMs(
            ms.parse()
                .context("--fsync takes always, never or milliseconds")?,
        ),
    })
}

/// Payloads of exactly `size` bytes.
pub fn payload(kind: PayloadKind, size: usize, producer: usize, seq: usize) -> Bytes {
    let mut text = match kind {
        PayloadKind::Json => format!(
            "{{\"device\":\"sensor-{producer:04}\",\"seq\":{seq},\"ts\":{},\"temp_c\":{:.2},\"rh\":{:.1},\"batt_v\":3.{:02},\"ok\":true}}",
            crate::log::now_ms(),
            18.0 + (seq * 7 % 700) as f64 / 100.0,
            40.0 + (seq * 13 % 300) as f64 / 10.0,
            seq % 100
        )
        .into_bytes(),
        PayloadKind::Random => {
            let mut x = (producer as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq as u64;
            (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    };
    text.resize(size, b' ');
    Bytes::from(text)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let policy = parse_fsync(&args.fsync)?;
    let root = args.dir.join(format!("run-{}", std::process::id()));
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, policy, &root);
    let _ = fs::remove_dir_all(&root);
    result
}

fn run_in(args: &BenchArgs, policy: FsyncPolicy, root: &Path) -> anyhow::Result<()> {
    println!(
        "bench log: {} records of {} bytes, {} producers, fsync {:?}, compression {:?}, payload {:?}, in {}",
        args.records, args.size, args.producers, policy, args.compression, args.payload, root.display()
    );
    let raw = raw_fdatasync_rate(root, args.raw_seconds)?;
    println!("raw write+fdatasync: {raw:.0}/s (the ceiling for one producer; {} producers x raw = {:.0}/s)", args.producers, raw * args.producers as f64);
    let tidewell = bench_tidewell(args, policy, &root.join("tidewell"))?;
    print_figures("tidewell", &tidewell, args.size);
    let sqlite = if args.no_sqlite {
        None
    } else {
        sqlite_side(args, &root.join("sqlite"))?
    };
    if let Some(sqlite) = &sqlite {
        print_figures("sqlite  ", sqlite, args.size);
    }
    println!("---");
    println!(
        "tidewell vs {} x raw fdatasync rate: {:.2}",
        args.producers,
        tidewell.records_per_s / (raw * args.producers as f64)
    );
    if let Some(sqlite) = sqlite {
        println!(
            "tidewell / sqlite records/s: {:.2}x",
            tidewell.records_per_s / sqlite.records_per_s
        );
        println!(
            "tidewell / sqlite bytes on disk: {:.2}",
            tidewell.disk_bytes_per_record / sqlite.disk_bytes_per_record
        );
    }
    Ok(())
}

fn print_figures(name: &str, f: &Figures, size: usize) {
    println!(
        "{name}: {:>9.0} records/s  {:>6.2} MB/s  {:>7.0} fsyncs/s  {:>6.1} bytes on disk/record ({:+.1} vs payload)",
        f.records_per_s,
        f.mb_per_s,
        f.fsyncs_per_s,
        f.disk_bytes_per_record,
        f.disk_bytes_per_record - size as f64
    );
    if let Some(us) = f.fsync_us {
        println!(
            "{name}  mean fsync {us:.0} us, {:.1} records per fsync",
            f.records_per_s / f.fsyncs_per_s.max(1.0)
        );
    }
}

/// Appends `size`-byte writes to a fresh file in `dir`, each followed by fdatasync.
fn raw_fdatasync_rate(dir: &Path, seconds: f64) -> anyhow::Result<f64> {
    let path = dir.join("raw-fdatasync");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let buf = [b'x'; 100];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        file.write_all(&buf)?;
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    fs::remove_file(&path)?;
    Ok(rate)
}

pub fn bench_tidewell(
    args: &BenchArgs,
    policy: FsyncPolicy,
    dir: &Path,
) -> anyhow::Result<Figures> {
    let compression = match args.compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::Zstd => Compression::Zstd,
    };
    let topic = TopicConfig {
        fsync: policy,
        compression,
        ..TopicConfig::default()
    };
    let mut config = LogConfig::new(dir).with_topic("bench", topic);
    config.min_free_bytes = 0;
    let log = Arc::new(Log::open(Arc::new(OsStorage), config)?);
    let per_producer = args.records / args.producers.max(1);
    let started = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let log = log.clone();
            let (kind, size) = (args.payload, args.size);
            std::thread::spawn(move || -> anyhow::Result<()> {
                for seq in 0..per_producer {
                    let value = payload(kind, size, p, seq);
                    let record = Record {
                        timestamp_ms: crate::log::now_ms(),
                        value,
                        ..Record::default()
                    };
                    log.append("bench", Partition(0), vec![record])?.wait()?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    let elapsed = started.elapsed();
    let fsyncs = Stats::get(&log.stats().fsyncs);
    let fsync_us = Stats::get(&log.stats().fsync_micros_total) as f64 / fsyncs.max(1) as f64;
    drop(log);
    let total = per_producer * args.producers;
    let mut out = figures(total, args.size, elapsed, fsyncs, dir_bytes(dir)?);
    out.fsync_us = Some(fsync_us);
    Ok(out)
}

fn figures(
    records: usize,
    size: usize,
    elapsed: Duration,
    fsyncs: u64,
    disk_bytes: u64,
) -> Figures {
    let secs = elapsed.as_secs_f64();
    Figures {
        records_per_s: records as f64 / secs,
        mb_per_s: (records * size) as f64 / secs / 1e6,
        fsyncs_per_s: fsyncs as f64 / secs,
        disk_bytes_per_record: disk_bytes as f64 / records as f64,
        fsync_us: None,
    }
}

/// Bytes of all files under `dir` (segments and indexes, or the database).
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(feature = "bench-sqlite")]
fn sqlite_side(args: &BenchArgs, dir: &Path) -> anyhow::Result<Option<Figures>> {
    fs::create_dir_all(dir)?;
    Ok(Some(sqlite::bench(args, dir)?))
}

#[cfg(not(feature = "bench-sqlite"))]
fn sqlite_side(_args: &BenchArgs, _dir: &Path) -> anyhow::Result<Option<Figures>> {
    println!("sqlite: not built in (feature bench-sqlite)");
    Ok(None)
}

#[cfg(feature = "bench-sqlite")]
mod sqlite {
    use super::*;
    use rusqlite::{params, Connection};

    fn connect(path: &Path) -> anyhow::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    /// The store NanoMQ buffers into: one row per record, each committed as
    /// its own transaction by its producer.
    pub fn bench(args: &BenchArgs, dir: &Path) -> anyhow::Result<Figures> {
        let path = dir.join("bench.db");
        connect(&path)?.execute_batch(
            "CREATE TABLE records (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, payload BLOB NOT NULL)",
        )?;
        let per_producer = args.records / args.producers.max(1);
        let started = Instant::now();
        let handles: Vec<_> = (0..args.producers)
            .map(|p| {
                let path = path.clone();
                let (kind, size) = (args.payload, args.size);
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let conn = connect(&path)?;
                    let mut insert = conn
                        .prepare("INSERT INTO records (ts, key, payload) VALUES (?1, NULL, ?2)")?;
                    for seq in 0..per_producer {
                        let value = payload(kind, size, p, seq);
                        insert.execute(params![crate::log::now_ms(), &value[..]])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("sqlite producer panicked"))??;
        }
        let elapsed = started.elapsed();
        // Every commit under synchronous=FULL in WAL mode is one fsync of the WAL.
        let total = per_producer * args.producers;
        let conn = connect(&path)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        drop(conn);
        Ok(figures(
            total,
            args.size,
            elapsed,
            total as u64,
            dir_bytes(dir)?,
        ))
    }
}
