#!/usr/bin/env bash
# emiot - gen-certs.sh DIR [DEVICE_ID...]: a small PKI for tests and the demo.
#
# Makes, with the openssl command line, in DIR (created 0700; keys 0600):
#   ca.key, ca.crt                 ECDSA P-256 CA (CA:true; keyCertSign, cRLSign)
#   server.key, server.crt         CN=localhost, SAN DNS:localhost, IP:127.0.0.1,
#                                  IP:::1; EKU serverAuth; signed by the CA
#   manager.key, manager.crt       CN=emiot-manager; EKU clientAuth
#   devices/<id>.key, .crt         CN=<id>; EKU clientAuth; one per DEVICE_ID
#   other-ca.key, other-ca.crt     a second, unrelated CA
#   other-client.key, .crt         CN=other-client, clientAuth, signed by other-ca
#                                  (for wrong-CA tests)
#   wrong-host.key, .crt           a server certificate from the right CA but for
#                                  the name wrong-host.invalid only (for host name
#                                  verification tests)
# Idempotent: what already exists is kept (a new CA re-issues what it signs).
# Quiet unless it fails; then it says what failed and exits non-zero.
set -euo pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: gen-certs.sh DIR [DEVICE_ID...]" >&2
  exit 2
fi
DIR=$1
shift
DAYS=825
umask 077

for id in "$@"; do
  # Device ids name files: only the protocol's id alphabet is accepted.
  if ! [[ $id =~ ^[A-Za-z0-9_-]{3,50}$ ]]; then
    echo "gen-certs: invalid device id '$id' (3-50 of A-Z a-z 0-9 _ -)" >&2
    exit 2
  fi
done

mkdir -p "$DIR" "$DIR/devices"
chmod 700 "$DIR" "$DIR/devices"

# run CMD...: runs quietly; on failure prints the command and its output.
run() {
  local out
  if ! out=$("$@" 2>&1); then
    echo "gen-certs: failed: $*" >&2
    printf '%s\n' "$out" >&2
    exit 1
  fi
}

CNF=$(mktemp "$DIR/.openssl-XXXXXX.cnf")
CSR=$(mktemp "$DIR/.req-XXXXXX.csr")
trap 'rm -f "$CNF" "$CSR"' EXIT
cat >"$CNF" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
[wronghost]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong-host.invalid
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

# newkey FILE: an ECDSA P-256 private key, mode 0600.
newkey() {
  run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
  chmod 600 "$1"
}

# make_ca NAME CN: NAME.key and NAME.crt, self-signed. Returns 0 when it made
# a new CA, 1 when both files already existed.
make_ca() {
  local name=$1 cn=$2
  if [ -s "$DIR/$name.key" ] && [ -s "$DIR/$name.crt" ]; then
    return 1
  fi
  newkey "$DIR/$name.key"
  run openssl req -config "$CNF" -new -x509 -sha256 -days "$DAYS" -key "$DIR/$name.key" \
    -subj "/CN=$cn" -extensions ca -set_serial "0x$(openssl rand -hex 16)" -out "$DIR/$name.crt"
  chmod 644 "$DIR/$name.crt"
  return 0
}

# issue CA_NAME OUT_BASE CN SECTION FORCE: OUT_BASE.key and OUT_BASE.crt
# signed by CA_NAME, with the extensions of SECTION. Skipped when both exist,
# unless FORCE is 1 (the CA was just made).
issue() {
  local ca=$1 out=$2 cn=$3 section=$4 force=$5
  if [ "$force" -eq 0 ] && [ -s "$out.key" ] && [ -s "$out.crt" ]; then
    return 0
  fi
  if [ ! -s "$out.key" ]; then
    newkey "$out.key"
  fi
  run openssl req -config "$CNF" -new -sha256 -key "$out.key" -subj "/CN=$cn" -out "$CSR"
  run openssl x509 -req -in "$CSR" -CA "$DIR/$ca.crt" -CAkey "$DIR/$ca.key" -sha256 \
    -days "$DAYS" -set_serial "0x$(openssl rand -hex 16)" -extfile "$CNF" \
    -extensions "$section" -out "$out.crt"
  chmod 644 "$out.crt"
}

force=0
if make_ca ca "emiot test CA"; then force=1; fi
issue ca "$DIR/server" localhost server "$force"
issue ca "$DIR/wrong-host" wrong-host.invalid wronghost "$force"
issue ca "$DIR/manager" emiot-manager client "$force"
for id in "$@"; do
  issue ca "$DIR/devices/$id" "$id" client "$force"
done

other=0
if make_ca other-ca "unrelated test CA"; then other=1; fi
issue other-ca "$DIR/other-client" other-client client "$other"
