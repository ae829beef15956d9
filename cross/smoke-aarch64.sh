#!/usr/bin/env bash
# Runs the aarch64 build under qemu-user: --version, then a smoke run (the
# gateway on loopback, one mosquitto_pub, `log dump` shows the record), and
# reports the stripped size and the idle resident memory.
#
#   cross/smoke-aarch64.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target/cross}/aarch64-unknown-linux-gnu/device/tidewell}"
# The arm64 multiarch glibc (libc6:arm64) must be the one loaded: under the
# cross sysroot's older glibc (-L /usr/aarch64-linux-gnu) every thread creation
# spins forever in qemu-user (seen with qemu 7.2 and 10.0), which is what made
# an earlier probe "hang"; a plain C pthread_create shows the same.
qemu=(qemu-aarch64-static)
work="$(mktemp -d)"
gateway=""
cleanup() { [ -n "$gateway" ] && kill "$gateway" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "smoke: $("${qemu[@]}" "$bin" --version) ($(stat -c %s "$bin") bytes stripped)"

cat > "$work/tidewell.toml" <<TOML
data_dir = "$work/data"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
TOML
"${qemu[@]}" "$bin" run --config "$work/tidewell.toml" 2> "$work/stderr" &
gateway=$!
for _ in $(seq 1 600); do
    grep -q "^tidewell: ready" "$work/stderr" && break
    kill -0 "$gateway" 2>/dev/null || { cat "$work/stderr"; echo "smoke: the gateway died"; exit 1; }
    sleep 0.1
done
ready="$(grep "^tidewell: ready" "$work/stderr")" || { cat "$work/stderr"; echo "smoke: not ready after 60 s"; exit 1; }
mqtt="$(sed -n 's/.* mqtt=\([^ ]*\).*/\1/p' <<<"$ready")"
rss_kb="$(awk '/^VmRSS/ {print $2}' "/proc/$gateway/status")"
echo "smoke: ready ($ready); idle RSS under qemu ${rss_kb} kB"

mosquitto_pub -h "${mqtt%:*}" -p "${mqtt##*:}" -q 1 -i pi1 -t devices/pi1/telemetry -m '{"temp_c":21.5}'
dump="$("${qemu[@]}" "$bin" log dump --data-dir "$work/data")"
grep -q '"payload":"{\\"temp_c\\":21.5}"' <<<"$dump" || { echo "$dump"; echo "smoke: record missing from log dump"; exit 1; }
echo "smoke: mosquitto_pub -> log dump OK"
kill -TERM "$gateway"
wait "$gateway"
gateway=""
echo "smoke: clean stop OK"
