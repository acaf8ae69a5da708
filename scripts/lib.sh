# emiot scripts - lib.sh: shell helpers shared by run.sh and bench.sh.
# Source it; it defines functions only.

EMIOT_ROOT=${EMIOT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# free_port: prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 - <<'PY' 2>/dev/null || echo $(( 20000 + RANDOM % 20000 ))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# wait_port PORT [SECONDS]: waits until 127.0.0.1:PORT accepts connections.
wait_port() {
  local port=$1 limit=${2:-10} i=0
  while [ "$i" -lt $(( limit * 10 )) ]; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
    i=$(( i + 1 ))
  done
  return 1
}

# start_broker DIR MODE [DEVICE_IDS...]: certificates and configuration in DIR
# (made private), mosquitto started on a free loopback port. Sets BROKER_PORT
# and BROKER_PID. MODE is plain, tls or mtls (see scripts/broker-conf.sh).
start_broker() {
  local dir=$1 mode=$2
  shift 2
  mkdir -p "$dir" && chmod 700 "$dir"
  bash "$EMIOT_ROOT/scripts/gen-certs.sh" "$dir" "$@"
  BROKER_PORT=$(free_port)
  bash "$EMIOT_ROOT/scripts/broker-conf.sh" "$dir" "$BROKER_PORT" "$mode"
  mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.out" 2>&1 &
  BROKER_PID=$!
  if ! wait_port "$BROKER_PORT" 10; then
    echo "mosquitto did not start; see $dir/mosquitto.log" >&2
    kill "$BROKER_PID" 2>/dev/null
    return 1
  fi
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s.
stop_pid() {
  local pid=$1 i=0
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do
    sleep 0.1
    i=$(( i + 1 ))
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
