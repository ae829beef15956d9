#!/usr/bin/env bash
# Fails if firmware-proto no longer links into a freestanding no_std binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"

if ! cargo build --release \
    --manifest-path "$here/Cargo.toml" \
    --target-dir "$workspace/target/nostd-check"; then
    echo "nostd-check: FAILED: firmware-proto needs std or alloc" >&2
    exit 1
fi
echo "nostd-check: firmware-proto links without std or alloc"
