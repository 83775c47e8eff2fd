#!/usr/bin/env bash
# The real Ironic 39 conductor (PyPI, standalone on 127.0.0.1, [agent]require_tls=true as by
# default) against Rivet:
#   - looks the node up and hands out the token,
#   - accepts Rivet's heartbeats over HTTPS with the auto-TLS certificate (stored as the
#     node's CA and used to verify every call to the agent),
#   - calls deploy.get_deploy_steps successfully (conductor log + Rivet's history),
#   - and, since this agent does not write images yet, fails the deploy on write_image with
#     Rivet's error as last_error, collecting Rivet's logs.
# usage: tests/ironic/agent_core.sh   (RIVET=path/to/rivet to test another build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-core}
WORK=$(mktemp -d)
AGENT_PID=
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  "$ROOT/scripts/ironic/run-ironic.sh" stop || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- rivet log (tail) ---" >&2; tail -40 "$WORK/rivet.log" >&2 || true; exit 1; }
t0=$SECONDS

[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET (cargo build first)"
REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
grep -q '^require_tls = true' "$STATE/ironic.conf" || fail "Ironic must run with require_tls = true"

MAC=52:54:00:12:34:56
NODE=$(enroll node0 "$MAC")
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$NODE" available 60
sum=$(cat "$STATE/images/disk.raw.sha256")
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {
  \"image_source\": \"$IMG/disk.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$sum\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$NODE" "wait call-back" 60

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "ipa-api-url=$API BOOTIF=$MAC ipa-listen-host=127.0.0.1 ipa-listen-port=$PORT ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT" > "$WORK/cmdline"
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power > "$WORK/rivet.log" 2>&1 &
AGENT_PID=$!
ta=$SECONDS

# 1. get_deploy_steps ran and succeeded (Rivet's persisted history).
for _ in $(seq 1 120); do
  grep -q '"command_name":"get_deploy_steps","command_status":"SUCCEEDED"' "$WORK/state/commands.json" 2>/dev/null && break
  kill -0 "$AGENT_PID" 2>/dev/null || fail "rivet exited"
  sleep 0.5
done
grep -q '"command_name":"get_deploy_steps","command_status":"SUCCEEDED"' "$WORK/state/commands.json" \
  || fail "the conductor never got deploy steps from Rivet"
echo "ok: get_deploy_steps SUCCEEDED in Rivet's history ($((SECONDS - ta)) s after agent start)"

# 2. The conductor recorded our HTTPS callback and the certificate we advertised.
agent_url=$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")
[[ "$agent_url" == "https://127.0.0.1:$PORT" ]] || fail "agent_url is '$agent_url'"
cmp -s "$STATE/certificates/$NODE.crt" "$WORK/state/agent.crt" \
  || fail "the conductor's stored CA for the node is not Rivet's certificate"
echo "ok: conductor stored agent_url $agent_url and Rivet's auto-TLS certificate"

# 3. The conductor log shows the lookup, heartbeats and the successful command call.
grep -q "\"token\":\"" "$WORK/state/session.json" || fail "no token saved"
grep -qi "TLS is required" "$STATE/ironic.log" && fail "conductor rejected a heartbeat for missing TLS"
grep -q "Agent command deploy.get_deploy_steps for node $NODE returned result {'deploy_steps': {'GenericHardwareManager': \[{[^]]*'step': 'write_image'.*error None, HTTP status code 200" "$STATE/ironic.log" \
  || fail "conductor log does not show a successful deploy.get_deploy_steps"
echo "ok: conductor log: deploy.get_deploy_steps returned steps with HTTP 200"

# 4. write_image is not implemented in this agent yet: the deploy must fail cleanly with our
#    error, and the conductor must have collected Rivet's logs.
wait_state "$NODE" "deploy failed" 90 || fail "node did not reach 'deploy failed'"
err=$(node_field "$NODE" "['last_error']")
echo "last_error: $err"
[[ "$err" == *"write_image"* && "$err" == *"not available in this Rivet build"* ]] || fail "unexpected last_error"
tgz=$(ls "$STATE"/deploy-logs/*.tar.gz 2>/dev/null | head -1)
[[ -n "$tgz" ]] || fail "conductor stored no ramdisk logs"
tar -tzf "$tgz" | grep -qx rivet.log || fail "collected logs lack rivet.log"
tar -xzOf "$tgz" rivet.log | grep -q "lookup succeeded" || fail "rivet.log in the archive lacks the agent's log"
echo "ok: deploy failed with Rivet's error; conductor collected Rivet's logs ($tgz)"
echo "PASS agent_core ($((SECONDS - t0)) s)"
