# Shell helpers for driving a standalone Ironic (see run-ironic.sh) from tests and demos.
# Source it; it needs curl and the Ironic venv's python (for JSON).
# Command substitutions keep `set -e` (NODE=$(enroll …) fails where the enrolment failed, not
# later under another message).
shopt -s inherit_errexit
API="${API:-http://127.0.0.1:6385}"
IMG="${IMG:-http://127.0.0.1:8089}"
VENV="${VENV:-$HOME/.cache/rivet-ironic/venv}"
PY="${PY:-$VENV/bin/python}"
STATE="${STATE:-${TMPDIR:-/tmp}/rivet-ironic-state}"
IRONIC_H=(-H 'Content-Type: application/json' -H 'X-OpenStack-Ironic-API-Version: 1.115')

api() { # METHOD PATH [JSON]: the answer on stdout; a 4xx/5xx answer fails, with its body on stderr
  local m=$1 p=$2 d=${3:-} out rc code try
  local args=(-sS --fail-with-body -w '\n%{http_code}' -X "$m" "${IRONIC_H[@]}" "$API$p")
  [[ -n "$d" ]] && args+=(-d "$d")
  # 503 is Ironic's "temporarily unavailable, please retry" (e.g. no conductor yet for a node
  # while the hash ring settles after a conductor died or restarted): retried for up to 30 s,
  # as any client of Ironic's should.
  for try in $(seq 1 30); do
    rc=0
    out=$(curl "${args[@]}") || rc=$?
    code=${out##*$'\n'} out=${out%$'\n'*}
    ((rc != 0 && code == 503 && try < 30)) || break
    sleep 1
  done
  if ((rc)); then
    echo "Ironic API: $m $p failed (curl exit $rc): $out" >&2
    return "$rc"
  fi
  printf '%s\n' "$out"
}

# field EXPR: read JSON on stdin, print d<EXPR> (e.g. "['provision_state']")
field() { "$PY" -c "import sys,json; d=json.load(sys.stdin); v=d$1; print(v if isinstance(v,str) else json.dumps(v))"; }

node_field() { api GET "/v1/nodes/$1" | field "$2"; }

# WAIT_POLL_S: seconds between two reads of the node (each an API call and a Python start;
# the lab, three lanes waiting at once, reads every 2 s).
wait_state() { # NODE STATE TIMEOUT_S
  local n=$1 want=$2 to=${3:-120} s=""
  local end=$((SECONDS + to))
  while ((SECONDS < end)); do
    s=$(node_field "$n" "['provision_state']")
    if [[ "$s" == "$want" ]]; then return 0; fi
    case "$s" in *failed) [[ "$want" == *failed ]] || { echo "node $n: $s: $(node_field "$n" "['last_error']")" >&2; return 1; } ;; esac
    sleep "${WAIT_POLL_S:-0.5}"
  done
  echo "node $n: timeout waiting for '$want', state '$s', last_error: $(node_field "$n" "['last_error']")" >&2
  return 1
}

# enroll NAME MAC -> prints the node UUID; the node ends 'manageable'.
enroll() {
  local name=$1 mac=$2 uuid
  api PUT "/v1/nodes/$name/maintenance" '{"reason": "cleanup"}' >/dev/null 2>&1 || true
  api DELETE "/v1/nodes/$name" >/dev/null 2>&1 || true
  # vendor lenovo: with fake management Ironic skips the boot-device call for Lenovo in UEFI
  # mode, which fake management could not honour.
  uuid=$(api POST /v1/nodes "{\"name\": \"$name\", \"driver\": \"fake-hardware\",
      \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
      \"management_interface\": \"fake\", \"network_interface\": \"noop\",
      \"properties\": {\"cpu_arch\": \"x86_64\", \"local_gb\": 10, \"memory_mb\": 4096, \"cpus\": 2,
                       \"vendor\": \"lenovo\"}}" | field "['uuid']") || return 1
  [[ -n "$uuid" ]] || { echo "enroll $name: no node UUID" >&2; return 1; }
  api POST /v1/ports "{\"node_uuid\": \"$uuid\", \"address\": \"$mac\"}" >/dev/null || return 1
  api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null || return 1
  wait_state "$uuid" manageable 60 >&2 || return 1
  echo "$uuid"
}

