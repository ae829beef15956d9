//! `tidewell log verify`: reads every batch of every segment, checks CRCs,
//! record structure, offset continuity and the indexes.

use std::path::PathBuf;

use serde::Serialize;

use super::error::{StorageContext, StorageError};
use super::partition::{Finding, PartitionLog};
use super::recovery;
use super::segment::{read_batch_from, Segment};
use super::types::Offset;
use super::Log;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub position: Option<u64>,
    pub what: String,
    /// False for a torn tail, which recovery truncates at the next start.
    pub damage: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: u32,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    pub start_offset: u64,
    pub end_offset: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    pub fn damaged(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.problems.iter().any(|x| x.damage))
    }
}

pub fn verify(log: &Log) -> Result<Report, StorageError> {
    let mut partitions = Vec::new();
    for topic in log.topics() {
        for part in &topic.partitions {
            partitions.push(verify_partition(part)?);
        }
    }
    Ok(Report { partitions })
}

fn verify_partition(part: &PartitionLog) -> Result<PartitionReport, StorageError> {
    let segments: Vec<_> = part.state().segments.values().cloned().collect();
    let mut report = PartitionReport {
        topic: part.topic.clone(),
        partition: part.id.0,
        segments: segments.len(),
        batches: 0,
        records: 0,
        bytes: 0,
        start_offset: part.state().start_offset().0,
        end_offset: part.state().next_offset.0,
        problems: Vec::new(),
    };
    let recovery_point = Offset(part.state().meta.synced);
    for (i, seg) in segments.iter().enumerate() {
        let next_base = segments.get(i + 1).map(|s| Offset(s.base.0));
        verify_segment(seg, next_base, recovery_point, &mut report)?;
    }
    Ok(report)
}

fn verify_segment(
    seg: &Segment,
    next_base: Option<Offset>,
    recovery_point: Offset,
    report: &mut PartitionReport,
) -> Result<(), StorageError> {
    let file = seg.log_file();
    let len = file.len().context(&seg.log_path)?;
    let unsynced_from = if next_base.is_none() {
        recovery_point
    } else {
        Offset(u64::MAX)
    };
    let scan = recovery::scan(&**file, 0, Offset(seg.base.0), len, unsynced_from)
        .context(&seg.log_path)?;
    let mut problem = |position: Option<u64>, what: String, damage: bool| {
        report.problems.push(Problem {
            path: seg.log_path.clone(),
            position,
            what,
            damage,
        });
    };
    for span in &scan.corrupt {
        problem(
            Some(span.position),
            format!(
                "damaged batch, offsets {}..{} unreadable: {}",
                span.from, span.to, span.reason
            ),
            true,
        );
    }
    // Zeros after the last batch of the newest segment are its preallocated space.
    let tail = scan
        .tail
        .as_ref()
        .filter(|t| !(t.zeros && next_base.is_none()));
    if let Some(tail) = tail {
        let torn = next_base.is_none();
        let what = if torn {
            format!(
                "torn tail of {} bytes ({}); the next start truncates it",
                tail.bytes, tail.reason
            )
        } else {
            format!(
                "{} damaged bytes at the end of an older segment: {}",
                tail.bytes, tail.reason
            )
        };
        problem(Some(tail.position), what, !torn);
    }
    if let Some(next) = next_base {
        if scan.tail.is_none() && scan.next_offset != next {
            problem(
                None,
                format!(
                    "segment ends at offset {}, but the next one starts at {next}",
                    scan.next_offset
                ),
                true,
            );
        }
    }
    for batch in &scan.batches {
        let raw = read_batch_from(&**file, batch.position, len);
        match raw.map(|raw| super::segment::decode_raw(&raw)) {
            Ok(Ok(records)) => report.records += records.len() as u64,
            Ok(Err(e)) => problem(
                Some(batch.position),
                format!("batch passes its CRC but does not decode: {e}"),
                true,
            ),
            Err(_) => problem(
                Some(batch.position),
                "batch became unreadable during verify".into(),
                true,
            ),
        }
        report.batches += 1;
        report.bytes += batch.header.total_len();
    }
    let starts: std::collections::HashSet<(u64, u64)> = scan
        .batches
        .iter()
        .map(|b| (b.position, b.header.base_offset))
        .collect();
    for entry in seg.index_entries() {
        let position = u64::from(entry.position);
        let offset = seg.base.0 + u64::from(entry.relative_offset);
        if !starts.contains(&(position, offset)) {
            let what = format!(
                "index entry (offset {offset}, byte {position}) does not point at a batch start"
            );
            report.problems.push(Problem {
                path: seg.index_path.clone(),
                position: Some(position),
                what,
                damage: true,
            });
        }
    }
    Ok(())
}

/// What open found besides damage, one line each: rebuilt indexes, bad
/// checkpoints, stray files.
pub fn notes(log: &Log) -> Vec<String> {
    log.findings()
        .iter()
        .filter_map(|f| match f {
            Finding::IndexRebuilt { path } => Some(format!(
                "{}: index does not match its segment (rebuilt at the next start)",
                path.display()
            )),
            Finding::BadCheckpoint { path, what } => Some(format!("{}: {what}", path.display())),
            Finding::StrayFile { path } => {
                Some(format!("{}: unknown file (ignored)", path.display()))
            }
            _ => None,
        })
        .collect()
}

impl Report {
    /// The report as `tidewell log verify` prints it, ending in
    /// `verify: OK` or `verify: DAMAGED`.
    pub fn write_text(
        &self,
        notes: &[String],
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        for p in &self.partitions {
            writeln!(
                out,
                "{}/{}: offsets {}..{}, {} segments, {} batches, {} records, {} bytes",
                p.topic,
                p.partition,
                p.start_offset,
                p.end_offset,
                p.segments,
                p.batches,
                p.records,
                p.bytes
            )?;
            for problem in &p.problems {
                let at = problem
                    .position
                    .map(|x| format!(" at byte {x}"))
                    .unwrap_or_default();
                let level = if problem.damage { "DAMAGE" } else { "note" };
                writeln!(
                    out,
                    "  {level}: {}{at}: {}",
                    problem.path.display(),
                    problem.what
                )?;
            }
        }
        for note in notes {
            writeln!(out, "note: {note}")?;
        }
        let verdict = if self.damaged() { "DAMAGED" } else { "OK" };
        writeln!(out, "verify: {verdict}")
    }
}
