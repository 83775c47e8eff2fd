# Shell helpers for driving a standalone Ironic (see run-ironic.sh) from tests and demos.
# Source it; it needs curl and the Ironic venv's python (for JSON).
API="${API:-http://127.0.0.1:6385}"
IMG="${IMG:-http://127.0.0.1:8089}"
VENV="${VENV:-$HOME/.cache/rivet-ironic/venv}"
PY="${PY:-$VENV/bin/python}"
STATE="${STATE:-${TMPDIR:-/tmp}/rivet-ironic-state}"
IRONIC_H=(-H 'Content-Type: application/json' -H 'X-OpenStack-Ironic-API-Version: 1.115')

api() { # METHOD PATH [JSON]
  local m=$1 p=$2 d=${3:-}
  if [[ -n "$d" ]]; then
    curl -sS -X "$m" "${IRONIC_H[@]}" "$API$p" -d "$d"
  else
    curl -sS -X "$m" "${IRONIC_H[@]}" "$API$p"
  fi
}

# field EXPR: read JSON on stdin, print d<EXPR> (e.g. "['provision_state']")
field() { "$PY" -c "import sys,json; d=json.load(sys.stdin); v=d$1; print(v if isinstance(v,str) else json.dumps(v))"; }

node_field() { api GET "/v1/nodes/$1" | field "$2"; }

wait_state() { # NODE STATE TIMEOUT_S
  local n=$1 want=$2 to=${3:-120} s=""
  local end=$((SECONDS + to))
  while ((SECONDS < end)); do
    s=$(node_field "$n" "['provision_state']")
    if [[ "$s" == "$want" ]]; then return 0; fi
    case "$s" in *failed) [[ "$want" == *failed ]] || { echo "node $n: $s: $(node_field "$n" "['last_error']")" >&2; return 1; } ;; esac
    sleep 0.5
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
                       \"vendor\": \"lenovo\"}}" | field "['uuid']")
  api POST /v1/ports "{\"node_uuid\": \"$uuid\", \"address\": \"$mac\"}" >/dev/null
  api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null
  wait_state "$uuid" manageable 60 >&2
  echo "$uuid"
}
