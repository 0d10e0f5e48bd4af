#!/usr/bin/env bash
# Initialise a SoftHSM2 token in a data directory, with no PIN on any command line.
#
#   softhsm/init-token.sh DATA_DIR
#
# Creates what is missing (the config is rewritten every run):
#   DATA_DIR/softhsm2.conf   SoftHSM2 config whose token directory is DATA_DIR/tokens
#   DATA_DIR/tokens/         the token store (put it on a persistent volume)
#   DATA_DIR/so-pin          random SO PIN, mode 0600
#   DATA_DIR/user-pin        random user PIN, mode 0600 (the service reads it)
# then initialises token $KMS_HSM_TOKEN_LABEL (default kms-hsm) with C_InitToken/C_InitPIN
# through `python -m kms_hsm.crypto.pkcs11.provision`, which reads the PIN files.
# Idempotent: an existing token is left alone. Used by `kms-hsm serve` (embedded default),
# docker-compose.yml and the test fixtures.
set -euo pipefail

data_dir=${1:?usage: init-token.sh DATA_DIR}
label=${KMS_HSM_TOKEN_LABEL:-kms-hsm}
module=${KMS_HSM_PKCS11_LIBRARY:-/usr/lib/softhsm/libsofthsm2.so}
python=${PYTHON:-python3}

umask 077
if [ ! -e "$module" ]; then
  echo "init-token: PKCS#11 module $module not found (apt-get install -y softhsm2)" >&2
  exit 1
fi
mkdir -p "$data_dir/tokens"
data_dir=$(cd "$data_dir" && pwd)
conf="$data_dir/softhsm2.conf"

# One initialiser at a time per directory (two embedded-default processes may start at once).
exec 9>"$data_dir/.init-token.lock"
flock 9

# Rewritten every run, so a moved or remounted directory still finds its tokens.
cat > "$conf" <<CONF
# Written by softhsm/init-token.sh
directories.tokendir = $data_dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
CONF

new_pin() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
for f in so-pin user-pin; do
  if [ ! -s "$data_dir/$f" ]; then
    if [ -n "$(ls -A "$data_dir/tokens")" ]; then
      echo "init-token: $data_dir/$f is missing but a token exists; restore the PIN file" >&2
      exit 1
    fi
    new_pin > "$data_dir/$f"
  fi
  chmod 600 "$data_dir/$f"
done

export SOFTHSM2_CONF="$conf"
exec "$python" -m kms_hsm.crypto.pkcs11.provision \
  --module "$module" --label "$label" \
  --so-pin-file "$data_dir/so-pin" --user-pin-file "$data_dir/user-pin"
