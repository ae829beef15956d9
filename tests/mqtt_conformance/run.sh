#!/usr/bin/env bash
# Runs an independent MQTT 5 broker test suite, unmodified, against Mosquitto 2
# and a Tidewell gateway side by side, and prints one row per test.
#
# The suite: tests/test_mqttv5.py of the paho-mqtt sdist on PyPI (Eclipse Paho's
# port of paho.mqtt.testing's interoperability/client_test5.py onto the Paho
# Python client; see README.md for why this one). Its file is checked against
# a pinned SHA-256, so it runs as published; shim/ only tells it the port of the
# broker under test (the suite would otherwise start the Paho test broker).
#
# Exit status: 1 if a test Mosquitto passes fails on Tidewell and is not in
# allowlist.txt (a Tidewell failure is retried once first: the suite has
# timing-sensitive tests), 2 if the suite or a broker could not be set up.
#
#   TIDEWELL_BIN   the gateway binary (default: target/debug/tidewell, built by
#                  the workspace tests; built here if missing)
#   CONFORMANCE_ONLY   space-separated test names to run (default: all)
#   CONFORMANCE_KEEP   set to keep the work directory (broker logs, per-test output)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

PAHO_VERSION=2.1.0
PAHO_SDIST_SHA256=12d6e7511d4137555a3f6ea167ae846af2c7357b10bc6fa4f7c3968fc1723834
SUITE_SHA256=a8d6679b055e65f9dc6849a29e6bb23794e9d540c159d17ea27ff7916ec0bca0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tidewell/mqtt-conformance"
SDIST_DIR="$CACHE/paho_mqtt-$PAHO_VERSION"
TEST_TIMEOUT_S=30

fail_setup() { echo "mqtt conformance: $*" >&2; exit 2; }

# --- the suite, from PyPI, once (cached) -------------------------------------
install_suite() {
    [ -f "$SDIST_DIR/.verified" ] && return
    mkdir -p "$CACHE"
    local dl
    dl="$(mktemp -d)"
    echo "mqtt conformance: downloading the paho-mqtt $PAHO_VERSION sdist (PyPI)"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$dl" "paho-mqtt==$PAHO_VERSION" \
        || fail_setup "pip download paho-mqtt==$PAHO_VERSION failed"
    local tarball="$dl/paho_mqtt-$PAHO_VERSION.tar.gz"
    echo "$PAHO_SDIST_SHA256  $tarball" | sha256sum --check --quiet \
        || fail_setup "the paho-mqtt $PAHO_VERSION sdist does not have the pinned SHA-256"
    rm -rf "$SDIST_DIR"
    tar -xzf "$tarball" -C "$CACHE"
    rm -rf "$dl"
    touch "$SDIST_DIR/.verified"
}

install_suite
SUITE="$SDIST_DIR/tests/test_mqttv5.py"
echo "$SUITE_SHA256  $SUITE" | sha256sum --check --quiet \
    || fail_setup "$SUITE differs from the published file (pinned SHA-256)"
command -v mosquitto >/dev/null || fail_setup "mosquitto is not installed (Debian package mosquitto)"

BIN="${TIDEWELL_BIN:-$ROOT/target/debug/tidewell}"
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build -p tidewell --quiet) || fail_setup "cannot build $BIN"
fi

