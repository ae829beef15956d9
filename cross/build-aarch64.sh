#!/usr/bin/env bash
# Builds the aarch64 (Raspberry Pi OS 64-bit, Debian arm64) `tidewell`
# without Docker, on Debian 12 (x86_64): Debian's Rust 1.96 (rustc-web) with
# its arm64 standard library, the aarch64 GNU toolchain, and librdkafka built
# by CMake against vendored OpenSSL and static zlib (our `device` feature).
# Installs what it needs (as root or via sudo), idempotently.
#
#   cross/build-aarch64.sh            # -> target/aarch64-unknown-linux-gnu/device/tidewell
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

PACKAGES=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
          qemu-user-static cmake libcurl4-openssl-dev libcurl4-openssl-dev:arm64)

install_packages() {
    dpkg --print-foreign-architectures | grep -qx arm64 || as_root dpkg --add-architecture arm64
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "cross: installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

install_packages

export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# librdkafka's CMake build includes curl/curl.h even with curl disabled.
export CFLAGS_aarch64_unknown_linux_gnu="-I/usr/include/aarch64-linux-gnu"
export PKG_CONFIG_ALLOW_CROSS=1
# A target dir of its own: Debian's rustc and rustup's do not share artifacts.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cross}"

/usr/bin/cargo build -p tidewell --target aarch64-unknown-linux-gnu --profile device \
    --no-default-features --features device "$@"

bin="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/device/tidewell"
echo "cross: built $bin ($(stat -c %s "$bin") bytes, stripped)"
