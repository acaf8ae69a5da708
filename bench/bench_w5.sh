#!/usr/bin/env bash
# emiot bench - bench_w5.sh BUILD [rounds] [seconds]: W5, emiotd's HTTPS API
# (docs/PERFORMANCE.md).
#
# Starts a plain loopback mosquitto and emiotd with two TLS 1.3 listeners: the
# API (client certificates optional) and "mtls" (client_auth = required).
# Through the API it registers one device and creates a viewer API key with a
# rate limit high enough for the run (ratePerMinute). Then, with emiotd pinned
# to core 0 (every thread, taskset) and the clients on core 1:
#   - `wrk -t1 -c32 -dSECONDS --latency` GET /api/v1/devices/w5-dev-0001 with
#     the key (keep-alive), ROUNDS times: requests/s, best and mean, and the
#     latency percentiles; any answer other than 200 makes the run fail;
#   - `openssl s_time -new` against the mTLS listener for SECONDS: full
#     handshakes with a client certificate, no resumption; handshakes/s over
#     the wall-clock time, checked against the server's own count of TLS
#     handshakes and failures (/metrics).
# Before measuring it checks with openssl s_client that the API negotiates
# TLS 1.3 and refuses TLS 1.2, and that the mTLS listener refuses a client
# without a certificate. With W5_PERF=1 one more wrk round runs under
# `perf record -g` on emiotd and the top of the profile is printed. With
# W5_STATUS=1 the device first reports a status (DESIGN.md's example), so
# that the answer carries one. With
# W5_CALLGRIND=1 a second emiotd runs under valgrind's callgrind for one more
# wrk run and the instructions per request are printed (a figure the load of
# the machine does not change); W5_CALLGRIND_OUT=FILE keeps the profile.
set -euo pipefail
BUILD=$(cd "${1:?usage: bench_w5.sh BUILD [rounds] [seconds]}" && pwd)
ROUNDS=${2:-3}
SECS=${3:-10}
DEVICE=w5-dev-0001
RATE_PER_MIN=${W5_RATE_PER_MIN:-6000000}
. "$(dirname "$0")/../scripts/lib.sh"
. "$EMIOT_ROOT/bench/emiotd-lib.sh"

