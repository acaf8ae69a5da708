#!/usr/bin/env bash
# Installs every Debian package that building, testing, benchmarking and
# `make run` need. Idempotent: packages already installed are left alone, and
# nothing is fetched when all are present. Runs apt-get as root (directly, or
# through sudo when available).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  clang clang-format clang-tidy cppcheck libclang-rt-14-dev
  libssl-dev openssl ca-certificates
  libmosquitto-dev mosquitto mosquitto-clients
  libcjson-dev libjsmn-dev libcmocka-dev
  procps curl jq
  libevent-dev libsqlite3-dev sqlite3 libpq-dev postgresql libjwt-dev
  libcurl4-openssl-dev wrk python3 python3-jwt python3-cryptography
  libp11-dev softhsm2 opensc
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
