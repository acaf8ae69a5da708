#!/usr/bin/env bash
# emiot bench - bench_w2.sh BUILD [messages] [rounds]: W2, ingest through the
# broker into emiotd with SQLite persistence on (docs/PERFORMANCE.md).
#
# For each transport (W2_TRANSPORTS, default "tls plain": mqtts, what emiot
# ships, then plain MQTT on loopback), starts a loopback mosquitto with the
# generated no-loss configuration (scripts/broker-conf.sh) and emiotd (SQLite
# in its data directory, default synchronous = FULL), registers 1,000 devices
# through the API, then runs bench/bench_w2_ingest at QoS 0 and at QoS 1
# (W2_QOS, default "0 1"): each round publishes the messages once to a
# subscriber that does nothing and once to emiotd, and waits until emiotd's
# store has committed them all. The publisher and the null subscriber use the
# same transport as emiotd. Afterwards emiotd is stopped and the status
# history rows in its SQLite file are counted: every published message must be
# there. Exits non-zero when a message was lost at QoS 1 or the history misses
# rows.
set -euo pipefail
BUILD=$(cd "${1:?usage: bench_w2.sh BUILD [messages] [rounds]}" && pwd)
MESSAGES=${2:-200000}
ROUNDS=${3:-3}
DEVICES=1000
. "$(dirname "$0")/../scripts/lib.sh"
. "$EMIOT_ROOT/bench/emiotd-lib.sh"

