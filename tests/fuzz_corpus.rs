//! The fuzz targets' corpora (`gateway/fuzz/corpus/<target>/`, seeds and
//! every input that ever crashed a target) run through the same entry
//! points on stable Rust, plus a few thousand seeded mutations of each, so
//! a regression fails `cargo test` even where cargo-fuzz cannot run.

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tidewell::fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("mqtt_stream", fuzzing::mqtt_stream),
    ("mqtt_ws_stream", fuzzing::mqtt_ws_stream),
    ("record_batch", fuzzing::record_batch),
    ("segment_recovery", fuzzing::segment_recovery),
];

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_corpus_input_runs_clean() {
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "{target}: empty corpus");
        for (path, bytes) in inputs {
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
        }
    }
}

/// xorshift: the same mutations on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn mutate(seed: &[u8], state: &mut u64) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + next(state) % 4 {
        let pos = (next(state) as usize) % (out.len() + 1);
        match next(state) % 4 {
            0 if pos < out.len() => out[pos] ^= 1 << (next(state) % 8),
            1 if pos < out.len() => out[pos] = next(state) as u8,
            2 => out.insert(pos, next(state) as u8),
            _ => out.truncate(pos),
        }
    }
    out
}

#[test]
fn seeded_mutations_of_the_corpus_run_clean() {
    for (target, run) in TARGETS {
        let seeds = corpus(target);
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let rounds = if target == "segment_recovery" {
            300
        } else {
            3000
        };
        for i in 0..rounds {
            let (path, seed) = &seeds[i % seeds.len()];
            let input = mutate(seed, &mut state);
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(
                outcome.is_ok(),
                "{target} panicked on a mutation of {}: {input:?}",
                path.display()
            );
        }
    }
}
