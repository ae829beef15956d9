#!/usr/bin/env bash
# Runs a cross build under qemu-user: --version, then a smoke run (the
# gateway on loopback, one mosquitto_pub, `log dump` shows the record), then
# (when tansu is installed) a replication run to a tansu broker checked with
# confluent-kafka, and reports the stripped size and the resident memory
# idle and replicating.
#
#   cross/smoke.sh arm64|armhf [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh
arch="${1:?usage: cross/smoke.sh arm64|armhf [BINARY]}"
cross_arch "$arch"
bin="${2:-$(cross_binary "$arch")}"
# The multiarch glibc (libc6:arm64, libc6:armhf) must be the one loaded: under
# the cross sysroot's older glibc (-L /usr/aarch64-linux-gnu) every thread
# creation spins forever in qemu-user (seen with qemu 7.2 and 10.0), which is
# what made an earlier probe "hang"; a plain C pthread_create shows the same.
qemu=("$QEMU")
work="$(mktemp -d)"
gateway=""
broker=""
cleanup() {
    [ -n "$gateway" ] && kill "$gateway" 2>/dev/null
    [ -n "$broker" ] && kill "$broker" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The resident memory of the guest's mappings only: qemu-user's own binary,
# heap, per-thread malloc arenas and translated-code buffer (mapped above
# 0x7f0000000000, or named) are what a Pi running the binary natively does
# not have. qemu places guest mappings in the guest's range (0x55xxxxxxxx).
guest_rss_kb() {
    awk -v qemu="$(readlink -f "$(command -v "${qemu[0]}")")" '
        /^[0-9a-f]+-[0-9a-f]+ / {
            start = substr($1, 1, index($1, "-") - 1)
            high = length(start) > 12 || (length(start) == 12 && start >= "7f0000000000")
            own = ($6 == qemu || $6 ~ /^\[/ || high || ($2 ~ /x/ && $6 == ""))
        }
        /^Rss:/ { if (!own) sum += $2 }
        END { print sum }' "/proc/$1/smaps"
}

# Starts the gateway under qemu with CONFIG, its stderr in STDERR; waits for
# the ready line and sets $gateway (pid), $ready and $mqtt (host:port).
start_gateway() { # config stderr
    "${qemu[@]}" "$bin" run --config "$1" 2> "$2" &
    gateway=$!
    for _ in $(seq 1 600); do
        grep -q "^tidewell: ready" "$2" && break
        kill -0 "$gateway" 2>/dev/null || { cat "$2"; echo "smoke: the gateway died"; exit 1; }
        sleep 0.1
    done
    ready="$(grep "^tidewell: ready" "$2")" || { cat "$2"; echo "smoke: not ready after 60 s"; exit 1; }
    mqtt="$(sed -n 's/.* mqtt=\([^ ]*\).*/\1/p' <<<"$ready")"
}

echo "smoke ($arch): $("${qemu[@]}" "$bin" --version) ($(stat -c %s "$bin") bytes stripped)"

cat > "$work/tidewell.toml" <<TOML
data_dir = "$work/data"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
TOML
start_gateway "$work/tidewell.toml" "$work/stderr"
rss_kb="$(awk '/^VmRSS/ {print $2}' "/proc/$gateway/status")"
echo "smoke: ready ($ready); idle RSS under qemu ${rss_kb} kB, of which the guest's own mappings $(guest_rss_kb "$gateway") kB"

mosquitto_pub -h "${mqtt%:*}" -p "${mqtt##*:}" -q 1 -i pi1 -t devices/pi1/telemetry -m '{"temp_c":21.5}'
dump="$("${qemu[@]}" "$bin" log dump --data-dir "$work/data")"
grep -q '"payload":"{\\"temp_c\\":21.5}"' <<<"$dump" || { echo "$dump"; echo "smoke: record missing from log dump"; exit 1; }
echo "smoke: mosquitto_pub -> log dump OK"
kill -TERM "$gateway"
wait "$gateway"
gateway=""
echo "smoke: clean stop OK"

# Replication from the cross build: a tansu broker on the host, the
# gateway under qemu-user mirroring to it, confluent-kafka reading it back.
if ! tansu="$(command -v tansu || ls "$HOME/.cargo/bin/tansu" 2>/dev/null)"; then
    echo "smoke: tansu not installed, replication smoke skipped"
    exit 0
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$work/broker"
(cd "$work/broker" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db) \
    > "$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
(cd "$work/broker" && "$tansu" topic create pi-1.ingest --partitions 1 --broker "tcp://127.0.0.1:$port")
cat > "$work/t2.toml" <<TOML
data_dir = "$work/data2"
gateway_id = "pi-1"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[upstream]
bootstrap_servers = "127.0.0.1:$port"
TOML
start_gateway "$work/t2.toml" "$work/stderr2"
seq 1 100 | sed 's/^/reading-/' | mosquitto_pub -h "${mqtt%:*}" -p "${mqtt##*:}" -q 1 -i pi1 -t devices/pi1/telemetry -l
python3 - "$port" <<'PY' || { tail -20 "$work/stderr2"; echo "smoke: replication from $arch failed"; exit 1; }
import sys, time
from confluent_kafka import Consumer, TopicPartition
c = Consumer({'bootstrap.servers': '127.0.0.1:' + sys.argv[1], 'group.id': 'smoke',
              'enable.auto.commit': False})
deadline = time.time() + 120
while c.get_watermark_offsets(TopicPartition('pi-1.ingest', 0), timeout=10)[1] < 100:
    if time.time() > deadline:
        sys.exit('timed out waiting for 100 records upstream')
    time.sleep(0.5)
c.assign([TopicPartition('pi-1.ingest', 0, 0)])
seen = []
while len(seen) < 100:
    m = c.poll(10)
    if m is None or m.error():
        sys.exit('consume: %s' % (m and m.error()))
    h = dict(m.headers() or [])
    assert h['tidewell.gateway_id'] == b'pi-1', h
    seen.append(m.value())
assert seen == [b'reading-%d' % i for i in range(1, 101)], seen[:3]
print('smoke: 100 records replicated from the cross build, in order, with headers')
PY
rss_kb="$(awk '/^VmRSS/ {print $2}' "/proc/$gateway/status")"
echo "smoke: RSS under qemu with replication ${rss_kb} kB, guest's own mappings $(guest_rss_kb "$gateway") kB"
kill -TERM "$gateway"
wait "$gateway"
gateway=""
echo "smoke: replication smoke OK"
