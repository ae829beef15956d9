#!/usr/bin/env bash
# Runs every fuzz target of the gateway (and firmware-proto's frame decoder)
# for a bounded time each, on stable Rust (RUSTC_BOOTSTRAP lets cargo-fuzz
# pass its flags; no sanitizer, so no nightly needed). New inputs go to a
# scratch corpus under target/; the committed seeds in */fuzz/corpus/ are read
# only. A crash fails the run, and its input is copied into the committed
# corpus, where `cargo test --test fuzz_corpus` replays it from then on.
#
#   gateway/fuzz/run.sh [SECONDS_PER_TARGET]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

run() { # crate-dir target
    local dir="$1" target="$2"
    local scratch="target/fuzz-corpus/$(basename "$dir")/$target"
    mkdir -p "$scratch" "$dir/fuzz/corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! (cd "$dir" && cargo fuzz run -s none -O "$target" --fuzz-dir fuzz \
            "../$scratch" "fuzz/corpus/$target" -- -max_total_time="$seconds" \
            -artifact_prefix="../$scratch/crash-" 2>&1 | tail -3); then
        for crash in "$scratch"/crash-*; do
            [ -e "$crash" ] && cp "$crash" "$dir/fuzz/corpus/$target/regression-$(basename "$crash")"
        done
        echo "fuzz: $target crashed; inputs copied to $dir/fuzz/corpus/$target/ (commit them)"
        exit 1
    fi
}

for target in mqtt_stream mqtt_ws_stream record_batch segment_recovery; do
    run gateway "$target"
done
run firmware-proto frame_decoder
