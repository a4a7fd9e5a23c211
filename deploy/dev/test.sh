#!/usr/bin/env bash
# Runs every test against real devices: each test starts its own swtpm and its own SoftHSM2 token
# directory. Installs the Debian packages it needs first (see install-deps.sh). Ends with one line
# totalling every test binary's results.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
bash "$here/install-deps.sh"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --all-features --locked --no-fail-fast "$@" 2>&1 | tee "$out" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