WORK=""
BROKER_PID=""
cleanup() {
  stop_pid "$EMIOTD_PID"
  stop_pid "$BROKER_PID"
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

run_transport() {
  local transport=$1
  WORK=$(mktemp -d /tmp/emiot-w2-XXXXXX)
  echo "W2 over $transport: load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores," \
    "shared by broker, publisher and emiotd)" >&2
  local url extra
  if [ "$transport" = tls ]; then
    start_broker "$WORK/broker" tls
    url="mqtts://localhost:$BROKER_PORT"
    extra="[mqtt]\nca_file = $WORK/broker/ca.crt\n"
    export EMIOT_BENCH_CA="$WORK/broker/ca.crt"
  else
    start_broker "$WORK/broker" plain
    url="mqtt://127.0.0.1:$BROKER_PORT"
    extra=""
  fi
  # W2_EXTRA_CONFIG: more configuration for emiotd, for experiments (for
  # instance "[store]\nsync = normal"; the figures of record use none).
  emiotd_start "$WORK/emiotd" "$BUILD" "$url" "$(printf '%b' "$extra${W2_EXTRA_CONFIG:-}")"
  [ -z "${W2_EXTRA_CONFIG:-}" ] || echo "W2: emiotd configured with: ${W2_EXTRA_CONFIG}" >&2

  # 1,000 devices through the API, in one curl process (one kept-alive
  # connection); the key stays in a file, off the command line.
  REQS="$WORK/register.curl"
  {
    for i in $(seq 0 $((DEVICES - 1))); do
      id=$(printf 'w2-%05d' "$i")
      # "next" resets every option: each request names the CA again.
      printf 'cacert = "%s"\n' "$EMIOTD_CA"
      printf 'url = "%s/api/v1/devices"\nrequest = "POST"\nheader = "@%s"\n' "$EMIOTD_URL" "$EMIOTD_AUTH"
      printf 'header = "Content-Type: application/json"\n'
      printf 'data = "{\\"id\\":\\"%s\\",\\"name\\":\\"%s\\",\\"type\\":\\"sensor\\"}"\n' "$id" "$id"
      printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n'
      [ "$i" -lt $((DEVICES - 1)) ] && printf 'next\n'
    done
  } >"$REQS"
  T0=$(date +%s.%N)
  # 16 at a time: an answer costs the client little, but it may wait on the
  # server (a synchronous store commit, TCP's delayed ACK).
  CODES=$(curl -sS --no-progress-meter -Z --parallel-max 16 -K "$REQS" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
  echo "W2: registered $DEVICES devices in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $T0}") s (HTTP status:" \
    "count: $CODES)" >&2
  if [ "$CODES" != " $DEVICES 201;" ]; then
    echo "W2: registering the devices failed" >&2
    tail -c 2000 "$WORK/emiotd/emiotd.out" >&2
    exit 1
  fi

  # W2_QOS: the QoS levels to run (default "0 1"; experiments may run one).
  for qos in ${W2_QOS:-0 1}; do
    EMIOT_BENCH_BROKER_PID=$BROKER_PID EMIOT_BENCH_DAEMON_PID=$EMIOTD_PID \
      "$BUILD/bench/bench_w2_ingest" "$url" "$EMIOTD_METRICS" \
      "$MESSAGES" "$DEVICES" "$qos" "$ROUNDS" | label "$transport" || RC=1
  done

  # W2_PERF=1: one more QoS 1 round with emiotd under perf record -g; the top
  # of the profile goes to stderr (and the profile stays in W2_PERF_DATA, if set).
  NQOS=$(echo ${W2_QOS:-0 1} | wc -w)
  STORED_RUNS=$((NQOS * ROUNDS))
  LAST_ROUND=$((ROUNDS - 1))
  if [ "${W2_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    PERF_DATA=${W2_PERF_DATA:-$WORK/perf.data}
    perf record -g -o "$PERF_DATA" -p "$EMIOTD_PID" >/dev/null 2>&1 &
    PERF=$!
    sleep 1
    EMIOT_BENCH_BROKER_PID=$BROKER_PID EMIOT_BENCH_DAEMON_PID=$EMIOTD_PID \
      "$BUILD/bench/bench_w2_ingest" "$url" "$EMIOTD_METRICS" \
      "$MESSAGES" "$DEVICES" 1 1 | grep -v '^{' >&2 || RC=1
    kill -INT "$PERF" 2>/dev/null || true
    wait "$PERF" || true
    STORED_RUNS=$((STORED_RUNS + 1))
    LAST_ROUND=0
    perf report -i "$PERF_DATA" --no-children --sort comm,dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep '%' | head -60 >&2
  fi

  # What is on disk: stop emiotd (it drains), then count the history rows.
  emiotd_stop
  DB=$(find "$WORK/emiotd/data" -maxdepth 1 -name '*.db' | head -n1)
  if [ -n "$DB" ] && command -v sqlite3 >/dev/null; then
    WANT=$((STORED_RUNS * MESSAGES))
    ROWS=$(sqlite3 "$DB" 'SELECT count(*) FROM status_history' 2>/dev/null || echo "?")
    echo "W2: status history rows in $(basename "$DB"): $ROWS (published to emiotd: $WANT)" >&2
    if [ "$ROWS" != "?" ]; then
      echo "{\"workload\":\"W2\",\"figure\":\"${transport}_history_rows_missing\",\"value\":$((WANT - ROWS)),\"unit\":\"msg\"}"
      [ "$ROWS" -ge "$WANT" ] || RC=1
    fi
    # Every device's latest status is the last one it was sent (bench_w2_ingest:
    # message i of round r goes to device i % DEVICES with batteryLevel
    # (i / DEVICES + 37 r) % 101; QoS 1 keeps order on one connection).
    if [ $((MESSAGES % DEVICES)) -eq 0 ]; then
      LAST=$(((MESSAGES / DEVICES - 1 + 37 * LAST_ROUND) % 101))
      GOOD=$(sqlite3 "$DB" "SELECT count(*) FROM status_latest WHERE battery = $LAST" 2>/dev/null || echo "?")
      echo "W2: devices whose latest stored status is the last one sent (batteryLevel $LAST): $GOOD of $DEVICES" >&2
      [ "$GOOD" = "$DEVICES" ] || RC=1
    fi
  fi
  if grep -q '"level":"error"' "$WORK/emiotd/emiotd.out"; then
    echo "W2: emiotd logged errors:" >&2
    grep '"level":"error"' "$WORK/emiotd/emiotd.out" | head -5 >&2
  fi
  stop_pid "$BROKER_PID"
  BROKER_PID=""
  rm -rf "$WORK"
  WORK=""
}

# The JSON figures of a transport are named "<transport>_<figure>"; the
# human-readable lines say which transport they are about.
label() {
  local t=$1
  sed -u -e "s/\"figure\":\"/\"figure\":\"${t}_/" -e "/^{/!s/^/[$t] /"
}

RC=0
for transport in ${W2_TRANSPORTS:-tls plain}; do
  run_transport "$transport"
done
exit $RC
