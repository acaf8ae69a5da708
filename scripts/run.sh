#!/usr/bin/env bash
# emiot - run.sh BUILD_DIR: the main job behind `make run`.
#
# Starts, on this machine only (loopback):
#  - mosquitto with TLS and client certificates required (a CA, a server
#    certificate, the manager's certificate and one per device, generated
#    with scripts/gen-certs.sh; the queueing settings of scripts/broker-conf.sh);
#  - emiotd with SQLite in .run/data under the repository, its HTTPS API on
#    https://localhost:8443 (another free port if 8443 is taken) with the
#    same CA, and Prometheus metrics on a loopback port;
#  - registers the N simulated devices in emiotd (group "simulated") through
#    the API, with curl;
#  - `emiot-agent --simulate N` playing them.
# Then it prints how to reach the API (emiotctl and curl) and waits; Ctrl-C
# stops everything it started, by PID. .run/ stays: the next `make run`
# finds the same devices, history and admin key (delete .run/ to start
# afresh). EMIOT_DEVICES=N (default 20), EMIOT_DURATION=S (stop after S
# seconds; 0 = until Ctrl-C), EMIOT_API_PORT=P (default 8443).
set -euo pipefail
BUILD=${1:-build}
N=${EMIOT_DEVICES:-20}
DURATION=${EMIOT_DURATION:-0}
. "$(dirname "$0")/lib.sh"

if ! [[ $N =~ ^[0-9]+$ ]] || [ "$N" -lt 1 ] || [ "$N" -gt 1000 ]; then
  echo "run.sh: EMIOT_DEVICES must be 1-1000" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
for exe in emiotd emiot-agent; do
  if [ ! -x "$BUILD/$exe" ]; then
    echo "run.sh: $BUILD/$exe is missing: build first (make run does)" >&2
    exit 1
  fi
done

RUN="$EMIOT_ROOT/.run"
mkdir -p "$RUN" && chmod 700 "$RUN"
PKI="$RUN/pki"
DATA="$RUN/data"
BROKER_PID=""
EMIOTD_PID=""
AGENT_PID=""
cleanup() {
  trap - EXIT INT TERM
  stop_pid "$AGENT_PID"
  stop_pid "$EMIOTD_PID"
  stop_pid "$BROKER_PID"
  echo
  echo "emiot stopped: agent, emiotd and broker are gone. Data stays in $RUN (rm -rf it to start afresh)."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ids=()
for i in $(seq 1 "$N"); do ids+=("$(printf 'sim-%03d' "$i")"); done

echo "== certificates and broker in $PKI"
start_broker "$PKI" mtls "${ids[@]}"
MQTT_URL="mqtts://localhost:$BROKER_PORT"
echo "== mosquitto (pid $BROKER_PID) on $MQTT_URL, TLS with client certificates required"

# The API port: 8443 when free, else any free one.
API_PORT=${EMIOT_API_PORT:-8443}
if (exec 3<>"/dev/tcp/127.0.0.1/$API_PORT") 2>/dev/null; then
  API_PORT=$(free_port)
fi
METRICS_PORT=$(free_port)
API_URL="https://localhost:$API_PORT"

CONF="$RUN/emiotd.conf"
umask 077
cat >"$CONF" <<EOF
# Written by scripts/run.sh (make run); see deploy/emiotd.conf for every key.
[daemon]
data_dir = $DATA

[mqtt]
url = $MQTT_URL
ca_file = $PKI/ca.crt
cert_file = $PKI/manager.crt
key_file = $PKI/manager.key
# The agent reports every 5 s.
status_interval = 10

[listener api]
address = 127.0.0.1
port = $API_PORT
cert_file = $PKI/server.crt
key_file = $PKI/server.key
client_ca_file = $PKI/ca.crt
client_auth = optional

[listener metrics]
address = 127.0.0.1
port = $METRICS_PORT
metrics_only = true
EOF

"$BUILD/emiotd" --check-config --config "$CONF" >/dev/null
"$BUILD/emiotd" --config "$CONF" 2>>"$RUN/emiotd.log" &
EMIOTD_PID=$!
echo "== emiotd (pid $EMIOTD_PID), SQLite in $DATA; its log: $RUN/emiotd.log"
ready=0
for _ in $(seq 1 300); do
  if ! kill -0 "$EMIOTD_PID" 2>/dev/null; then
    echo "emiotd exited; the end of $RUN/emiotd.log:" >&2
    tail -n 20 "$RUN/emiotd.log" >&2
    EMIOTD_PID=""
    exit 1
  fi
  if curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "$API_URL/healthz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "emiotd did not answer on $API_URL/healthz within 30 s; see $RUN/emiotd.log" >&2
  exit 1
fi

KEY_FILE="$DATA/bootstrap-admin.key"
if [ ! -r "$KEY_FILE" ]; then
  echo "run.sh: the admin key file $KEY_FILE is gone; without it the devices cannot be" >&2
  echo "registered. rm -rf $RUN to start afresh." >&2
  exit 1
fi
# curl reads the header from a private file: the key never appears in argv.
HDR="$RUN/auth.header"
printf 'Authorization: Bearer %s\nContent-Type: application/json\n' "$(head -n 1 "$KEY_FILE")" >"$HDR"
api() { # METHOD PATH [JSON] -> prints the HTTP status
  local method=$1 path=$2 body=${3:-}
  if [ -n "$body" ]; then
    curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" -H "@$HDR" -X "$method" \
      --data-binary "$body" "$API_URL$path"
  else
    curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" -H "@$HDR" -X "$method" \
      "$API_URL$path"
  fi
}

echo "== registering $N devices in emiotd (group \"simulated\")"
st=$(api POST /api/v1/groups '{"name":"simulated"}')
case $st in 201 | 409) ;; *) echo "run.sh: creating the group answered $st" >&2; exit 1 ;; esac
for id in "${ids[@]}"; do
  st=$(api POST /api/v1/devices \
    "{\"id\":\"$id\",\"name\":\"Simulated $id\",\"type\":\"sensor\",\"groups\":[\"simulated\"]}")
  case $st in 201 | 409) ;; *) echo "run.sh: registering $id answered $st" >&2; exit 1 ;; esac
