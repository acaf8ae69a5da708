#!/usr/bin/env bash
# emiot - run.sh BUILD_DIR: the main job behind `make run`.
#
# Sets up, on this machine only (loopback), what an operator would, with
# emiot's own device identity (docs/EMIOTCTL.md, docs/SECURITY.md):
#  - a CA directory .run/ca made by `emiotctl pki init`, its key sealed in a
#    keystore with a random passphrase written once to .run/keystore.pass
#    (0600, never printed);
#  - the broker's and the API's server certificates and the manager's client
#    certificate (CN emiotd.manager), issued by `emiotctl pki issue`;
#  - mosquitto configured by `emiotctl broker config` (certificates required,
#    the CN as user name, the CRL, each device on its own topics only) and
#    started on a free loopback port;
#  - emiotd with SQLite in .run/data, its HTTPS API on https://localhost:8443
#    (another free port if 8443 is taken), [pki] and [keystore] so that
#    devices can enroll, and Prometheus metrics on a loopback port;
#  - the N simulated devices registered (group "simulated") through the API;
#    sim-001 enrolls with a one-time token (`emiotctl devices enroll-token`,
#    then `emiot-agent enroll`, which makes its key), the others get theirs
#    from `emiotctl pki issue --profile device` (the operator's path for
#    devices that cannot make keys), all in .run/devices (--cert-dir);
#  - `emiot-agent --simulate N` playing them.
# Then it prints how to reach the API and the identity commands, and waits;
# Ctrl-C stops everything it started, by PID. .run/ stays: the next
# `make run` reuses the CA, the certificates (a missing, revoked or expiring
# one is replaced), the devices, their history and the admin key, so it
# starts in seconds (delete .run/ to start afresh). EMIOT_DEVICES=N (default
# 20), EMIOT_DURATION=S (stop after S seconds; 0 = until Ctrl-C),
# EMIOT_API_PORT=P (default 8443).
set -euo pipefail
BUILD=${1:-build}
N=${EMIOT_DEVICES:-20}
DURATION=${EMIOT_DURATION:-0}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

if ! [[ $N =~ ^[0-9]+$ ]] || [ "$N" -lt 1 ] || [ "$N" -gt 1000 ]; then
  echo "run.sh: EMIOT_DEVICES must be 1-1000" >&2
  exit 2
fi
if ! [[ $DURATION =~ ^[0-9]+$ ]]; then
  echo "run.sh: EMIOT_DURATION must be a number of seconds" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
for exe in emiotd emiotctl emiot-agent; do
  if [ ! -x "$BUILD/$exe" ]; then
    echo "run.sh: $BUILD/$exe is missing: build first (make run does)" >&2
    exit 1
  fi
done
for tool in mosquitto openssl curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "run.sh: $tool is missing: scripts/deps.sh installs it" >&2
    exit 1
  fi
done

# Everything written from here on is private unless a tool says otherwise
# (certificates are 0644, keys and secrets 0600).
umask 077
RUN="$EMIOT_ROOT/.run"
mkdir -p "$RUN" && chmod 700 "$RUN"
CA="$RUN/ca"          # the CA directory (emiotctl pki)
PASS="$RUN/keystore.pass"
TLS="$RUN/tls"        # server certificates and the manager's
DEV="$RUN/devices"    # one certificate and key per device (--cert-dir)
BROKER="$RUN/broker"  # emiotctl broker config's output
DATA="$RUN/data"
# mosquitto's configuration has no quoting: refuse what it would misread.
if [[ $RUN =~ [[:space:]] ]]; then
  echo "run.sh: the checkout's path must not contain white space ($RUN)" >&2
  exit 2
fi
if [ -d "$RUN/pki" ] && [ ! -e "$CA/ca.crt" ]; then
  echo "run.sh: $RUN was made by an older make run (certificates from gen-certs.sh)." >&2
  echo "Its data does not fit the new device identity set-up: rm -rf $RUN to start afresh." >&2
  exit 1
fi

# One make run at a time on .run: a second would rewrite the configuration
# and certificates under the first one's processes. The lock goes with this
# shell (its children do not inherit it).
exec 9>"$RUN/run.lock"
if ! flock -n 9; then
  echo "run.sh: another make run is using $RUN; stop it first (Ctrl-C)" >&2
  exit 1
fi

