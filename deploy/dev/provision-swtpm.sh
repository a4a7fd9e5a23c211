#!/usr/bin/env bash
# Provisions a swtpm state directory with an EK certificate (RSA-2048 and ECC P-384) and a platform
# certificate, both issued by a private local CA. Nothing machine-wide is read or written: the CA,
# its configuration and the TPM state all live under the directories given.
#
# usage: provision-swtpm.sh STATE_DIR CA_DIR
#   STATE_DIR  receives tpm2-00.permall and the EK certificate files (ek.cert, ek-ecc.cert ...)
#   CA_DIR     the local CA (created on first use, reused after): swtpm-localca-rootca-cert.pem,
#              issuercert.pem, their keys and the serial counter
set -euo pipefail
state=${1:?usage: provision-swtpm.sh STATE_DIR CA_DIR}
ca=${2:?usage: provision-swtpm.sh STATE_DIR CA_DIR}
mkdir -p "$state" "$ca"
state=$(cd "$state" && pwd)
ca=$(cd "$ca" && pwd)
chmod 700 "$ca"

cat > "$ca/swtpm-localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
cat > "$ca/swtpm-localca.options" <<CONF
--platform-manufacturer writ
--platform-version 2.1
--platform-model swtpm
CONF
cat > "$ca/swtpm_setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $ca/swtpm-localca.conf
create_certs_tool_options = $ca/swtpm-localca.options
active_pcr_banks = sha256
CONF

# swtpm_setup writes its own log; keep it with the state so failures can be read.
if ! swtpm_setup --tpm2 --tpmstate "$state" --create-ek-cert --create-platform-cert --lock-nvram \
    --config "$ca/swtpm_setup.conf" --write-ek-cert-files "$state" --overwrite \
    --logfile "$state/swtpm_setup.log" >/dev/null 2>&1; then
  echo "provision-swtpm: swtpm_setup failed; log follows" >&2
  cat "$state/swtpm_setup.log" >&2 || true
  exit 1
fi
test -s "$state/tpm2-00.permall"
