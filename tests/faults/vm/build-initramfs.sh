#!/usr/bin/env bash
# Builds the power-cut VM: Debian's cloud kernel and an initramfs holding
# busybox, the virtio modules, the gateway binary with its shared libraries,
# a gateway configuration and an /init that runs it on the virtio disk.
#
#   build-initramfs.sh --binary PATH --config PATH --out DIR
#
# Writes DIR/vmlinuz and DIR/initramfs.cpio (uncompressed: decompressing
# under TCG emulation costs more than reading a few more MB). The Debian
# packages are downloaded once with `apt-get download` (no root needed, the
# host kernel is not touched) and unpacked under
# ${TIDEWELL_CACHE:-$HOME/.cache/tidewell}/vm/; later runs only repack.
# TIDEWELL_VM_KERNEL_PKG names another kernel package (default: whatever
# linux-image-cloud-amd64 depends on).
#
# The guest (see the /init below): the ext4 disk /dev/vda (made on the host)
# is mounted on /data with default options (data=ordered), eth0 is
# 10.0.2.15/24 behind qemu's user network, and the gateway runs as
# `tidewell run --config /etc/tidewell.toml` with its stderr on the console
# (ttyS0), under the descriptor limit of systemd/tidewell.service
# (LimitNOFILE=16384; tidewell.nofile=N on the kernel command line sets
# another). Marker lines on the console, for the host:
#   tidewell-init: starting gateway     just before exec of the gateway
#   tidewell-init: FAILED <what>        the guest could not set itself up
set -euo pipefail

binary="" config="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --config) config="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 --binary PATH --config PATH --out DIR" >&2; exit 2 ;;
    esac
done
[ -x "$binary" ] && [ -f "$config" ] && [ -n "$out" ] || {
    echo "usage: $0 --binary PATH --config PATH --out DIR" >&2
    exit 2
}

cache="${TIDEWELL_CACHE:-$HOME/.cache/tidewell}/vm"
mkdir -p "$cache/debs" "$out"
# One builder at a time fills the cache (tests may run in parallel).
exec 9>"$cache/.lock"
flock 9

need() {
    command -v "$1" >/dev/null || { echo "$0: $1 not found (apt-get install -y $2)" >&2; exit 1; }
}
need apt-get apt
need dpkg-deb dpkg
need cpio cpio
need ldd libc-bin

# Downloads package $1 into the cache once; prints the .deb path.
fetch_deb() {
    local pkg="$1" deb
    deb=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        # apt-get download writes into the current directory.
        (cd "$cache/debs" && apt-get download -q "$pkg" >&2)
        deb=$(ls "$cache/debs/${pkg}"_*.deb | head -n1)
    fi
    echo "$deb"
}

# Unpacks a .deb once into $cache/root-<package>; prints that directory.
unpack() {
    local deb="$1" name dir
    name=$(basename "$deb" .deb)
    dir="$cache/root-$name"
    if [ ! -e "$dir/.done" ]; then
        rm -rf "$dir"
        dpkg-deb -x "$deb" "$dir"
        touch "$dir/.done"
    fi
    echo "$dir"
}

kernel_pkg="${TIDEWELL_VM_KERNEL_PKG:-}"
if [ -z "$kernel_pkg" ]; then
    if [ -s "$cache/kernel-package" ]; then
        kernel_pkg=$(cat "$cache/kernel-package")
    else
        resolve() {
            apt-cache depends linux-image-cloud-amd64 2>/dev/null \
                | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
        }
        kernel_pkg=$(resolve)
        # Package lists removed (container images do): fetch them, as root.
        if [ -z "$kernel_pkg" ] && [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq >&2 && kernel_pkg=$(resolve)
        fi
        [ -n "$kernel_pkg" ] || {
            echo "$0: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2
            exit 1
        }
        echo "$kernel_pkg" >"$cache/kernel-package"
    fi
fi
kroot=$(unpack "$(fetch_deb "$kernel_pkg")")
broot=$(unpack "$(fetch_deb busybox-static)")
kver=$(ls "$kroot/lib/modules" | head -n1)
moddir="$kroot/lib/modules/$kver"
busybox="$broot/bin/busybox"
[ -f "$kroot/boot/vmlinuz-$kver" ] && [ -x "$busybox" ] || {
    echo "$0: unexpected package layout in $kroot or $broot" >&2
    exit 1
}

# The packages ship no modules.dep (depmod runs at install): read each
# module's own `depends=` from its .modinfo section and order dependencies
# first.
declare -A mod_path=()
while IFS= read -r ko; do
    name="${ko##*/}"
    name="${name%.ko}"
    mod_path[${name//-/_}]="$ko"
done < <(find "$moddir/kernel" -name '*.ko')
declare -A loaded=()
order=()
add_module() {
    local name="${1//-/_}" deps dep
    [ -n "${loaded[$name]:-}" ] && return 0
    # Built into this kernel: nothing to load.
    grep -q "/${name}.ko\$\|/${1}.ko\$" "$moddir/modules.builtin" && return 0
    [ -n "${mod_path[$name]:-}" ] || { echo "$0: module $1 not in $kernel_pkg" >&2; exit 1; }
    loaded[$name]=1
    deps=$(grep -a -o 'depends=[A-Za-z0-9_,-]*' "${mod_path[$name]}" | head -n1 | cut -d= -f2)
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    order+=("$name")
}
for m in virtio_pci virtio_blk virtio_net virtio_rng; do
    add_module "$m"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,data,tmp,lib/modules,usr/bin}
cp "$busybox" "$root/bin/busybox"
for name in "${order[@]}"; do
    cp "${mod_path[$name]}" "$root/lib/modules/$name.ko"
    echo "$name" >>"$root/etc/modules.load"
done

# The gateway and every library ldd names, at the same paths.
strip -o "$root/usr/bin/tidewell" "$binary" 2>/dev/null || cp "$binary" "$root/usr/bin/tidewell"
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp "$config" "$root/etc/tidewell.toml"
echo "5f0e1d2c3b4a59687766554433221100" >"$root/etc/machine-id"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
fail() { echo "tidewell-init: FAILED $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.load); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
n=0
while [ ! -b /dev/vda ] || [ ! -e /sys/class/net/eth0 ]; do
    n=$((n + 1)); [ "$n" -lt 500 ] || fail "no /dev/vda or eth0"
    usleep 10000
done
mount -t ext4 /dev/vda /data || fail "mount /dev/vda"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up \
    && ip route add default via 10.0.2.2 || fail "eth0"
# Descriptor limit: tidewell.nofile=N on the kernel command line, default
# that of systemd/tidewell.service (LimitNOFILE=16384).
nofile=16384
for word in $(cat /proc/cmdline); do
    case "$word" in tidewell.nofile=*) nofile="${word#tidewell.nofile=}" ;; esac
done
ulimit -n "$nofile" || fail "ulimit -n $nofile"
echo "tidewell-init: starting gateway"
# Through cat: stderr is then a pipe, not the console tty, so no colours.
set -o pipefail
TIDEWELL_LOG=info /usr/bin/tidewell run --config /etc/tidewell.toml </dev/null 2>&1 | cat
echo "tidewell-init: gateway exited with status $?"
sync
poweroff -f
EOF
chmod 0755 "$root/init"

(cd "$root" && find . -print0 | sort -z | cpio --quiet -o -0 -H newc -R 0:0) >"$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
cp "$kroot/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "kernel $kver, modules: ${order[*]}" >&2
