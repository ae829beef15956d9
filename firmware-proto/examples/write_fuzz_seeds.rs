//! Writes the fuzz seed corpus (`fuzz/corpus/frame_decoder/seed-*`).
//!
//! Run from the crate root after changing the protocol:
//! `cargo run -p firmware-proto --example write_fuzz_seeds`.

#[path = "../tests/common/seeds.rs"]
mod seeds;

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(seeds::CORPUS_DIR);
    std::fs::create_dir_all(&dir)?;
    for (name, bytes, _) in seeds::seed_files() {
        std::fs::write(dir.join(name), &bytes)?;
        println!("{name}: {} bytes", bytes.len());
    }
    Ok(())
}
