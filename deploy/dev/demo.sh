#!/usr/bin/env bash
# The main job, as far as it is built: bring up the local devices and put writ's keys in them.
#
# What this does today (numbered steps below): installs missing packages, builds writ, starts a
# private SoftHSM2 token and a private swtpm (deploy/dev/stack.sh), plays a simulated measured boot
# into the swtpm, quotes it and appraises the quote and the event log against a reference profile
# (captured on the first run), generates the appliance's keys by purpose in the token and one in the TPM, and
# shows what makes each key safe. It runs again on the
# same machine without clean-up: existing keys are shown, never overwritten.
#
# Then writ serve runs over TLS (its certificate signed by the 'ca' key in the HSM) with the
# decision log, enrollment and attestation: an admin join token, writ agent enroll against the
# swtpm, the reference profile loaded and assigned, writ agent attest (quote, event log, holder
# key certified by the AK; an EAR token signed by the 'ear' key in the HSM), and writ audit over
# the log, each client pinning the CA by fingerprint; then a policy bundle, a writ for one exact
# command (writ agent request) and its DPoP proof made in the TPM (writ agent proof), a delegation
# writ and a writ under it, and the lineage read back from the log; a gateway bootstrapped from the
# appliance (writ-gate bootstrap) that requires each writ's inclusion bundle: writ-gate exec runs
# the tool for the writ once and refuses it again, and writ-gate proxy forwards one HTTP request
# to a local API once; the gateway reports its spool into the log; the signing service signs a
# file's digest and a DSSE statement for the runtime with keys in the HSM (verified offline by writ
# verify-signature with their log records, and by openssl); then PCR 7 is extended and the
# runtime's next attestation is contraindicated, so no writ. writ agent run does a writ's whole
# round (attest if stale, request, proof, inclusion, writ-gate exec) in one step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
step=0
say() { step=$((step + 1)); printf '\n== %d. %s\n' "$step" "$*"; }

say "Installing missing Debian packages (swtpm, softhsm2, tpm2-tools, libtss2-dev)"
bash "$here/install-deps.sh"
echo "ok"

say "Building writ"
cargo build --locked --quiet --bin writ --bin writ-gate
writ="${CARGO_TARGET_DIR:-$root/target}/debug/writ"
gate="${CARGO_TARGET_DIR:-$root/target}/debug/writ-gate"
echo "$writ"
echo "$gate"

say "Starting the local devices (private to ${WRIT_DEV_DIR:-$root/.dev})"
"$here/stack.sh" up
eval "$("$here/stack.sh" env)"
export TSS2_LOG=all+NONE

say "Simulating a measured boot into the swtpm (it has no firmware), once per swtpm start"
boot_log="$WRIT_DEV_DIR/swtpm/binary_bios_measurements"
if [ ! -s "$boot_log" ] || [ "$WRIT_DEV_DIR/swtpm/swtpm.pid" -nt "$boot_log" ]; then
  "$writ" dev simulate-boot --profile secure-boot --log "$boot_log"
else
  echo "(this swtpm boot was already measured: $boot_log)"
fi

say "Appraising that boot: a fresh TPM2_Quote (tpm2-tools AK), the reference profile, the EAR"
att="$WRIT_DEV_DIR/attest"
mkdir -p "$att"
nonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
(
  cd "$att"
  # No resource manager in front of swtpm: flush transient objects between steps.
  tpm2_createek -c ek.ctx -G rsa -u ek.pub >/dev/null
  tpm2_flushcontext -t
  tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub >/dev/null
  tpm2_flushcontext -t
  tpm2_quote -c ak.ctx -l sha256:0,1,2,3,4,5,6,7 -q "$nonce" -m quote.msg -s quote.sig \
    -o quote.pcrs -g sha256 >/dev/null
  tpm2_flushcontext -t
)
quote_args=(--ak "$att/ak.pub" --message "$att/quote.msg" --signature "$att/quote.sig"
  --pcrs "$att/quote.pcrs" --nonce "$nonce" --pcr-list sha256:0,1,2,3,4,5,6,7)
profile="$WRIT_DEV_DIR/reference-profile.json"
if [ ! -s "$profile" ]; then
  "$writ" reference capture --log "$boot_log" "${quote_args[@]}" --name writ-dev-swtpm --out "$profile"
else
  echo "(reference profile captured earlier: $profile)"