json() { printf '{"workload":"W5","figure":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3"; }
fail() { echo "W5: $*" >&2; exit 1; }

WORK=$(mktemp -d /tmp/emiot-w5-XXXXXX)
BROKER_PID=""
cleanup() {
  stop_pid "$EMIOTD_PID"
  stop_pid "$BROKER_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ "$(nproc)" -ge 2 ] || fail "needs 2 cores (emiotd on one, the client on the other)"
echo "W5: load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" >&2
start_broker "$WORK/broker" plain
MTLS_PORT=$(free_port)
D="$WORK/emiotd"
emiotd_start "$D" "$BUILD" "mqtt://127.0.0.1:$BROKER_PORT" "[listener mtls]
address = 127.0.0.1
port = $MTLS_PORT
cert_file = $D/tls/server.crt
key_file = $D/tls/server.key
client_ca_file = $D/tls/ca.crt
client_auth = required"

# The device and the key (setup_api: on the emiotd started last).
setup_api() {
  local out code
  out=$(emiotd_api POST /api/v1/devices "{\"id\":\"$DEVICE\",\"name\":\"W5 device\",\"type\":\"sensor\"}")
  [ "$(tail -n1 <<<"$out")" = 201 ] || fail "creating the device: $out"
  out=$(emiotd_api POST /api/v1/keys "{\"name\":\"w5-bench\",\"role\":\"viewer\",\"ratePerMinute\":$RATE_PER_MIN}")
  [ "$(tail -n1 <<<"$out")" = 201 ] || fail "creating the key (ratePerMinute $RATE_PER_MIN): $out"
  KEY=$(head -n -1 <<<"$out" | jq -r '.data.key')
  [[ $KEY =~ ^iot_[0-9a-f]{48}$ ]] || fail "no key in the answer"
  # wrk takes the header from a script, so that the key stays off the command line.
  LUA="$WORK/auth.lua"
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$KEY" >"$LUA"
  chmod 600 "$LUA"
  printf 'Authorization: Bearer %s\n' "$KEY" >"$WORK/key.hdr"
  chmod 600 "$WORK/key.hdr"
  URL="https://127.0.0.1:$EMIOTD_PORT/api/v1/devices/$DEVICE"
  code=$(curl -sS -o "$WORK/get.json" -w '%{http_code}' --cacert "$EMIOTD_CA" \
    --resolve "localhost:$EMIOTD_PORT:127.0.0.1" -H "@$WORK/key.hdr" \
    "https://localhost:$EMIOTD_PORT/api/v1/devices/$DEVICE")
  [ "$code" = 200 ] || fail "GET $DEVICE with the key: $code $(cat "$WORK/get.json")"
  if [ "${W5_STATUS:-0}" = 1 ]; then
    # The device reports DESIGN.md's status: the answer carries it.
    mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t "device/$DEVICE/status" \
      -m '{"batteryLevel":75,"powerMode":"normal","connectionStatus":"online","firmwareVersion":"1.2.3","signalStrength":-67,"errors":[],"additionalInfo":{}}'
    local i
    for i in $(seq 1 50); do
      curl -sS -o "$WORK/get.json" --cacert "$EMIOTD_CA" --resolve "localhost:$EMIOTD_PORT:127.0.0.1" \
        -H "@$WORK/key.hdr" "https://localhost:$EMIOTD_PORT/api/v1/devices/$DEVICE"
      [ "$(jq -r '.data.status.batteryLevel' "$WORK/get.json")" != 75 ] || break
      sleep 0.1
    done
    [ "$(jq -r '.data.status.batteryLevel' "$WORK/get.json")" = 75 ] || fail "the device's status did not arrive"
  fi
}
setup_api
echo "W5: GET /api/v1/devices/$DEVICE answers $(wc -c <"$WORK/get.json") bytes: $(cat "$WORK/get.json")" >&2

# TLS 1.3 and nothing else; the mTLS listener wants a certificate.
# -brief prints the protocol and suite as soon as the handshake is done
# (without it, s_client may close before printing its session block).
for _ in 1 2 3; do
  HS=$(openssl s_client -brief -connect "127.0.0.1:$EMIOTD_PORT" -servername localhost \
    -CAfile "$EMIOTD_CA" </dev/null 2>&1 || true)
  PROTO=$(sed -n 's/^Protocol version: *//p' <<<"$HS" | head -n1)
  CIPHER=$(sed -n 's/^Ciphersuite: *//p' <<<"$HS" | head -n1)
  [ -z "$PROTO" ] || break
  sleep 1
done
echo "W5: the API listener negotiated $PROTO, $CIPHER" >&2
[ "$PROTO" = TLSv1.3 ] || fail "the API did not negotiate TLS 1.3 ($PROTO)"
if openssl s_client -connect "127.0.0.1:$EMIOTD_PORT" -tls1_2 </dev/null >/dev/null 2>&1; then
  fail "the API accepted a TLS 1.2 handshake"
fi
echo "W5: a TLS 1.2 client is refused" >&2
C="$D/tls/devices/w5-user"
# In TLS 1.3 the server checks the client's certificate after the client
# has finished: an HTTP answer is the proof that it was accepted.
MTLS_OK=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$EMIOTD_CA" --cert "$C.crt" \
  --key "$C.key" --resolve "localhost:$MTLS_PORT:127.0.0.1" "https://localhost:$MTLS_PORT/healthz" || true)
[ "$MTLS_OK" = 200 ] || fail "the mTLS listener refused our client certificate ($MTLS_OK)"
NOCERT=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$EMIOTD_CA" \
  --resolve "localhost:$MTLS_PORT:127.0.0.1" "https://localhost:$MTLS_PORT/healthz" 2>/dev/null || true)
[ "$NOCERT" != 200 ] || fail "the mTLS listener answered a client without a certificate"
echo "W5: the mTLS listener refuses a client without a certificate (curl: '$NOCERT')" >&2

# emiotd on core 0, every thread; clients on core 1.
taskset -a -p -c 0 "$EMIOTD_PID" >/dev/null
metric() { curl -s "$EMIOTD_METRICS/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'; }
# lat_us P: wrk's P% latency (from --latency, on stdin) in microseconds.
lat_us() {
  awk -v p="$1%" '/Latency Distribution/ {f = 1; next}
    f && $1 == p {v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
      m = u == "us" ? 1 : u == "ms" ? 1000 : u == "s" ? 1000000 : 60000000; printf "%.0f", v * m; exit}'
}
cpu_us() { awk '{s += $1} END {printf "%d", s / 1000}' /proc/"$EMIOTD_PID"/task/*/schedstat; }

RC=0
BEST=0
SUM=0
for r in $(seq 1 "$ROUNDS"); do
  C0=$(cpu_us)
  taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -s "$LUA" "$URL" >"$WORK/wrk.txt" 2>&1 || true
  C1=$(cpu_us)
  RPS=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$WORK/wrk.txt")
  TOTAL=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
  NON2XX=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WORK/wrk.txt")
  ERRS=$(sed -n 's/^ *Socket errors: *//p' "$WORK/wrk.txt")
  LAT=$(awk '/Latency Distribution/ {f = 1; next} f && /%/ {printf "%s %s  ", $1, $2} /requests in/ {f = 0}' "$WORK/wrk.txt")
  CPU=$(awk -v a="$C0" -v b="$C1" -v n="${TOTAL:-0}" 'BEGIN {if (n > 0) printf "%.1f", (b - a) / n; else print "?"}')
  echo "W5 round $r: ${RPS:-0} requests/s ($TOTAL in ${SECS} s), non-2xx ${NON2XX:-0}${ERRS:+, socket errors: $ERRS}; latency $LAT; emiotd ${CPU} us CPU/request" >&2
  if [ -z "$RPS" ] || [ -n "$NON2XX" ]; then
    cat "$WORK/wrk.txt" >&2
    RC=1
  fi
  RPS=${RPS:-0}
  SUM=$((SUM + RPS))
  [ "$RPS" -le "$BEST" ] || { BEST=$RPS; BEST_TXT=$(cat "$WORK/wrk.txt"); }
done
echo "W5 best round (wrk output):" >&2
echo "${BEST_TXT:-}" >&2
json get_requests_per_s "$BEST" "req/s"
json get_requests_per_s_mean $((SUM / ROUNDS)) "req/s"
for p in 50 99; do
  v=$(lat_us "$p" <<<"${BEST_TXT:-}")
  [ -z "$v" ] || json "get_latency_p${p}_best_round" "$v" "us"
done

# Full mTLS handshakes: a new session every time (-new), TLS 1.3.
H0=$(metric emiot_api_tls_handshakes_total)
F0=$(metric emiot_api_tls_failures_total)
C0=$(cpu_us)
T0=$(date +%s.%N)
taskset -c 1 openssl s_time -connect "127.0.0.1:$MTLS_PORT" -new -cert "$C.crt" -key "$C.key" \
  -CAfile "$EMIOTD_CA" -time "$SECS" >"$WORK/stime.txt" 2>&1 || true
T1=$(date +%s.%N)
C1=$(cpu_us)
H1=$(metric emiot_api_tls_handshakes_total)
F1=$(metric emiot_api_tls_failures_total)
N=$(awk '/connections in .*real seconds/ {print $1}' "$WORK/stime.txt")
[ -n "$N" ] || { cat "$WORK/stime.txt" >&2; fail "openssl s_time made no connection"; }
HPS=$(awk -v n="$N" -v a="$T0" -v b="$T1" 'BEGIN {printf "%d", n / (b - a)}')
CPU=$(awk -v a="$C0" -v b="$C1" -v n="$N" 'BEGIN {printf "%.0f", (b - a) / n}')
echo "W5: $N full mTLS handshakes in $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.2f", b - a}') s:" \
  "$HPS handshakes/s; emiotd counted $((H1 - H0)) handshakes, $((F1 - F0)) failures;" \
  "emiotd $CPU us CPU/handshake; s_time: $(grep 'connections/user sec' "$WORK/stime.txt")" >&2
json mtls_handshakes_per_s "$HPS" "handshakes/s"
json mtls_handshake_failures $((F1 - F0)) "handshakes"
[ $((F1 - F0)) -eq 0 ] || RC=1

# The same handshakes against `openssl s_server` on the same core, the same
# certificates: what OpenSSL itself does on this machine.
SPORT=$(free_port)
taskset -c 0 openssl s_server -accept "127.0.0.1:$SPORT" -cert "$D/tls/server.crt" \
  -key "$D/tls/server.key" -CAfile "$EMIOTD_CA" -Verify 1 -tls1_3 -quiet -naccept 1000000 \
  >/dev/null 2>&1 </dev/null &
SSERVER=$!
if wait_port "$SPORT" 5; then
  T0=$(date +%s.%N)
  taskset -c 1 openssl s_time -connect "127.0.0.1:$SPORT" -new -cert "$C.crt" -key "$C.key" \
    -CAfile "$EMIOTD_CA" -time "$SECS" >"$WORK/stime2.txt" 2>&1 || true
  T1=$(date +%s.%N)
  N=$(awk '/connections in .*real seconds/ {print $1}' "$WORK/stime2.txt")
  if [ -n "$N" ]; then
    HPS=$(awk -v n="$N" -v a="$T0" -v b="$T1" 'BEGIN {printf "%d", n / (b - a)}')
    echo "W5: openssl s_server (same core, certificates, client_auth required): $HPS handshakes/s" >&2
    json openssl_s_server_mtls_handshakes_per_s "$HPS" "handshakes/s"
  fi
fi
stop_pid "$SSERVER"

if [ "${W5_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  PERF_DATA=${W5_PERF_DATA:-$WORK/perf.data}
  perf record -g -o "$PERF_DATA" -p "$EMIOTD_PID" -- sleep "$SECS" >/dev/null 2>&1 &
  PERF=$!
  taskset -c 1 wrk -t1 -c32 -d"${SECS}s" -s "$LUA" "$URL" >/dev/null 2>&1 || true
  wait "$PERF" || true
  # Inclusive (children) costs: which calls the time goes to.
  perf report -i "$PERF_DATA" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -v '^#' | grep '%' | head -60 >&2 || true
fi
# Instructions per request, which the load of a shared machine does not
# change: a second emiotd under callgrind, the same device and key, wrk for
# SECONDS (the connections opened and warmed before counting starts; the
# handshakes of wrk's own 32 connections are taken out of the count).
if [ "${W5_CALLGRIND:-0}" = 1 ] && command -v valgrind >/dev/null; then
  emiotd_stop
  CG="$WORK/callgrind"
  mkdir -p "$CG/bin"
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/out "%s/emiotd" "$@"\n' \
    "$CG" "$BUILD" >"$CG/bin/emiotd"
  chmod +x "$CG/bin/emiotd"
  emiotd_start "$WORK/emiotd-cg" "$CG/bin" "mqtt://127.0.0.1:$BROKER_PORT"
  setup_api
  # Under valgrind an answer takes milliseconds: wrk must not time out and
  # reconnect (a handshake costs as much as ~50 requests).
  wrk -t1 -c32 -d3s --timeout 60s -s "$LUA" "$URL" >/dev/null 2>&1 || true
  Q0=$(metric emiot_api_requests_total)
  callgrind_control -z "$EMIOTD_PID" >/dev/null
  wrk -t1 -c32 -d"${SECS}s" --timeout 60s -s "$LUA" "$URL" >"$CG/wrk.txt" 2>&1 || true
  callgrind_control -d "$EMIOTD_PID" >/dev/null
  Q1=$(metric emiot_api_requests_total)
  DUMP=$(ls -t "$CG"/out.* 2>/dev/null | head -n1)
  if [ -n "$DUMP" ] && [ $((Q1 - Q0)) -gt 0 ]; then
    callgrind_annotate --inclusive=yes "$DUMP" >"$CG/annotate.txt" 2>/dev/null || true
    ir() { awk -v pat="$1" 'index($0, pat) {gsub(",", "", $1); print $1; exit}' "$CG/annotate.txt"; }
    TOTAL_IR=$(ir "PROGRAM TOTALS")
    HS_IR=$(ir "SSL_do_handshake [")
    IPR=$(( (TOTAL_IR - ${HS_IR:-0}) / (Q1 - Q0) ))
    echo "W5 (callgrind): $((Q1 - Q0)) requests, $TOTAL_IR instructions of emiotd, ${HS_IR:-0} of them in TLS handshakes: $IPR instructions per request" >&2
    json get_instructions_per_request "$IPR" "instructions"
    if [ -n "${W5_CALLGRIND_OUT:-}" ]; then cp "$DUMP" "$W5_CALLGRIND_OUT"; fi
  else
    echo "W5: callgrind produced no profile" >&2
    RC=1
  fi
fi
exit $RC
