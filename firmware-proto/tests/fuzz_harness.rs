//! Runs the fuzz target's checks without libFuzzer: on the seed corpus, whose
//! files must match what `examples/write_fuzz_seeds.rs` writes, and on random
//! input built from frames, garbage and random splits.

mod common;

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use common::seeds::{seed_files, CORPUS_DIR};
use common::{decode_all, frame, message, same_message};
use proptest::collection::vec;
use proptest::prelude::*;

#[test]
fn seed_corpus_is_current_and_decodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS_DIR);
    for (name, expected_bytes, messages) in seed_files() {
        let bytes = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; run the write_fuzz_seeds example"));
        assert_eq!(
            bytes, expected_bytes,
            "{name} is stale; run the write_fuzz_seeds example"
        );
        let decoded: Vec<_> = decode_all(&bytes).into_iter().flatten().collect();
        assert_eq!(decoded.len(), messages.len(), "{name}");
        for (got, sent) in decoded.iter().zip(&messages) {
            assert!(same_message(got, sent), "{name}: {got:?} != {sent:?}");
        }
        fuzz_checks::check_frame_decoder(&bytes);
    }
}

proptest! {
    #[test]
    fn fuzz_checks_hold_on_random_bytes(data in vec(any::<u8>(), 0..3000)) {
        fuzz_checks::check_frame_decoder(&data);
    }

    #[test]
    fn fuzz_checks_hold_on_damaged_frame_streams(
        items in vec((message(), vec(any::<u8>(), 0..8)), 0..6),
    ) {
        let data: Vec<u8> = items
            .iter()
            .flat_map(|(message, noise)| frame(message).into_iter().chain(noise.iter().copied()))
            .collect();
        fuzz_checks::check_frame_decoder(&data);
    }
}
