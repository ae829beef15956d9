# Shared by the per-architecture scripts: builds tidewell for one Debian
# architecture with Debian's Rust 1.96 (rustc-web) and that architecture's
# standard library, the GNU cross toolchain, and librdkafka built by CMake
# against vendored OpenSSL and static zlib (our `device` feature).
# Source it, then call cross_build ARCH [cargo args...].
#
#   ARCH     Rust target                        GNU prefix
#   arm64    aarch64-unknown-linux-gnu          aarch64-linux-gnu
#   armhf    armv7-unknown-linux-gnueabihf      arm-linux-gnueabihf

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Sets TARGET, GNU, QEMU for a Debian architecture name.
cross_arch() {
    case "$1" in
        arm64) TARGET=aarch64-unknown-linux-gnu GNU=aarch64-linux-gnu QEMU=qemu-aarch64-static ;;
        armhf) TARGET=armv7-unknown-linux-gnueabihf GNU=arm-linux-gnueabihf QEMU=qemu-arm-static ;;
        *) echo "cross: unknown architecture $1 (arm64, armhf)" >&2; return 2 ;;
    esac
}

cross_install_packages() { # arch
    local arch="$1"
    local packages=(rustc-web cargo-web "libstd-rust-web-dev:$arch" "gcc-$GNU" "g++-$GNU"
                    qemu-user-static cmake libcurl4-openssl-dev "libcurl4-openssl-dev:$arch")
    dpkg --print-foreign-architectures | grep -qx "$arch" || as_root dpkg --add-architecture "$arch"
    local missing=()
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "cross: installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# The path of the built binary for ARCH.
cross_binary() { # arch
    cross_arch "$1"
    echo "${CARGO_TARGET_DIR:-target/cross}/$TARGET/device/tidewell"
}

cross_build() { # arch [cargo args...]
    local arch="$1"; shift
    cross_arch "$arch"
    cross_install_packages "$arch"
    local t="${TARGET//-/_}" T
    T="$(tr '[:lower:]' '[:upper:]' <<<"$t")"
    export RUSTC=/usr/bin/rustc
    export "CARGO_TARGET_${T}_LINKER=$GNU-gcc"
    export "CC_$t=$GNU-gcc" "CXX_$t=$GNU-g++" "AR_$t=$GNU-ar"
    # librdkafka's CMake build includes curl/curl.h even with curl disabled.
    export "CFLAGS_$t=-I/usr/include/$GNU"
    export PKG_CONFIG_ALLOW_CROSS=1
    # A target dir of its own: Debian's rustc and rustup's do not share artifacts.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cross}"
    # One build at a time on the machine (the same lock as the tests' cargo).
    flock -o /tmp/tidewell-cargo.lock /usr/bin/cargo build -p tidewell --target "$TARGET" \
        --profile device --no-default-features --features device "$@"
    local bin
    bin="$(cross_binary "$arch")"
    echo "cross: built $bin ($(stat -c %s "$bin") bytes, stripped)"
}
