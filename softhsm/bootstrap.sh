#!/usr/bin/env bash
# Install what kms-hsm needs on a fresh Debian/Ubuntu machine, into ./.venv.
#
#   bash softhsm/bootstrap.sh          SoftHSM2 + the service
#   bash softhsm/bootstrap.sh --dev    also the test tools (docker-compose, wrk, PostgreSQL,
#                                      pytest, ...)
#
# Idempotent: installs only what is missing. Needs Python >= 3.11 (Debian 12, Ubuntu 24.04).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=false
[ "${1:-}" = "--dev" ] && dev=true

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || packages+=(softhsm2)
command -v curl >/dev/null || packages+=(curl)
command -v flock >/dev/null || packages+=(util-linux)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
if $dev; then
  command -v docker-compose >/dev/null || packages+=(docker-compose)
  command -v wrk >/dev/null || packages+=(wrk)
  command -v pkcs11-tool >/dev/null || packages+=(opensc)
  command -v gcc >/dev/null || packages+=(gcc)
  # The PostgreSQL tests run initdb and pg_ctl themselves (tests/pg_cluster.py); the
  # cluster that Debian's package may create and start on port 5432 is not used.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null ||
    packages+=(postgresql)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap: kms-hsm needs Python 3.11 or newer (found $(python3 --version))" >&2
  exit 1
}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if $dev; then
  .venv/bin/python -m pip install -q -e '.[dev]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "bootstrap: ready (.venv/bin/kms-hsm)"
