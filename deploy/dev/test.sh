#!/usr/bin/env bash
# Runs every test against real devices: each test starts its own swtpm and its own SoftHSM2 token
# directory. Installs the Debian packages it needs first (see install-deps.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
bash "$here/install-deps.sh"
exec cargo test --workspace --all-features --locked "$@"
