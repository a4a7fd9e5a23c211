#!/usr/bin/env bash
# Installs the Debian packages writ's build, tests and dev stack need, if any are missing.
# Idempotent and quiet when everything is present. Needs root (or sudo) only when it installs.
set -euo pipefail
if ! command -v cargo >/dev/null; then
  echo "install-deps: Rust is missing (cargo 1.89 or newer, e.g. through rustup); Debian's packaged cargo is too old" >&2
  exit 1
fi
# postgresql: the store's tests run against a real server (PostgreSQL 15 on Debian 12); the test
# harness starts a private cluster (writ_testkit::Postgres). python3-jwt: PyJWT, the independent
# JWT implementation the interop tests check writs and DPoP proofs against. openssl: the
# independent X.509 validator of the TLS tests.
packages=(build-essential swtpm swtpm-tools tpm2-tools libtss2-dev softhsm2 opensc pkg-config postgresql postgresql-client
  python3 python3-jwt python3-cryptography python3-venv openssl curl faketime)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "install-deps: not root and no sudo; run: apt-get install -y ${missing[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# securesystemslib (PyPI): the independent DSSE implementation the signing service's envelopes
# are verified with in the tests (Debian's 0.26 has no DSSE). A private venv, pinned; the tests
# find it at $WRIT_TEST_DSSE_PYTHON, else ~/.cache/writ/py/bin/python.
venv="${WRIT_PY_VENV:-$HOME/.cache/writ/py}"
if ! "$venv/bin/python" -c 'import securesystemslib.dsse, cryptography' 2>/dev/null; then
  echo "install-deps: securesystemslib into $venv" >&2
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "securesystemslib[crypto]==1.6.0" "cryptography==50.0.2"
fi