fi
"$writ" appraise --profile "$profile" --log "$boot_log" "${quote_args[@]}" >"$att/ear.json"
echo "EAR claims of this offline appraisal (unsigned; writ serve signs them with the 'ear' key below): $att/ear.json"

shown=$(mktemp)
trap 'rm -f "$shown"' EXIT
key() { # purpose uri
  if "$writ" keys show --key "$2" --purpose "$1" >"$shown" 2>/dev/null; then
    echo "(already there: shown, not regenerated)"; cat "$shown"
  else
    "$writ" keys generate --key "$2" --purpose "$1"
  fi
}

pkcs11_uri() { echo "pkcs11:token=$WRIT_DEV_PKCS11_TOKEN;object=$1?module-path=$WRIT_PKCS11_MODULE&pin-source=file:$WRIT_DEV_PKCS11_PIN_FILE"; }

for purpose in issuer ear ca; do
  say "The '$purpose' key in the SoftHSM2 token: sensitive, non-extractable, private"
  key "$purpose" "$(pkcs11_uri "writ-$purpose")"
done
for name in release artifacts; do
  say "The signing service's key '$name' in the SoftHSM2 token"
  key signing "$(pkcs11_uri "writ-$name")"
done

say "The 'checkpoint' key in the SoftHSM2 token, and the C2SP note verifier key auditors pin"
uri=$(pkcs11_uri writ-checkpoint)
if "$writ" keys show --key "$uri" --purpose checkpoint --log-origin writ.dev/log >"$shown" 2>/dev/null; then
  echo "(already there: shown, not regenerated)"; cat "$shown"
else
  "$writ" keys generate --key "$uri" --purpose checkpoint --log-origin writ.dev/log
fi

say "A key in the TPM (persistent handle 0x81000101): generated inside, fixedTPM, fixedParent, with an authValue"
key issuer "tpm:handle=0x81000101?tcti=$TPM2TOOLS_TCTI&auth-source=file:$WRIT_DEV_TPM_AUTH_FILE"

say "writ serve: the appliance over TLS (certificate signed by the 'ca' key in the HSM; decision log; enrollment)"
port="${WRIT_DEV_SERVE_PORT:-8787}"
serve_log="$WRIT_DEV_DIR/serve.log"
admin_token="$WRIT_DEV_DIR/admin.token"
if [ ! -s "$admin_token" ]; then
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$admin_token")
fi
# deploy/dev/writ.toml, with the paths of this dev stack from the environment. (The old log is
# removed first: the background start truncates it later than the wait below may read it.)
rm -f "$serve_log"
WRIT_STORE="sqlite:$WRIT_DEV_DIR/writ.db" WRIT_KEYS_CHECKPOINT="$(pkcs11_uri writ-checkpoint)" \
  WRIT_KEYS_CA="$(pkcs11_uri writ-ca)" WRIT_KEYS_EAR="$(pkcs11_uri writ-ear)" \
  WRIT_KEYS_ISSUER="$(pkcs11_uri writ-issuer)" \
  WRIT_TLS_CA_CERTIFICATE="$WRIT_DEV_DIR/ca.pem" \
  WRIT_ENROLLMENT_EK_ROOTS="$WRIT_DEV_DIR/swtpm/ca" WRIT_ADMIN_TOKEN_FILE="$admin_token" \
  "$writ" serve --config "$here/writ.toml" --listen "127.0.0.1:$port" \
  --signing-key "release=dsse:$(pkcs11_uri writ-release)" \
  --signing-key "artifacts=digest:$(pkcs11_uri writ-artifacts)" >"$serve_log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; rm -f "$shown"' EXIT
vkey=""
for _ in $(seq 1 100); do
  vkey=$(sed -n 's/^writ serve: checkpoint verifier key //p' "$serve_log" 2>/dev/null || true)
  [ -n "$vkey" ] && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$serve_log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$vkey" ] || { cat "$serve_log" >&2; echo "writ serve did not start" >&2; exit 1; }
server=$(sed -n 's/^writ serve: listening on //p' "$serve_log")
fingerprint=$(sed -n 's/^writ serve: CA fingerprint //p' "$serve_log")
echo "listening on $server; clients pin the CA certificate $WRIT_DEV_DIR/ca.pem by its fingerprint:"
echo "  $fingerprint"
admin=("$writ" admin --server "$server" --token-file "$admin_token" --fingerprint "$fingerprint")