done

"$BUILD/emiot-agent" --url "$MQTT_URL" --ca "$PKI/ca.crt" --cert-dir "$PKI/devices" \
  --simulate "$N" --interval 5 --telemetry-interval 5 --log-level warn \
  2>>"$RUN/agent.log" &
AGENT_PID=$!
echo "== emiot-agent (pid $AGENT_PID) simulating $N devices; its log: $RUN/agent.log"

cat <<EOF

emiot is running. The API is at $API_URL (TLS 1.3; CA $PKI/ca.crt).
The admin's API key is in $KEY_FILE (0600).

  With emiotctl:
    export EMIOT_URL=$API_URL EMIOT_CA=$PKI/ca.crt EMIOT_API_KEY_FILE=$KEY_FILE
    $BUILD/emiotctl devices list
    $BUILD/emiotctl groups get simulated
    $BUILD/emiotctl commands send sim-001 get_status

  With curl:
    curl --cacert $PKI/ca.crt -H @$HDR $API_URL/api/v1/devices/sim-001

  Metrics:  curl http://127.0.0.1:$METRICS_PORT/metrics
  Logs:     $RUN/emiotd.log (JSON lines), $RUN/agent.log

Ctrl-C stops everything.
EOF

if [ "$DURATION" -gt 0 ]; then
  sleep "$DURATION" &
  wait $! || true
else
  # Until Ctrl-C, or until emiotd or the agent stops by itself.
  while kill -0 "$EMIOTD_PID" 2>/dev/null && kill -0 "$AGENT_PID" 2>/dev/null; do
    sleep 1
  done
  if ! kill -0 "$EMIOTD_PID" 2>/dev/null; then
    echo "emiotd stopped; the end of $RUN/emiotd.log:" >&2
    tail -n 20 "$RUN/emiotd.log" >&2
    EMIOTD_PID=""
    exit 1
  fi
fi