# enroll_available NAME MAC ROOT_DEVICE_HINT_JSON -> prints the node UUID; the node ends
# 'available' (without automated cleaning).
enroll_available() {
  local uuid
  uuid=$(enroll "$1" "$2") || return 1
  api PATCH "/v1/nodes/$uuid" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": $3}]" >/dev/null || return 1
  api PUT "/v1/nodes/$uuid/states/provision" '{"target": "provide"}' >/dev/null || return 1
  wait_state "$uuid" available 60 >&2 || return 1
  echo "$uuid"
}

# --- a test or demo session: a work dir, and on exit the agent, Ironic and the loop device go.
# Call init_session before starting Ironic; set AGENT_PID, LOOP (and LOOP2, RAMFS: a second
# loop device, a ramfs mount) as they come to exist.
RIVET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
init_session() {
  WORK=$(mktemp -d)
  AGENT_PID=
  LOOP=
  LOOP2=
  RAMFS=
  trap session_cleanup EXIT
}
session_cleanup() {
  if [[ -n "${AGENT_PID:-}" ]]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
  "$RIVET_ROOT/scripts/ironic/run-ironic.sh" stop || true
  if [[ -n "${LOOP:-}" ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
  if [[ -n "${LOOP2:-}" ]]; then losetup -d "$LOOP2" 2>/dev/null || true; fi
  if [[ -n "${RAMFS:-}" ]]; then umount "$RAMFS" 2>/dev/null || true; fi
  rm -rf "${WORK:?}"
}
# The reason is printed again after the agents' logs: a CI log cut to its tail still shows it.
fail() {
  local logs=("$WORK"/rivet*.log) n=30
  ((${#logs[@]} > 4)) && n=8
  echo "FAIL: $*" >&2; echo "--- rivet log (tail) ---" >&2; tail -n "$n" "${logs[@]}" >&2 || true
  echo "FAIL: $*" >&2; exit 1
}
# A port free now, below the kernel's range for outgoing connections (a port from binding
# port 0 is in it, and any outgoing connection beside the test could take it first).
free_port() {
  "$PY" -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    p = random.randrange(10000, max(low, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_deploy LABEL INSTANCE_INFO_JSON [PROVISION_BODY]: set instance_info, ask for "active",
# and start Rivet (static or debug build in $RIVET) for $NODE/$MAC once the node waits for
# it. Sets PORT, DSTART and AGENT_PID; Rivet's log is $WORK/rivet-LABEL.log.
start_deploy() {
  local label=$1 info=$2 body=${3:-'{"target": "active"}'}
  api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": $info}]" >/dev/null
  api PUT "/v1/nodes/$NODE/states/provision" "$body" >/dev/null
  wait_state "$NODE" "wait call-back" 60
  PORT=$(free_port)
  echo "ipa-api-url=$API BOOTIF=$MAC ipa-listen-host=127.0.0.1 ipa-listen-port=$PORT ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT" > "$WORK/cmdline"
  DSTART=$SECONDS
  "$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state-$label" --simulate-power --allow-loop-devices \
    > "$WORK/rivet-$label.log" 2>&1 &
  AGENT_PID=$!
}

# agent_done: the simulated power-off ended Rivet cleanly.
agent_done() {
  for _ in $(seq 1 20); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$AGENT_PID" 2>/dev/null && fail "rivet still running after power_off (simulated)"
  wait "$AGENT_PID" || fail "rivet exited non-zero after the simulated power off"
  AGENT_PID=
}