say "Enrollment: an admin issues a one-time join token; the agent proves its AK lives in this TPM"
token_file="$WRIT_DEV_DIR/join.token"
rm -f "$token_file"
"${admin[@]}" join-token --name dev-runtime --ttl 600 --out "$token_file"
"$writ" agent enroll --server "$server" --fingerprint "$fingerprint" --join-token "$token_file" \
  --state "$WRIT_DEV_DIR/agent" --tcti "$TPM2TOOLS_TCTI"
rm -f "$token_file"

say "Attestation: the reference profile is assigned; the agent quotes its boot and gets an EAR token"
"${admin[@]}" load-profile --name writ-dev-swtpm "$profile"
"${admin[@]}" assign-profile --runtime dev-runtime --profile writ-dev-swtpm
"$writ" agent attest --state "$WRIT_DEV_DIR/agent" --tcti "$TPM2TOOLS_TCTI" --event-log "$boot_log"
"$writ" agent status --state "$WRIT_DEV_DIR/agent"
"${admin[@]}" runtimes

say "Issuance: the policy bundle is loaded; the agent asks for a writ for one exact command and makes its proof in the TPM"
"${admin[@]}" load-policy "$root/deploy/policy/example.json"
agent_tpm=(--state "$WRIT_DEV_DIR/agent" --tcti "$TPM2TOOLS_TCTI")
"$writ" agent request "${agent_tpm[@]}" --action exec --resource tools/build \
  --audience spiffe://writ.dev/gateway/tools --out "$WRIT_DEV_DIR/writ.jws" --tool build -- make all
"$writ" agent proof "${agent_tpm[@]}" --writ "$WRIT_DEV_DIR/writ.jws" --tool build -- make all \
  >"$WRIT_DEV_DIR/writ.proof"
echo "writ: $WRIT_DEV_DIR/writ.jws (signed by the 'issuer' key in the token); its DPoP proof: $WRIT_DEV_DIR/writ.proof"

say "The gateway: writ-gate exec runs the tool for that writ, once, and nothing else"
gate_dir="$WRIT_DEV_DIR/gate"
rm -rf "$gate_dir"
mkdir -p "$gate_dir/www"
chmod 755 "$gate_dir"
echo "hello from the tool's API" >"$gate_dir/www/index.html"
# The manifest: the tool "build" is /usr/bin/echo here (so the demo runs nothing that matters).
cat >"$gate_dir/gate.toml" <<GATE
audience = "spiffe://writ.dev/gateway/tools"
server = "$server"
bundle = "$gate_dir/bundle.json"
replay_db = "$gate_dir/replay.db"
require_inclusion = true
cert = "$gate_dir/gateway.pem"
key = "$gate_dir/gateway.key"

[tools.build]
path = "/usr/bin/echo"
sha256 = "$(sha256sum /usr/bin/echo | cut -d' ' -f1)"
cwd = "$gate_dir"
env = { PATH = "/usr/bin:/bin" }
resource = "tools/build"

[proxy]
listen = "127.0.0.1:0"
public_origin = "https://tools.writ.dev"
upstream = "UPSTREAM"

[[proxy.routes]]
prefix = "/"
resource = "tools/api"
GATE
# The gateway's client certificate, for reporting its spool to the log (any admin issues one).
"${admin[@]}" issue-cert --gateway --name dev-gateway --key-out "$gate_dir/gateway.key" \
  --cert-out "$gate_dir/gateway.pem" >/dev/null
