#!/usr/bin/env bash
# Builds the armv7 (32-bit Raspberry Pi OS, Debian armhf: Pi 2, 3, Zero 2 W)
# `tidewell` without Docker, on Debian 12 (x86_64); see lib.sh for the
# toolchain. Installs what it needs (as root or via sudo), idempotently.
#
#   cross/build-armhf.sh              # -> target/cross/armv7-unknown-linux-gnueabihf/device/tidewell
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh
cross_build armhf "$@"
