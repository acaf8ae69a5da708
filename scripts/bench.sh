#!/usr/bin/env bash
# emiot - bench.sh BUILD_DIR [W]: runs the benchmarks (all, or workload W such
# as W1). Every figure is printed as one JSON line and collected in
# BUILD_DIR/bench-results.jsonl; docs/PERFORMANCE.md keeps the table.
set -euo pipefail
BUILD=${1:?usage: bench.sh BUILD_DIR [W]}
ONLY=${2:-}
. "$(dirname "$0")/lib.sh"
RESULTS="$BUILD/bench-results.jsonl"
: >"$RESULTS"
WORK=$(mktemp -d /tmp/emiot-bench-XXXXXX)
BROKER_PID=""
cleanup() { stop_pid "$BROKER_PID"; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
# Runs one benchmark: its output is shown and its JSON lines collected. A
# benchmark that fails (lost messages, failed messages, no broker) makes the
# whole run fail at the end, after the others have run.
FAILED=()
run() {
  local name=$1 out="$WORK/out.txt" rc=0
  shift
  "$@" >"$out" || rc=$?
  cat "$out" >&2
  cat "$out" >>"$RESULTS.raw"
  grep '^{"workload"' "$out" >>"$RESULTS" || true
  [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB" >&2

if want W1; then
  run W1 "$BUILD/bench/bench_w1_ingest" 1000000 10000
fi
if want W4; then
  run W4 "$BUILD/bench/bench_w4_memory" 100000
  run W4 "$BUILD/bench/bench_w4_memory" 1000000
fi
if want W3; then
  # The figure is the best of 5 rounds (the machine may be shared); each round
  # also prints the CPU time per command of the manager, the subscriber and
  # the broker (EMIOT_BENCH_BROKER_PID).
  start_broker "$WORK/broker" plain
  run W3 env EMIOT_BENCH_BROKER_PID="$BROKER_PID" "$BUILD/bench/bench_w3_fanout" \
    "mqtt://127.0.0.1:$BROKER_PORT" 10000 5
  stop_pid "$BROKER_PID"; BROKER_PID=""
fi
if want W2; then
  # End to end through emiotd (SQLite on, synchronous = FULL): bench_w2.sh
  # starts its own broker and emiotd, registers 1,000 devices through the
  # API, and runs 3 rounds of 200,000 messages at QoS 0 and at QoS 1, each
  # beside the same broker's rate to a subscriber that does nothing.
  run W2 bash "$EMIOT_ROOT/bench/bench_w2.sh" "$BUILD" 200000 3
fi
if want W5; then
  # The HTTPS API with emiotd pinned to one core: wrk (3 rounds of 10 s) and
  # full mTLS handshakes (openssl s_time, 10 s).
  run W5 bash "$EMIOT_ROOT/bench/bench_w5.sh" "$BUILD" 3 10
fi
echo "figures: $RESULTS" >&2
cat "$RESULTS"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "bench.sh: failed: ${FAILED[*]}" >&2
  exit 1
fi