# The trust bundle, from the appliance pinned by its CA's fingerprint (and its SPIFFE ID).
"$gate" bootstrap --config "$gate_dir/gate.toml" --fingerprint "$fingerprint"
"$gate" tools --config "$gate_dir/gate.toml"
# The gateway requires the writ's issuance in the log, under a checkpoint consistent with the
# last one it saw: the agent fetches the inclusion bundle with the proof from that size.
from_size() { "$gate" checkpoint --config "$gate_dir/gate.toml" | python3 -c 'import json, sys
v = json.load(sys.stdin); print("--from-size=%d" % v["size"] if v else "")'; }
if "$gate" exec --config "$gate_dir/gate.toml" --writ "$WRIT_DEV_DIR/writ.jws" \
  --proof "$WRIT_DEV_DIR/writ.proof" --tool build -- make all; then
  echo "the writ ran without its inclusion bundle" >&2; exit 1
fi
echo "(refused: this gateway requires the writ's inclusion bundle)"
"$writ" agent inclusion --state "$WRIT_DEV_DIR/agent" --writ "$WRIT_DEV_DIR/writ.jws" $(from_size) \
  --out "$WRIT_DEV_DIR/writ.inclusion"
"$gate" exec --config "$gate_dir/gate.toml" --writ "$WRIT_DEV_DIR/writ.jws" --proof "$WRIT_DEV_DIR/writ.proof" \
  --inclusion "$WRIT_DEV_DIR/writ.inclusion" --tool build -- make all
if "$gate" exec --config "$gate_dir/gate.toml" --writ "$WRIT_DEV_DIR/writ.jws" \
  --proof "$WRIT_DEV_DIR/writ.proof" --inclusion "$WRIT_DEV_DIR/writ.inclusion" --tool build -- make all; then
  echo "the same writ ran twice" >&2; exit 1
fi
echo "(refused: the writ is single use)"
if "$gate" exec --config "$gate_dir/gate.toml" --writ "$WRIT_DEV_DIR/writ.jws" \
  --proof "$WRIT_DEV_DIR/writ.proof" --inclusion "$WRIT_DEV_DIR/writ.inclusion" --tool build -- make clean; then
  echo "the writ ran other arguments" >&2; exit 1
fi
echo "(refused: the writ names make all, not make clean)"
echo "the gateway's spool (in $gate_dir/replay.db): the decision, durable with the writ's single use, then the outcome"
"$gate" spool --config "$gate_dir/gate.toml"
echo "writ agent run: the same in one step for agent frameworks (attest if the appraisal is stale, the writ,"
echo "its proof in the TPM, its inclusion bundle, then writ-gate exec; the exit code is the gateway's)"
"$writ" agent run "${agent_tpm[@]}" --event-log "$boot_log" --audience spiffe://writ.dev/gateway/tools \
  --resource tools/build --gate-config "$gate_dir/gate.toml" --gate "$gate" --tool build -- make test

if "$writ" agent request "${agent_tpm[@]}" --action exec --resource db/prod \
  --audience spiffe://writ.dev/gateway/tools --tool psql; then
  echo "policy allowed db/prod: the example policy forbids it" >&2; exit 1
fi
echo "(refused as the policy says: no-production-database)"
say "The gateway as an HTTP proxy: writ-gate proxy forwards one request to the tool's API for its writ"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$gate_dir/www" >"$gate_dir/upstream.log" 2>&1 &
upstream_pid=$!
for _ in $(seq 100); do grep -q "port" "$gate_dir/upstream.log" && break; sleep 0.1; done
upstream_port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$gate_dir/upstream.log" | head -1)
sed -i "s|UPSTREAM|http://127.0.0.1:$upstream_port|" "$gate_dir/gate.toml"
"$gate" proxy --config "$gate_dir/gate.toml" >"$gate_dir/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$gate_dir/proxy.log" && break; sleep 0.1; done
proxy=$(sed -n 's/^writ-gate proxy: listening on //p' "$gate_dir/proxy.log")
echo "the tool's API (python3 http.server) on 127.0.0.1:$upstream_port, behind writ-gate proxy at $proxy"
http=(--http GET --url https://tools.writ.dev/index.html)
"$writ" agent request "${agent_tpm[@]}" --action http --resource tools/api \
  --audience spiffe://writ.dev/gateway/tools --out "$WRIT_DEV_DIR/http.jws" "${http[@]}"
http_proof=$("$writ" agent proof "${agent_tpm[@]}" --writ "$WRIT_DEV_DIR/http.jws" "${http[@]}")
http_inclusion=$("$writ" agent inclusion --state "$WRIT_DEV_DIR/agent" --writ "$WRIT_DEV_DIR/http.jws" \
  $(from_size) --out "$WRIT_DEV_DIR/http.inclusion" --header)
call_proxy() {
  curl -sS -o "$gate_dir/answer" -w '%{http_code}' -H "Authorization: DPoP $(cat "$WRIT_DEV_DIR/http.jws")" \
    -H "DPoP: $http_proof" -H "Writ-Inclusion: $http_inclusion" "$proxy/index.html"
}
status=$(call_proxy)
echo "forwarded: HTTP $status: $(cat "$gate_dir/answer")"
[ "$status" = 200 ] || { echo "the proxy did not forward the writ's request" >&2; exit 1; }
status=$(call_proxy)
echo "the same writ again: HTTP $status: $(cat "$gate_dir/answer")"
[ "$status" = 401 ] || { echo "the proxy forwarded a writ twice" >&2; exit 1; }
kill "$proxy_pid" "$upstream_pid" 2>/dev/null || true
wait "$proxy_pid" "$upstream_pid" 2>/dev/null || true
echo "the gateway reports its spool: each decision and outcome becomes a gate or outcome record in the log"
"$gate" report --config "$gate_dir/gate.toml"

say "An X.509-SVID for the runtime: the holder key in the TPM, its SPIFFE ID alone, clientAuth only"
"$writ" agent svid "${agent_tpm[@]}" --out "$WRIT_DEV_DIR/svid.pem"
openssl x509 -noout -subject -ext subjectAltName,extendedKeyUsage,basicConstraints -in "$WRIT_DEV_DIR/svid.pem"
openssl verify -CAfile "$WRIT_DEV_DIR/ca.pem" -purpose sslclient "$WRIT_DEV_DIR/svid.pem"

say "The signing service: keys in the HSM sign for the attested runtime, each signature in the log first"
printf 'a build output\n' >"$WRIT_DEV_DIR/app.tar"
"$writ" agent sign "${agent_tpm[@]}" --key artifacts --file "$WRIT_DEV_DIR/app.tar" \
  --out "$WRIT_DEV_DIR/app.tar.sig" --inclusion "$WRIT_DEV_DIR/app.tar.inclusion.json"
"$writ" agent sign "${agent_tpm[@]}" --key release --subject "$WRIT_DEV_DIR/app.tar" \
  --out "$WRIT_DEV_DIR/app.intoto.json"
echo "verified offline with the trust bundle, and the signature's record in the log:"
"$writ" verify-signature --bundle "$gate_dir/bundle.json" --file "$WRIT_DEV_DIR/app.tar" \
  --signature "$WRIT_DEV_DIR/app.tar.sig" --inclusion "$WRIT_DEV_DIR/app.tar.inclusion.json"
"$writ" verify-signature --bundle "$gate_dir/bundle.json" --envelope "$WRIT_DEV_DIR/app.intoto.json" \
  --file "$WRIT_DEV_DIR/app.tar"
"$writ" keys show --key "$(pkcs11_uri writ-artifacts)" --purpose signing --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key_pem"], end="")' >"$WRIT_DEV_DIR/artifacts.pub.pem"
echo "and by openssl, with the key's public half:"
openssl dgst -sha256 -verify "$WRIT_DEV_DIR/artifacts.pub.pem" -signature "$WRIT_DEV_DIR/app.tar.sig" \
  "$WRIT_DEV_DIR/app.tar"
if "$writ" agent sign "${agent_tpm[@]}" --key release --file "$WRIT_DEV_DIR/app.tar" \
  --out "$WRIT_DEV_DIR/refused.sig"; then
  echo "a key signed a form it does not sign" >&2; exit 1
fi
echo "(refused: the release key signs DSSE envelopes only, never raw digests)"

say "Delegation: a writ for a scope (tools, this gateway), then a writ under it for one command"
"$writ" agent request "${agent_tpm[@]}" --scope --action exec --resource tools \
  --audience spiffe://writ.dev/gateway/tools --max-depth 1 --out "$WRIT_DEV_DIR/scope.jws"
child=$("$writ" agent request "${agent_tpm[@]}" --parent "$WRIT_DEV_DIR/scope.jws" --action exec \
  --resource tools/test --audience spiffe://writ.dev/gateway/tools --out "$WRIT_DEV_DIR/child.jws" \
  --tool test -- make check)
echo "$child"
child_jti=$(printf '%s' "$child" | sed -n 's/.*"jti":"\([^"]*\)".*/\1/p')
if "$writ" agent request "${agent_tpm[@]}" --parent "$WRIT_DEV_DIR/scope.jws" --action exec \
  --resource db/staging --audience spiffe://writ.dev/gateway/tools --tool psql; then
  echo "a writ outside its parent's scope was issued" >&2; exit 1
fi
echo "(refused: db/staging is outside the parent's scope)"

say "A changed machine: PCR 7 is extended (as an unexpected boot component would be); the runtime attests again"
tpm2_pcrextend "7:sha256=$(printf 'an unexpected component' | sha256sum | cut -d' ' -f1)"
if "$writ" agent attest --state "$WRIT_DEV_DIR/agent" --tcti "$TPM2TOOLS_TCTI" --event-log "$boot_log"; then
  echo "a changed PCR was affirmed" >&2; exit 1
fi
echo "(refused: the quoted PCR 7 no longer matches the boot's event log and the reference profile)"
if "$writ" agent request "${agent_tpm[@]}" --action exec --resource tools/build \
  --audience spiffe://writ.dev/gateway/tools --tool build -- make all; then
  echo "a writ was issued to a changed machine" >&2; exit 1
fi
echo "(no writ: the runtime's current appraisal is not affirming)"
# The swtpm restarts (a power cycle clears the PCRs) so that the next run boots it again.
"$here/stack.sh" down >/dev/null 2>&1
"$here/stack.sh" up >/dev/null 2>&1

say "writ audit: every decision above is in the log, under a checkpoint signed in the HSM"
sleep 2 # checkpoints are signed every second while the log grows
"$writ" audit check --log "$server" --fingerprint "$fingerprint" --key "$vkey" \
  --state "$WRIT_DEV_DIR/audit.checkpoint" --full
echo "The lineage of the writ under the delegation (jti $child_jti), from the log:"
"$writ" audit lineage --log "$server" --fingerprint "$fingerprint" --key "$vkey" \
  --state "$WRIT_DEV_DIR/audit.checkpoint" -- "$child_jti"
kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true

say "Done"
cat <<DONE
Checked at each step: the key exists in the device, its attributes forbid export (and say it was
never exportable), its PIN or authValue comes from a file only its owner can read, and a probe
signature made by the device verifies under the public key it reported.
State lives in ${WRIT_DEV_DIR}. Stop the devices: deploy/dev/stack.sh down.
Start over from factory-new devices: deploy/dev/stack.sh reset.
Enrollment checked: the EK certificate chains to the swtpm's local CA (the appliance's --ek-roots),
the AK's attributes, and the TPM's answer to a credential challenge made for that EK and AK; the
runtime's identity is in $WRIT_DEV_DIR/agent/identity.json.
Attestation checked: the quote by that AK over a fresh single-use nonce and the selection of the
runtime's profile, the PCR values, the event log replayed and appraised, the TPM's counters, the holder
key certified by the AK; the EAR token (signed by the 'ear' key in the token, bound to the holder key)
is in $WRIT_DEV_DIR/agent/last.json.
Issuance checked: the EAR is the runtime's current appraisal, the DPoP proof by its holder key, the
policy bundle (deploy/policy/example.json, Cedar) allows the request, and the allow record is durable in
the log before the writ is answered. Under a parent: the parent is this appliance's delegation writ,
under the policy in force, logged, its holder consented to the exact request (a proof by its TPM key),
and the child stays within its scope, lifetime and depth; the child's record names the parent's.
SVID checked: the EAR and a DPoP proof by the holder key, a certificate request signed by that key in the
TPM, the policy bundle (action svid); the certificate carries only the runtime's SPIFFE ID, clientAuth only,
and lives no longer than the EAR; its record is in the log before it is answered.
The store (decision log and runtime registry) is $WRIT_DEV_DIR/writ.db; writ audit remembers the last
checkpoint it verified.
The appliance's TLS certificate names spiffe://writ.dev/writ/appliance and is signed by the 'ca' key in
the token; its CA certificate is $WRIT_DEV_DIR/ca.pem.
Gateway checked: the tool's file against the manifest's hash and that nobody else can write it or its
folders, the writ with the trust bundle the appliance serves (issuer key, audience, time, the exact command,
the holder's proof made in the TPM), single use in its replay store, the decision durable in its spool
before the tool ran, and the writ's issuance in the log (its inclusion bundle, under a checkpoint signed by
the log's key and consistent with the last one the gateway saw). The proxy checked the same for the HTTP
request (method, URL, body) and forwarded it once. The gateway's trust bundle came from writ-gate bootstrap
(the appliance pinned by its CA's fingerprint and SPIFFE ID); its state is in $gate_dir.
The gateway reported its spool over mutual TLS (its certificate spiffe://writ.dev/gateway/dev-gateway,
issued by an admin): the gate and outcome records are in the log that writ audit checked.
A changed machine: after PCR 7 was extended, the quote no longer matched the event log or the reference
profile: the appraisal was contraindicated (recorded as the runtime's state), and no writ followed. The
swtpm was restarted afterwards (a power cycle clears its PCRs) so the next run boots it again.
DONE
