#!/usr/bin/env bash
# emiot - run.sh BUILD_DIR: the main job behind `make run`.
#
# Starts, on this machine only: a mosquitto broker on a free loopback port
# with TLS and client certificates required (a CA, a server certificate, a
# manager certificate and one certificate per device, all generated now into
# a private temporary directory), `emiot-agent --simulate N` playing N devices,
# and the example manager (examples/demo.c), which registers the devices,
# groups them, shows their status, sends the group a command and shows the
# answers. Ctrl-C stops everything it started, by PID, and removes the
# temporary directory. EMIOT_DEVICES=N changes the number of devices (default 5),
# EMIOT_DURATION=S stops after S seconds.
set -euo pipefail
BUILD=${1:-build}
N=${EMIOT_DEVICES:-5}
DURATION=${EMIOT_DURATION:-0}
. "$(dirname "$0")/lib.sh"

RUN=$(mktemp -d /tmp/emiot-run-XXXXXX)
chmod 700 "$RUN"
BROKER_PID=""
AGENT_PID=""
cleanup() {
  trap - EXIT INT TERM
  stop_pid "$AGENT_PID"
  stop_pid "$BROKER_PID"
  rm -rf "$RUN"
  echo "emiot demo stopped; everything it started is gone."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ids=()
for i in $(seq 1 "$N"); do ids+=("$(printf 'sim-%03d' "$i")"); done

echo "== emiot demo: certificates and broker in $RUN"
start_broker "$RUN/broker" mtls "${ids[@]}"
URL="mqtts://localhost:$BROKER_PORT"
echo "== mosquitto (pid $BROKER_PID) on $URL, TLS with client certificates required"

"$BUILD/emiot-agent" --url "$URL" --ca "$RUN/broker/ca.crt" --cert-dir "$RUN/broker/devices" \
  --simulate "$N" --interval 5 --telemetry-interval 5 --log-level warn \
  2>"$RUN/agent.log" &
AGENT_PID=$!
echo "== emiot-agent (pid $AGENT_PID) simulating $N devices; its log: $RUN/agent.log"
echo "== example manager (examples/demo.c); Ctrl-C stops everything"
"$BUILD/example_demo" --url "$URL" --ca "$RUN/broker/ca.crt" \
  --cert "$RUN/broker/manager.crt" --key "$RUN/broker/manager.key" \
  --devices "$N" --duration "$DURATION" || true
