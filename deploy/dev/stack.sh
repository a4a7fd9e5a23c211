#!/usr/bin/env bash
# The local device stack: a private SoftHSM2 token directory and a private swtpm whose EK and platform
# certificates come from a private local CA. Everything lives under one directory (default: .dev/ in
# the repository; override with WRIT_DEV_DIR). Nothing machine-wide is read or written.
#
# usage: deploy/dev/stack.sh up|down|reset|status|env
#   up      create what is missing (token, TPM state, CA), start swtpm; idempotent
#   down    stop swtpm (state is kept)
#   reset   down, delete everything, up again (a factory-new TPM and an empty token)
#   status  what exists and what runs
#   env     print the environment to use the stack: eval "$(deploy/dev/stack.sh env)"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${WRIT_DEV_DIR:-$root/.dev}
port=${WRIT_DEV_SWTPM_PORT:-2321}
label=${WRIT_DEV_TOKEN:-writ-dev}
module=/usr/lib/softhsm/libsofthsm2.so

say() { echo "stack: $*" >&2; }

swtpm_pid() {
  [ -f "$dir/swtpm/swtpm.pid" ] || return 1
  local pid; pid=$(cat "$dir/swtpm/swtpm.pid")
  # A stale pid file may name an unrelated process by now: only a swtpm counts.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = swtpm ] && echo "$pid"
}

softhsm_up() {
  local s="$dir/softhsm"
  if [ -f "$s/softhsm2.conf" ] && SOFTHSM2_CONF="$s/softhsm2.conf" softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*$label"; then
    return 0
  fi
  mkdir -p "$s/tokens"; chmod 700 "$s"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$s/tokens" > "$s/softhsm2.conf"
  umask 077
  [ -s "$s/user.pin" ] || head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$s/user.pin"
  [ -s "$s/so.pin" ] || head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$s/so.pin"
  SOFTHSM2_CONF="$s/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
    --so-pin "$(cat "$s/so.pin")" --pin "$(cat "$s/user.pin")" >/dev/null
  say "SoftHSM2 token '$label' created in $s (PIN in $s/user.pin, mode 0600)"
}

swtpm_up() {
  local t="$dir/swtpm"
  if [ ! -s "$t/key.auth" ]; then
    mkdir -p "$t"
    (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$t/key.auth")
  fi
  if [ ! -s "$t/state/tpm2-00.permall" ]; then
    mkdir -p "$t"
    "$here/provision-swtpm.sh" "$t/state" "$t/ca"
    say "swtpm provisioned in $t/state (EK certificates from the local CA in $t/ca)"
  fi
  if swtpm_pid >/dev/null; then return 0; fi
  if ! swtpm socket --tpm2 --daemon --pid "file=$t/swtpm.pid" --log "file=$t/swtpm.log,level=1" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --tpmstate "dir=$t/state" --flags not-need-init,startup-clear; then
    say "swtpm failed to start: $(tail -n 1 "$t/swtpm.log" 2>/dev/null) (port $port; set WRIT_DEV_SWTPM_PORT to use another)"
    exit 1
  fi
  for _ in $(seq 50); do swtpm_pid >/dev/null && break; sleep 0.1; done
  swtpm_pid >/dev/null || { say "swtpm failed to start; see $t/swtpm.log"; exit 1; }
  say "swtpm running on 127.0.0.1:$port (control $((port + 1))), pid $(swtpm_pid)"
}

down() {
  local pid
  if pid=$(swtpm_pid); then
    kill "$pid"; for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    say "swtpm stopped"
  fi
  rm -f "$dir/swtpm/swtpm.pid"
}

print_env() {
  cat <<ENV
export WRIT_DEV_DIR='$dir'
export SOFTHSM2_CONF='$dir/softhsm/softhsm2.conf'
export WRIT_PKCS11_MODULE='$module'
export TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=$port'
export WRIT_DEV_PKCS11_TOKEN='$label'
export WRIT_DEV_PKCS11_PIN_FILE='$dir/softhsm/user.pin'
export WRIT_DEV_TPM_AUTH_FILE='$dir/swtpm/key.auth'
ENV
}

case "${1:-}" in
  up) mkdir -p "$dir"; chmod 700 "$dir"; softhsm_up; swtpm_up ;;
  down) down ;;
  reset) down; rm -rf "$dir"; mkdir -p "$dir"; chmod 700 "$dir"; softhsm_up; swtpm_up ;;
  status)
    echo "dir:     $dir"
    if [ -f "$dir/softhsm/softhsm2.conf" ]; then echo "softhsm: token '$label' ($dir/softhsm)"; else echo "softhsm: not created"; fi
    if pid=$(swtpm_pid); then echo "swtpm:   running, pid $pid, 127.0.0.1:$port"; else echo "swtpm:   not running"; fi ;;
  env) print_env ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
