#!/usr/bin/env bash
# Builds the Debian package of tidewell for one architecture with dpkg-deb
# (no cargo-deb to install in CI): the binary, the systemd unit, the
# conffile /etc/tidewell/tidewell.toml, the man page, the commented example
# configuration, and maintainer scripts following Debian's conventions.
#
#   cross/deb/build.sh ARCH [--binary PATH] [--out DIR]
#
# ARCH is amd64 (tests), arm64 (Raspberry Pi OS 64-bit) or armhf (32-bit).
# Without --binary the binary is built: amd64 with `cargo build --release`,
# arm64 and armhf with cross/build-<arch>.sh. Prints the .deb's path last.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

usage() { echo "usage: $0 amd64|arm64|armhf [--binary PATH] [--out DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
arch="$1"; shift
binary=""
out="$root/target/deb"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) usage ;;
    esac
done

build_binary() {
    case "$arch" in
        amd64)
            (cd "$root" && "${CARGO:-cargo}" build --release -p tidewell >&2)
            echo "${CARGO_TARGET_DIR:-$root/target}/release/tidewell" ;;
        arm64)
            bash "$root/cross/build-aarch64.sh" >&2
            echo "${CARGO_TARGET_DIR:-$root/target/cross}/aarch64-unknown-linux-gnu/device/tidewell" ;;
        armhf)
            bash "$root/cross/build-armhf.sh" >&2
            echo "${CARGO_TARGET_DIR:-$root/target/cross}/armv7-unknown-linux-gnueabihf/device/tidewell" ;;
        *) usage ;;
    esac
}
case "$arch" in amd64|arm64|armhf) ;; *) usage ;; esac
[ -n "$binary" ] || binary="$(build_binary)"
[ -x "$binary" ] || { echo "deb: no executable at $binary" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/gateway/Cargo.toml" | head -1)"
debversion="${version}-1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$work/tidewell"
doc="$pkg/usr/share/doc/tidewell"

install -D -m 0755 "$binary" "$pkg/usr/bin/tidewell"
# A package's binary carries no debug symbols (the device profile strips already).
case "$arch" in
    amd64) strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/tidewell" ;;
    arm64) aarch64-linux-gnu-strip --strip-unneeded "$pkg/usr/bin/tidewell" ;;
    armhf) arm-linux-gnueabihf-strip --strip-unneeded "$pkg/usr/bin/tidewell" ;;
esac
# The repository's unit, pointing at the packaged binary.
install -d "$pkg/lib/systemd/system"
sed 's|/usr/local/bin/tidewell|/usr/bin/tidewell|g' "$root/systemd/tidewell.service" \
    > "$pkg/lib/systemd/system/tidewell.service"
chmod 0644 "$pkg/lib/systemd/system/tidewell.service"
install -D -m 0644 "$here/tidewell.toml" "$pkg/etc/tidewell/tidewell.toml"
install -D -m 0644 "$root/systemd/tidewell.toml" "$doc/examples/tidewell.toml"
install -D -m 0644 "$here/copyright" "$doc/copyright"
install -D -m 0644 "$here/lintian-overrides" "$pkg/usr/share/lintian/overrides/tidewell"
install -d "$pkg/usr/share/man/man1"
gzip -9n < "$here/tidewell.1" > "$pkg/usr/share/man/man1/tidewell.1.gz"
date="$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")"
printf 'tidewell (%s) stable; urgency=medium\n\n  * Built from the repository by cross/deb/build.sh.\n\n -- Tidewell maintainers <maintainers@tidewell.invalid>  %s\n' \
    "$debversion" "$date" | gzip -9n > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz" "$pkg/usr/share/man/man1/tidewell.1.gz"

install -d "$pkg/DEBIAN"
for script in postinst prerm postrm; do install -m 0755 "$here/$script" "$pkg/DEBIAN/$script"; done
echo /etc/tidewell/tidewell.toml > "$pkg/DEBIAN/conffiles"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f ! -path ./etc/\* -printf '%P\0' \
    | LC_ALL=C sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums" "$pkg/DEBIAN/conffiles"

# Shared-library dependencies as dpkg-shlibdeps finds them for this arch.
mkdir -p "$work/src/debian"
printf 'Source: tidewell\n\nPackage: tidewell\nArchitecture: any\n' > "$work/src/debian/control"
shlibs="$(cd "$work/src" && DEB_HOST_ARCH="$arch" dpkg-shlibdeps -O "$pkg/usr/bin/tidewell" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { echo "deb: dpkg-shlibdeps found no dependencies for $arch" >&2; exit 1; }
size_kb="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: tidewell
Version: $debversion
Architecture: $arch
Maintainer: Tidewell maintainers <maintainers@tidewell.invalid>
Installed-Size: $size_kb
Depends: $shlibs, adduser, init-system-helpers (>= 1.54~)
Section: net
Priority: optional
Homepage: https://github.com/tidewell/tidewell
Description: edge ingestion gateway with a power-loss-safe log
 Tidewell takes data from sensors (MQTT 3.1.1 and 5, serial lines, Modbus,
 the systemd journal, syslog), appends it to an on-device segment log that
 survives power loss, and replicates the log to Kafka when the uplink is
 there. An acknowledged message is on disk.
CONTROL

mkdir -p "$out"
deb="$out/tidewell_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
