//! `tidewell bench open`: how long opening a large log takes. Recovery reads
//! only the tail of each segment (from its last trusted index entry, or from
//! the recovery point in the newest one), so this should stay far below a
//! second for a gigabyte.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use crate::log::partition::{PartitionMeta, META_FILE};
use crate::log::{
    checkpoint, FsyncPolicy, Log, LogConfig, OsStorage, Partition, Record, TopicConfig,
};

#[derive(Args, Debug, Clone)]
pub struct OpenArgs {
    /// Directory to run in; a fresh subdirectory is used and removed.
    #[arg(long, default_value = "tidewell-bench")]
    pub dir: PathBuf,
    /// Size of the log to build, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
}

pub fn run(args: &OpenArgs) -> anyhow::Result<()> {
    let root = args.dir.join(format!("open-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn config(dir: &Path) -> LogConfig {
    let topic = TopicConfig {
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    };
    let mut config = LogConfig::new(dir).with_topic("bench", topic);
    config.min_free_bytes = 0;
    config
}

fn run_in(args: &OpenArgs, root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let records = fill(root, args.mib)?;
    println!(
        "bench open: wrote {} MiB ({records} records) in {:.1} s",
        args.mib,
        started.elapsed().as_secs_f64()
    );
    let (clean, _) = time_open(root)?;
    println!(
        "open after a clean stop:                  {:>8.1} ms",
        clean * 1e3
    );
    tear_newest_segment(root)?;
    let (crashed, findings) = time_open(root)?;
    println!(
        "open after a crash (torn tail, no recovery point): {:>8.1} ms ({findings} findings)",
        crashed * 1e3
    );
    Ok(())
}

/// Appends 100-byte records in batches of 1000 until the log holds `mib` MiB.
fn fill(root: &Path, mib: u64) -> anyhow::Result<u64> {
    let log = Log::open(Arc::new(OsStorage), config(root))?;
    let batch: Vec<Record> = (0..1000)
        .map(|i| Record {
            timestamp_ms: crate::log::now_ms(),
            value: Bytes::from(vec![b'a' + (i % 26) as u8; 100]),
            ..Record::default()
        })
        .collect();
    let target = mib << 20;
    let mut records = 0u64;
    while log
        .summary("bench", Partition(0))
        .map_or(0, |p| p.size_bytes)
        < target
    {
        log.append("bench", Partition(0), batch.clone())?.wait()?;
        records += batch.len() as u64;
    }
    log.close();
    Ok(records)
}

fn time_open(root: &Path) -> anyhow::Result<(f64, usize)> {
    let started = Instant::now();
    let log = Log::open(Arc::new(OsStorage), config(root))?;
    let took = started.elapsed().as_secs_f64();
    let findings = log.findings().len();
    log.close();
    Ok((took, findings))
}

/// Leaves the newest segment as a crash would at its worst: half a batch at
/// the end and no recovery point, so the whole segment is scanned.
fn tear_newest_segment(root: &Path) -> anyhow::Result<()> {
    let pdir = root.join("bench").join("0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&pdir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let newest = logs.last().context("no segment")?;
    OpenOptions::new()
        .append(true)
        .open(newest)?
        .write_all(&[1u8; 700])?;
    let storage = OsStorage;
    let mut meta: PartitionMeta =
        checkpoint::read(&storage, &pdir.join(META_FILE))?.unwrap_or_default();
    meta.synced = 0;
    checkpoint::write(&storage, &pdir, META_FILE, &meta)?;
    Ok(())
}
