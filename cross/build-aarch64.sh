#!/usr/bin/env bash
# Builds the aarch64 (Raspberry Pi OS 64-bit, Debian arm64) `tidewell`
# without Docker, on Debian 12 (x86_64); see lib.sh for the toolchain.
# Installs what it needs (as root or via sudo), idempotently.
#
#   cross/build-aarch64.sh            # -> target/cross/aarch64-unknown-linux-gnu/device/tidewell
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh
cross_build arm64 "$@"