BROKER_PID=""
EMIOTD_PID=""
AGENT_PID=""
SLEEP_PID=""
cleanup() {
  trap - EXIT INT TERM
  # A background sleep ignores Ctrl-C: it goes by PID like the rest.
  stop_pid "$SLEEP_PID"
  stop_pid "$AGENT_PID"
  stop_pid "$EMIOTD_PID"
  stop_pid "$BROKER_PID"
  rm -f "$RUN/enroll.token"
  echo
  echo "emiot stopped: agent, emiotd and broker are gone. Data stays in $RUN (rm -rf it to start afresh)."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export EMIOT_PKI_DIR="$CA"
ctl() { "$BUILD/emiotctl" "$@"; }
# The CA's secret comes from the private file, never from argv or the screen.
ctl_ca() { "$BUILD/emiotctl" "$@" --passphrase-file "$PASS"; }

ids=()
for i in $(seq 1 "$N"); do ids+=("$(printf 'sim-%03d' "$i")"); done

# ---- the CA -------------------------------------------------------------
if [ -e "$CA/ca.crt" ]; then
  if [ ! -r "$PASS" ]; then
    echo "run.sh: $PASS is gone: the CA's key in $CA cannot be opened without it." >&2
    echo "rm -rf $RUN to start afresh." >&2
    exit 1
  fi
  echo "== CA: $CA (reused)"
else
  if [ -e "$CA" ]; then
    echo "run.sh: $CA exists but holds no CA (an interrupted first run?): rm -rf $RUN to start afresh" >&2
    exit 1
  fi
  if [ ! -s "$PASS" ]; then
    # 32 random bytes, base64: the keystore's passphrase, in a 0600 file.
    rm -f "$PASS"
    head -c 32 /dev/urandom | base64 -w0 >"$PASS.tmp"
    echo >>"$PASS.tmp"
    chmod 600 "$PASS.tmp"
    mv "$PASS.tmp" "$PASS"
  fi
  echo "== CA: emiotctl pki init in $CA (key sealed with the passphrase in $PASS)"
  ctl_ca -q pki init --cn "emiot make-run CA"
fi

# An expired CRL makes the broker refuse every client: publish a new one when
# the current one has less than a week left (emiotctl pki crl, as cron would).
next=$(openssl crl -in "$CA/crl.pem" -noout -nextupdate 2>/dev/null | sed 's/^nextUpdate=//')
if [ -z "$next" ] || [ "$(date -d "$next" +%s 2>/dev/null || echo 0)" -lt $(( $(date +%s) + 7 * 86400 )) ]; then
  echo "== CRL: publishing a new one (emiotctl pki crl)"
  ctl_ca -q pki crl
fi

# valid_certs CERT...: prints the certificates that chain to the CA, are not
# revoked and stay valid for at least one more day (openssl verify, all in one
# call so that a second run starts quickly).
valid_certs() {
  [ $# -gt 0 ] || return 0
  openssl verify -CAfile "$CA/ca.crt" -CRLfile "$CA/crl.pem" -crl_check \
    -attime $(( $(date +%s) + 86400 )) "$@" 2>/dev/null | sed -n 's/: OK$//p' || true
}
declare -A ok=()
check_certs() { # CERT...: fills ok[] with those valid_certs keeps
  local c
  ok=()
  while IFS= read -r c; do
    [ -n "$c" ] && ok["$c"]=1
  done < <(valid_certs "$@")
}

# ---- server and manager certificates ---------------------------------------
mkdir -p "$TLS" "$DEV"
existing=()
for f in "$TLS/broker.crt" "$TLS/api.crt" "$TLS/manager.crt"; do
  [ -s "$f" ] && existing+=("$f")
done
check_certs "${existing[@]}"
issue_tls() { # NAME PROFILE CN [ISSUE OPTIONS...]
  local name=$1 profile=$2 cn=$3
  shift 3
  if [ -n "${ok[$TLS/$name.crt]:-}" ] && [ -s "$TLS/$name.key" ]; then
    return 0
  fi
  rm -f "$TLS/$name.crt" "$TLS/$name.key"
  echo "== $name certificate: emiotctl pki issue --profile $profile --cn $cn"
  ctl_ca -q pki issue --profile "$profile" --cn "$cn" "$@" \
    --out-cert "$TLS/$name.crt" --out-key "$TLS/$name.key"
}
issue_tls broker server localhost --dns localhost --ip 127.0.0.1 --ip ::1
issue_tls api server localhost --dns localhost --ip 127.0.0.1 --ip ::1
issue_tls manager client emiotd.manager

# ---- device certificates (the operator's path: sim-002 ... sim-N) ----------
existing=()
for id in "${ids[@]}"; do
  [ -s "$DEV/$id.crt" ] && existing+=("$DEV/$id.crt")
done
check_certs "${existing[@]}"
ENROLL_SIM001=0
if [ -z "${ok[$DEV/sim-001.crt]:-}" ] || [ ! -s "$DEV/sim-001.key" ]; then
  ENROLL_SIM001=1
fi
todo=()
for id in "${ids[@]:1}"; do
  if [ -z "${ok[$DEV/$id.crt]:-}" ] || [ ! -s "$DEV/$id.key" ]; then
    todo+=("$id")
  fi
done
if [ "${#todo[@]}" -gt 0 ]; then
  echo "== ${#todo[@]} device certificate(s): emiotctl pki issue --profile device (about 1 s each: the CA key is unsealed with scrypt every time)"
  for id in "${todo[@]}"; do
    if [ -e "$DEV/$id.crt" ]; then
      echo "   $id: its certificate was revoked, expires or is unreadable: issuing a new one"
    fi
    rm -f "$DEV/$id.crt" "$DEV/$id.key"
    ctl_ca -q pki issue --profile device --cn "$id" --out-cert "$DEV/$id.crt" --out-key "$DEV/$id.key"
  done
fi

# ---- the broker ------------------------------------------------------------
BROKER_PORT=$(free_port)
# Written again at every start: the port may change and the broker gets the
# CA directory's current CRL.
BROKER_CONFIG=(broker config --out "$BROKER" --server-cert "$TLS/broker.crt"
  --server-key "$TLS/broker.key" --port "$BROKER_PORT" --bind 127.0.0.1
  --user "$(id -un)" --force)
ctl -q "${BROKER_CONFIG[@]}"
mosquitto -c "$BROKER/mosquitto.conf" >>"$RUN/broker.log" 2>&1 9>&- &
BROKER_PID=$!
if ! wait_port "$BROKER_PORT" 10; then
  echo "mosquitto did not start; the end of $RUN/broker.log:" >&2
  tail -n 20 "$RUN/broker.log" >&2
  exit 1
fi
MQTT_URL="mqtts://localhost:$BROKER_PORT"
echo "== mosquitto (pid $BROKER_PID) on $MQTT_URL: client certificates required, per-device ACL, CRL; its log: $RUN/broker.log"

# ---- emiotd ----------------------------------------------------------------
# The API port: 8443 when free, else any free one.
API_PORT=${EMIOT_API_PORT:-8443}
if (exec 3<>"/dev/tcp/127.0.0.1/$API_PORT") 2>/dev/null; then
  API_PORT=$(free_port)
fi
METRICS_PORT=$(free_port)
API_URL="https://localhost:$API_PORT"

CONF="$RUN/emiotd.conf"
cat >"$CONF" <<EOF
# Written by scripts/run.sh (make run); see deploy/emiotd.conf for every key.
[daemon]
data_dir = $DATA

[mqtt]
url = $MQTT_URL
ca_file = $CA/ca.crt
cert_file = $TLS/manager.crt
key_file = $TLS/manager.key
# The agent reports every 5 s.
status_interval = 10

# The secret that seals emiotd's JWT key and opens the CA's key.
[keystore]
passphrase_file = $PASS

# The CA: emiotd signs enrollment requests and checks device certificates
# (and the CRL) in challenge-response and on the API listener.
[pki]
dir = $CA

[listener api]
address = 127.0.0.1
port = $API_PORT
cert_file = $TLS/api.crt
key_file = $TLS/api.key
client_ca_file = $CA/ca.crt
client_auth = optional

[listener metrics]
address = 127.0.0.1
port = $METRICS_PORT
metrics_only = true
EOF

"$BUILD/emiotd" --check-config --config "$CONF" >/dev/null
"$BUILD/emiotd" --config "$CONF" 2>>"$RUN/emiotd.log" 9>&- &
EMIOTD_PID=$!
echo "== emiotd (pid $EMIOTD_PID), SQLite in $DATA, CA $CA; its log: $RUN/emiotd.log"
ready=0
for _ in $(seq 1 300); do
  if ! kill -0 "$EMIOTD_PID" 2>/dev/null; then
    echo "emiotd exited; the end of $RUN/emiotd.log:" >&2
    tail -n 20 "$RUN/emiotd.log" >&2
    EMIOTD_PID=""
    exit 1
  fi
  if curl -fsS --max-time 2 --cacert "$CA/ca.crt" "$API_URL/healthz" >/dev/null 2>&1; then
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
export EMIOT_URL="$API_URL" EMIOT_CA="$CA/ca.crt" EMIOT_API_KEY_FILE="$KEY_FILE"
# curl reads the header from a private file: the key never appears in argv.
HDR="$RUN/auth.header"
printf 'Authorization: Bearer %s\nContent-Type: application/json\n' "$(head -n 1 "$KEY_FILE")" >"$HDR"
api() { # METHOD PATH [JSON] -> prints the HTTP status
  local method=$1 path=$2 body=${3:-}
  if [ -n "$body" ]; then
    curl -s -o /dev/null -w '%{http_code}' --cacert "$CA/ca.crt" -H "@$HDR" -X "$method" \
      --data-binary "$body" "$API_URL$path"
  else
    curl -s -o /dev/null -w '%{http_code}' --cacert "$CA/ca.crt" -H "@$HDR" -X "$method" \
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

# ---- sim-001 enrolls: a one-time token, a key made on the "device" ----------
if [ "$ENROLL_SIM001" = 1 ]; then
  echo "== sim-001 enrolls: emiotctl devices enroll-token, then emiot-agent enroll (its key never leaves it)"
  if [ -e "$DEV/sim-001.crt" ]; then
    echo "   sim-001: its certificate was revoked, expires or is unreadable: enrolling again"
  fi
  TOKEN_FILE="$RUN/enroll.token"
  rm -f "$TOKEN_FILE"
  ctl -q devices enroll-token sim-001 --ttl 600 --out "$TOKEN_FILE"
  # The token is burnt by emiotd when presented; its file goes either way.
  if ! "$BUILD/emiot-agent" enroll --api "$API_URL" --ca "$CA/ca.crt" --id sim-001 \
    --token-file "$TOKEN_FILE" --key-out "$DEV/sim-001.key" --cert-out "$DEV/sim-001.crt" \
    --force | sed 's/^/   /'; then
    rm -f "$TOKEN_FILE"
    echo "run.sh: sim-001's enrollment failed; see $RUN/emiotd.log" >&2
    exit 1
  fi
  rm -f "$TOKEN_FILE"
fi

# ---- the simulated devices ---------------------------------------------------
"$BUILD/emiot-agent" --url "$MQTT_URL" --ca "$CA/ca.crt" --cert-dir "$DEV" \
  --simulate "$N" --interval 5 --telemetry-interval 5 --log-level warn \
  2>>"$RUN/agent.log" 9>&- &
AGENT_PID=$!
echo "== emiot-agent (pid $AGENT_PID) simulating $N devices, each with its certificate; its log: $RUN/agent.log"

cat <<EOF

emiot is running. The API is at $API_URL (TLS 1.3; CA $CA/ca.crt).
The admin's API key is in $KEY_FILE (0600).

  With emiotctl:
    export EMIOT_URL=$API_URL EMIOT_CA=$CA/ca.crt EMIOT_API_KEY_FILE=$KEY_FILE
    export EMIOT_PKI_DIR=$CA
    $BUILD/emiotctl devices list
    $BUILD/emiotctl groups get simulated
    $BUILD/emiotctl commands send sim-001 get_status

  With curl:
    curl --cacert $CA/ca.crt -H @$HDR $API_URL/api/v1/devices/sim-001

  Device identity (the CA's key is sealed; its passphrase is in $PASS, 0600):
    $BUILD/emiotctl pki list                        # every certificate, its expiry and status
    $BUILD/emiotctl devices certificates sim-001    # what emiotd registered when sim-001 enrolled
    # a device token by challenge-response (sim-001's key signs emiotd's nonce):
    $BUILD/emiot-agent token --api $API_URL --ca $CA/ca.crt \\
      --id sim-001 --key $DEV/sim-001.key --out $RUN/sim-001.jwt
    curl --cacert $CA/ca.crt -H "Authorization: Bearer \$(cat $RUN/sim-001.jwt)" $API_URL/api/v1/devices/sim-001
    # revoke sim-002: emiotd refuses its certificate at once; the broker refuses new
    # connections with it once it has the new CRL (sim-002 stays connected until it
    # reconnects; the next make run issues it a new certificate):
    SERIAL=\$($BUILD/emiotctl pki list -o json | jq -r '.[] | select(.commonName=="sim-002" and .status=="valid") | .serial')
    $BUILD/emiotctl pki revoke "\$SERIAL" --reason keyCompromise --passphrase-file $PASS
    $BUILD/emiotctl ${BROKER_CONFIG[*]}
    kill -HUP $BROKER_PID

  Metrics:  curl http://127.0.0.1:$METRICS_PORT/metrics
  Logs:     $RUN/emiotd.log (JSON lines), $RUN/agent.log, $RUN/broker.log

Ctrl-C stops everything.
EOF

if [ "$DURATION" -gt 0 ]; then
  sleep "$DURATION" 9>&- &
  SLEEP_PID=$!
  wait "$SLEEP_PID" || true
  SLEEP_PID=""
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
