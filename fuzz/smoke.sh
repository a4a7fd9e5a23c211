#!/usr/bin/env bash
# Builds every fuzz target and runs each for a few seconds (CI smoke run). cargo-fuzz needs
# nightly-only rustc flags; RUSTC_BOOTSTRAP lets the stable toolchain (the only one here) accept
# them, for this build only.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-8}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
# Fuzz builds use other flags than the workspace's: keep them in their own target directory.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR="$CARGO_TARGET_DIR-fuzz"; fi
targets=$(cargo fuzz list)
cargo fuzz build --sanitizer none -O
for t in $targets; do
  mkdir -p corpus/$t
  # Inputs that once failed are always part of the corpus.
  cp regressions/"$t"-* corpus/$t/ 2>/dev/null || true
done
# Real event logs seed the event log target.
cp ../../shared/vectors/eventlogs/*.bin corpus/event_log/ 2>/dev/null || true
for t in $targets; do
  max_len=4096
  [ "$t" = event_log ] && max_len=131072
  cargo fuzz run --sanitizer none -O "$t" -- -max_total_time="$seconds" -max_len="$max_len" corpus/$t 2>&1 | tail -n 1
done