WORK="$(mktemp -d)"
PIDS=()
# The runners, then the brokers they started (each wrote its pid file).
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for pidfile in "$WORK"/*/pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -n "${CONFORMANCE_KEEP:-}" ]; then echo "mqtt conformance: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- the two brokers, on free loopback ports ----------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 20 s for a TCP listener on 127.0.0.1:$1.
await_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

# start_mosquitto DIR: a Mosquitto 2 with its defaults, anonymous, on loopback;
# prints its port.
start_mosquitto() {
    local port
    port="$(free_port)"
    mkdir -p "$1"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$1/mosquitto.conf"
    mosquitto -c "$1/mosquitto.conf" > "$1/broker.log" 2>&1 &
    echo "$!" > "$1/pid"
    await_port "$port" || fail_setup "mosquitto did not listen (see $1/broker.log)"
    echo "$port"
}

# start_tidewell DIR: the gateway with tidewell.toml; prints its MQTT port.
start_tidewell() {
    mkdir -p "$1"
    sed "s|@DATA_DIR@|$1/data|" "$HERE/tidewell.toml" > "$1/tidewell.toml"
    "$BIN" run --config "$1/tidewell.toml" > "$1/stdout.log" 2> "$1/broker.log" &
    echo "$!" > "$1/pid"
    local deadline=$((SECONDS + 30)) port=""
    while [ -z "$port" ] && [ $SECONDS -lt $deadline ]; do
        port="$(sed -n 's/^tidewell: ready.* mqtt=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1/broker.log")"
        [ -n "$port" ] || sleep 0.1
    done
    [ -n "$port" ] || fail_setup "the gateway did not get ready (see $1/broker.log)"
    echo "$port"
}

# --- the suite, one process per test (a hung test cannot stop the others) -----
SUITE_PATH="$HERE/shim:$SDIST_DIR/src:$SDIST_DIR/tests"
if [ -n "${CONFORMANCE_ONLY:-}" ]; then
    read -r -a TESTS <<< "$CONFORMANCE_ONLY"
else
    # The suite's own loader: a test commented out in the file is not one.
    mapfile -t TESTS < <(cd "$WORK" && PYTHONPATH="$SUITE_PATH" python3 -B -W ignore -c \
        'import unittest, test_mqttv5; print("\n".join(unittest.TestLoader().getTestCaseNames(test_mqttv5.Test)))')
    [ "${#TESTS[@]}" -ge 20 ] || fail_setup "found only ${#TESTS[@]} tests in $SUITE"
fi

allowed() { grep -qE "^$1([[:space:]]|$)" "$HERE/allowlist.txt"; }

# run_one DIR PORT TEST: exit status of the test; its output in DIR/TEST.log.
run_one() {
    # cwd: the suite appends the relative "paho.mqtt.testing/interoperability/"
    # to sys.path; the empty work directory keeps that from finding anything.
    (cd "$WORK" && CONFORMANCE_PORT="$2" PYTHONPATH="$SUITE_PATH" PYTHONDONTWRITEBYTECODE=1 \
        timeout "$TEST_TIMEOUT_S" python3 -m unittest "test_mqttv5.Test.$3") > "$1/$3.log" 2>&1
}

# run_shard BROKER SHARD: starts a broker of its own and runs every SHARDS-th
# test on it; one line "TEST pass|fail|flaky" per test into
# $WORK/BROKER.SHARD.results. A Tidewell failure that is not allow-listed is
# retried once (the first run's output is kept as TEST.first.log).
run_shard() {
    local dir="$WORK/$1.$2" port i name
    port="$("start_$1" "$dir")"
    for ((i = $2; i < ${#TESTS[@]}; i += SHARDS)); do
        name="${TESTS[$i]}"
        if run_one "$dir" "$port" "$name"; then
            echo "$name pass"
        elif [ "$1" = tidewell ] && ! allowed "$name" \
            && mv "$dir/$name.log" "$dir/$name.first.log" && run_one "$dir" "$port" "$name"; then
            echo "$name flaky"
        else
            echo "$name fail"
        fi
    done > "$WORK/$1.$2.results"
    kill "$(cat "$dir/pid")" 2>/dev/null || true
}

# The tests of one broker run one after another (they share client ids and
# clear every retained message); separate brokers run side by side, SHARDS of
# each, to keep the run under a minute and a half.
SHARDS=2
started=$SECONDS
for broker in mosquitto tidewell; do
    for ((shard = 0; shard < SHARDS; shard++)); do
        run_shard "$broker" "$shard" &
        PIDS+=("$!")
    done
done
for pid in "${PIDS[@]}"; do wait "$pid" || fail_setup "a test runner failed"; done
PIDS=()
elapsed=$((SECONDS - started))

# --- the table -------------------------------------------------------------------
result_of() { cat "$WORK/$1".*.results | sed -n "s/^$2 //p"; }

printf '\nMQTT 5: paho-mqtt %s tests/test_mqttv5.py (%d tests, %d s)\n' "$PAHO_VERSION" "${#TESTS[@]}" "$elapsed"
printf '%-36s %-10s %-10s %s\n' test mosquitto tidewell note
mosq_pass=0 tide_pass=0 regressions=() stale=()
for name in "${TESTS[@]}"; do
    m="$(result_of mosquitto "$name")"
    t="$(result_of tidewell "$name")"
    note=""
    [ "$m" = pass ] && mosq_pass=$((mosq_pass + 1))
    case "$t" in pass|flaky) tide_pass=$((tide_pass + 1)) ;; esac
    [ "$t" = flaky ] && note="passed on retry"
    if [ "$m" = pass ] && [ "$t" = fail ]; then
        if allowed "$name"; then note="allow-listed"; else note="REGRESSION"; regressions+=("$name"); fi
    elif [ "$t" != fail ] && allowed "$name"; then
        note="passes: remove it from allowlist.txt"; stale+=("$name")
    fi
    printf '%-36s %-10s %-10s %s\n' "$name" "$m" "$t" "$note"
done
printf 'mosquitto: %d of %d passed; tidewell: %d of %d passed\n' \
    "$mosq_pass" "${#TESTS[@]}" "$tide_pass" "${#TESTS[@]}"

for name in "${regressions[@]}"; do
    printf '\n--- %s on tidewell ---\n' "$name"
    tail -n 25 "$WORK"/tidewell.*/"$name.log"
done
if [ "${#stale[@]}" -gt 0 ]; then
    echo "allow-listed but passing on tidewell (remove from allowlist.txt): ${stale[*]}"
fi
if [ "${#regressions[@]}" -gt 0 ]; then
    echo "mqtt conformance: FAILED: Mosquitto passes, Tidewell fails, not allow-listed: ${regressions[*]}"
    exit 1
fi
echo "mqtt conformance: every test Mosquitto passes passes on Tidewell or is allow-listed"
