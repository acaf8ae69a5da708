# emiot bench - emiotd-lib.sh: start a throwaway emiotd for the W2 and W5
# benchmarks and talk to its API. Source it after scripts/lib.sh; it defines
# functions only.
#
# emiotd_start DIR BUILD MQTT_URL [EXTRA_CONFIG]
#   DIR/tls      certificates (scripts/gen-certs.sh; DIR/tls/devices/w5-user.*
#                is a client certificate for the mTLS handshakes of W5)
#   DIR/data     the data directory (SQLite store, bootstrap key)
#   DIR/emiotd.conf, DIR/emiotd.out (its log)
#   Sets EMIOTD_PID, EMIOTD_PORT (HTTPS API, client certificates optional),
#   EMIOTD_METRICS (http://127.0.0.1:PORT, a metrics_only listener),
#   EMIOTD_URL (https://localhost:PORT), EMIOTD_CA, EMIOTD_AUTH (a 0600 file
#   holding the "Authorization: Bearer ..." header of the bootstrap admin key).
#   EXTRA_CONFIG is appended to the configuration (more sections).
# emiotd_api METHOD PATH [BODY]: one request; prints the body, then the HTTP
#   status on a line of its own.
# emiotd_stop: SIGTERM (it drains), waits.

EMIOTD_PID=""

emiotd_start() {
  local dir=$1 build=$2 mqtt=$3 extra=${4:-}
  mkdir -p "$dir" && chmod 700 "$dir"
  bash "$EMIOT_ROOT/scripts/gen-certs.sh" "$dir/tls" w5-user
  mkdir -p "$dir/data" && chmod 700 "$dir/data"
  EMIOTD_PORT=$(free_port)
  local mport
  mport=$(free_port)
  while [ "$mport" = "$EMIOTD_PORT" ]; do mport=$(free_port); done
  EMIOTD_METRICS="http://127.0.0.1:$mport"
  EMIOTD_URL="https://localhost:$EMIOTD_PORT"
  EMIOTD_CA="$dir/tls/ca.crt"
  EMIOTD_DIR=$dir
  local allow=false
  case $mqtt in mqtt://*) allow=true ;; esac
  umask 077
  cat >"$dir/emiotd.conf" <<EOF
# emiotd.conf written by bench/emiotd-lib.sh (a benchmark's throwaway daemon)
[daemon]
data_dir = $dir/data
# Warnings only: a debug or info line per message would measure the logger.
log_level = warn

[mqtt]
url = $mqtt
allow_plain = $allow

# The store: SQLite in data_dir, the defaults (synchronous = FULL).
[store]

[listener api]
address = 127.0.0.1
port = $EMIOTD_PORT
cert_file = $dir/tls/server.crt
key_file = $dir/tls/server.key
client_ca_file = $dir/tls/ca.crt
client_auth = optional

[listener metrics]
address = 127.0.0.1
port = $mport
metrics_only = true

$extra
EOF
  "$build/emiotd" --config "$dir/emiotd.conf" >"$dir/emiotd.out" 2>&1 &
  EMIOTD_PID=$!
  local i=0
  while ! curl -s -o /dev/null --cacert "$EMIOTD_CA" "$EMIOTD_URL/healthz"; do
    if ! kill -0 "$EMIOTD_PID" 2>/dev/null || [ "$i" -ge 300 ]; then
      echo "emiotd did not start; its output:" >&2
      tail -c 4000 "$dir/emiotd.out" >&2
      return 1
    fi
    sleep 0.1
    i=$((i + 1))
  done
  local key
  key=$(head -n1 "$dir/data/bootstrap-admin.key" 2>/dev/null || true)
  if [ -z "$key" ]; then
    echo "emiotd wrote no bootstrap key in $dir/data/bootstrap-admin.key" >&2
    return 1
  fi
  EMIOTD_AUTH="$dir/auth.hdr"
  printf 'Authorization: Bearer %s\n' "$key" >"$EMIOTD_AUTH"
  chmod 600 "$EMIOTD_AUTH"
}

emiotd_api() {
  local method=$1 path=$2 body=${3:-}
  local args=(-sS --cacert "$EMIOTD_CA" -H "@$EMIOTD_AUTH" -X "$method" -w '\n%{http_code}\n')
  if [ -n "$body" ]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  curl "${args[@]}" "$EMIOTD_URL$path"
}

emiotd_stop() {
  stop_pid "$EMIOTD_PID"
  EMIOTD_PID=""
}
