#!/usr/bin/env bash
# Ironic's own scale-out with Rivet as the agent: three ironic-conductor processes on one
# MariaDB behind two ironic-api processes, JSON-RPC between them (run-ironic.sh with
# CONDUCTORS=3 APIS=2). N nodes (24) are deployed at once, each by its own Rivet agent on a
# loop device, the agents given both API URLs (ipa-api-url=A,B). While they deploy:
#   1. the conductor serving the most nodes is killed (kill -9); the others take its nodes
#      over when its heartbeat in the database goes stale;
#   2. the database is stopped for DB_OUTAGE seconds (10), then started again;
#   3. the first API process (the one the agents try first) is killed (kill -9): the agents
#      go on through the second.
# End state: every node "active", every disk equal to the image, no node left in a *ing or
# wait state, no agent crashed or restarted (each ran once and ended at its node's
# power-off). A node Ironic itself moved to "deploy failed" because its conductor died under
# it is re-deployed once, which power-cycles it: its agent boots again (as a real node's
# ramdisk would); a second failure fails the test. A node the database outage left in
# "deploying" under a live conductor's lock (Ironic could not write the lock's release) is
# freed as an operator would: that conductor is restarted (once), which fails the node, and
# it is re-deployed once like the others.
# The agents' heartbeats are counted from the API's logs: none may come faster than once a
# second on average (no storm while a conductor or the database is gone). Prints:
#   scaleout: N active, K conductors, 1 killed, M retried once, db outage S s, lost 0
# usage: tests/ironic/scaleout.sh   (RIVET=path/to/rivet; N=24; DB_OUTAGE=10)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
N=${N:-24}
DB_OUTAGE=${DB_OUTAGE:-10}
K=3
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-scaleout}
export API_PORT=${API_PORT:-7305} IMG_PORT=${IMG_PORT:-8305}
export API="http://127.0.0.1:$API_PORT" IMG="http://127.0.0.1:$IMG_PORT"
API2="http://127.0.0.1:$((API_PORT + 1))"
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
LOOPS=() PIDS=()
scaleout_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${LOOPS[@]}"; do losetup -d "$p" 2>/dev/null || true; done
  session_cleanup
}
trap scaleout_cleanup EXIT
trap 'exit 143' TERM INT
# crash PIDFILE: a process and its workers die at once (kill -9), as in a machine's crash.
crash() { local p; p=$(cat "$1"); pkill -9 -P "$p" || true; kill -9 "$p"; }
t0=$SECONDS
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET (cargo build first)"

CONDUCTORS=$K APIS=2 CONDUCTOR_TIMEOUT=10 REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 \
  "$ROOT/scripts/ironic/run-ironic.sh" start
"$ROOT/scripts/ironic/make-test-image.sh" "$STATE/images/scale.raw" 40
SUM=$(sha256sum "$STATE/images/scale.raw" | cut -d' ' -f1)
SIZE=$(stat -c %s "$STATE/images/scale.raw")

# states NODE...: each node's provision state (spaces as _), in one request.
states() {
  api GET "/v1/nodes?fields=uuid,provision_state&limit=1000" | "$PY" -c "
import json, sys
d = {x['uuid']: x['provision_state'] for x in json.load(sys.stdin)['nodes']}
print(' '.join(d.get(u, '?').replace(' ', '_') for u in sys.argv[1:]))" "$@"
}
# wait_all STATE TIMEOUT NODE...: every node in STATE.
wait_all() {
  local want=$1 end=$((SECONDS + $2)) st; shift 2
  while ((SECONDS < end)); do
    st=$(states "$@")
    [[ -z "$(tr ' ' '\n' <<<"$st" | grep -v -x "$want" || true)" ]] && return 0
    sleep 1
  done
  fail "not every node reached '$want': $st"
}

# --- N nodes, enrolled and made available side by side ---------------------------------------
NODES=() MACS=()
for ((i = 0; i < N; i++)); do
  truncate -s 80M "$WORK/disk-$i.img"
  LOOPS+=("$(losetup --find --show "$WORK/disk-$i.img")")
  MACS+=("$(printf '52:54:00:5c:%02x:%02x' $((i / 256)) $((i % 256)))")
  NODES+=("$(api POST /v1/nodes "{\"name\": \"scale-$i\", \"driver\": \"fake-hardware\",
      \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
      \"management_interface\": \"fake\", \"network_interface\": \"noop\",
      \"properties\": {\"cpu_arch\": \"x86_64\", \"local_gb\": 10, \"memory_mb\": 4096, \"cpus\": 2,
                       \"vendor\": \"lenovo\", \"root_device\": {\"name\": \"${LOOPS[$i]}\"}}}" | field "['uuid']")")
  api POST /v1/ports "{\"node_uuid\": \"${NODES[$i]}\", \"address\": \"${MACS[$i]}\"}" >/dev/null
done
for n in "${NODES[@]}"; do api PUT "/v1/nodes/$n/states/provision" '{"target": "manage"}' >/dev/null; done
wait_all manageable 120 "${NODES[@]}"
for n in "${NODES[@]}"; do api PUT "/v1/nodes/$n/states/provision" '{"target": "provide"}' >/dev/null; done
wait_all available 120 "${NODES[@]}"
# The hash ring spread them: how many each conductor serves.
per_conductor() { # "CONDUCTOR:COUNT ..." of the nodes given (Ironic lists no conductor field)
  "$PY" - "$API" "$@" <<'PY'
import collections, json, sys, urllib.request
api, nodes = sys.argv[1], sys.argv[2:]
c = collections.Counter()
for n in nodes:
    req = urllib.request.Request(f"{api}/v1/nodes/{n}", headers={"X-OpenStack-Ironic-API-Version": "1.115"})
    c[json.load(urllib.request.urlopen(req, timeout=30)).get("conductor")] += 1
print(" ".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))))
PY
}
echo "ok: $N nodes available, spread over the conductors: $(per_conductor "${NODES[@]}")"

# --- deploy all; agents start as their nodes wait for them -----------------------------------
for n in "${NODES[@]}"; do
  api PATCH "/v1/nodes/$n" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/scale.raw\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$SUM\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
done
tdeploy=$SECONDS
for n in "${NODES[@]}"; do api PUT "/v1/nodes/$n/states/provision" '{"target": "active"}' >/dev/null; done
declare -A STARTED=() BOOTS=()
API_URLS="$API,$API2"
start_agents() { # start the agent of each node now waiting for its call-back
  local st i port
  read -r -a st <<<"$(states "${NODES[@]}")"
  for ((i = 0; i < N; i++)); do
    [[ -n "${STARTED[$i]:-}" || "${st[$i]}" != "wait_call-back" ]] && continue
    port=$(free_port)
    echo "ipa-api-url=$API_URLS BOOTIF=${MACS[$i]} ipa-listen-host=127.0.0.1 ipa-listen-port=$port ipa-advertise-host=127.0.0.1 ipa-advertise-port=$port" > "$WORK/cmdline-$i"
    "$RIVET" --cmdline-file "$WORK/cmdline-$i" --state-dir "$WORK/state-$i-${BOOTS[$i]:-0}" --simulate-power --allow-loop-devices \
      >> "$WORK/rivet-$i.log" 2>&1 &
    PIDS[i]=$!
    STARTED[$i]=1
  done
}
end=$((SECONDS + 120))
while ((${#STARTED[@]} < N / 2 && SECONDS < end)); do start_agents; sleep 0.5; done
((${#STARTED[@]} >= N / 2)) || fail "only ${#STARTED[@]} of $N nodes waited for their agent in 120 s"

tally() { tr ' ' '\n' <<<"$(states "${NODES[@]}")" | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}'; }
# --- 1. kill -9 the conductor serving the most nodes -----------------------------------------
victim=$(per_conductor "${NODES[@]}" | tr ' ' '\n' | awk -F: '{print $NF, $1}' | sort -n | tail -n 1 | cut -d' ' -f2)
[[ "$victim" == 127.0.1.* ]] || fail "no conductor serves the nodes: $(per_conductor "${NODES[@]}")"
crash "$STATE/pids/conductor-${victim##*.}.pid"
echo "ok: killed conductor $victim (kill -9) at $((SECONDS - tdeploy)) s; nodes: $(tally)"
# (the nodes still to start wait for their new conductor)
next=$((SECONDS + 5))
while ((SECONDS < next)); do start_agents; sleep 1; done

# --- 2. the database down for DB_OUTAGE seconds ----------------------------------------------
echo "ok: stopping the database at $((SECONDS - tdeploy)) s; nodes: $(tally)"
"$ROOT/scripts/ironic/run-ironic.sh" db-stop
down=$SECONDS
sleep "$DB_OUTAGE"
"$ROOT/scripts/ironic/run-ironic.sh" db-start
outage=$((SECONDS - down))
echo "ok: database back after $outage s"

# --- 3. kill -9 the first API process; the test goes on through the second -------------------
start_agents
crash "$STATE/pids/api-0.pid"
API=$API2
echo "ok: killed the first API process at $((SECONDS - tdeploy)) s; the agents and the test use the second"

# stuck_locks: "CONDUCTOR NODE" for each node Ironic left in "deploying" (where the conductor
# works, not waits) for over STUCK seconds, locked by a conductor that is alive (or by none:
# then CONDUCTOR is the node's own). The database
# going away under a step leaves that: the step fails, and so does every write of its error
# handling, the release of the node's lock among them, and a live conductor never frees its
# own lock. The operator's fix is to restart that conductor: at start-up it clears its
# locks and moves its nodes left mid-step to "deploy failed".
# Generous: on a loaded machine a conductor that works may keep a node in deploying for a while.
STUCK=${STUCK:-120}
stuck_locks() {
  "$PY" - "$API" "$STUCK" "$@" <<'PY'
import datetime, json, sys, urllib.request
api, stuck, nodes = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
def get(path):
    req = urllib.request.Request(api + path, headers={"X-OpenStack-Ironic-API-Version": "1.115"})
    return json.load(urllib.request.urlopen(req, timeout=30))
alive = {c["hostname"] for c in get("/v1/conductors?detail=true")["conductors"] if c.get("alive")}
now = datetime.datetime.now(datetime.timezone.utc)
for n in get("/v1/nodes?fields=uuid,provision_state,reservation,provision_updated_at&limit=1000")["nodes"]:
    # A lock held by a dead conductor is Ironic's own to take over.
    if (n["uuid"] not in nodes or n["provision_state"] != "deploying"
            or not n["provision_updated_at"] or (n["reservation"] and n["reservation"] not in alive)):
        continue
    t = datetime.datetime.fromisoformat(n["provision_updated_at"])
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    if (now - t).total_seconds() > stuck:
        # The lock's holder clears it at its start; unlocked, the node's own conductor fails
        # it at its start.
        print(n["reservation"] or get(f"/v1/nodes/{n['uuid']}")["conductor"], n["uuid"])
PY
}
# not_active: each node not active, with its state, lock and last error (for a failure).
not_active() {
  "$PY" - "$API" "$@" <<'PY'
import json, sys, urllib.request
api, nodes = sys.argv[1], set(sys.argv[2:])
req = urllib.request.Request(api + "/v1/nodes?fields=uuid,name,provision_state,reservation,last_error&limit=1000",
                             headers={"X-OpenStack-Ironic-API-Version": "1.115"})
for n in json.load(urllib.request.urlopen(req, timeout=30))["nodes"]:
    if n["uuid"] in nodes and n["provision_state"] != "active":
        print(f"  {n['name']} {n['uuid']}: {n['provision_state']}, locked by {n['reservation']}, last error: {n['last_error']}")
PY
}

# --- the end state ---------------------------------------------------------------------------
declare -A RETRIED=() CUT=() RESTARTED=() FREED=()
end=$((SECONDS + 600)) report=$((SECONDS + 30))
while ((SECONDS < end)); do
  start_agents
  locks=$(stuck_locks "${NODES[@]}") || fail "cannot read the nodes' locks from the API"
  while read -r holder node; do
    [[ -z "$holder" ]] && continue
    # A restart frees every lock its conductor held: the same node stuck again means it did not.
    [[ -n "${FREED[$node]:-}" ]] && fail "node $node stuck in deploying again after conductor ${FREED[$node]}'s restart"
    ((${#FREED[@]} < 6)) || fail "node $node stuck in deploying under $holder; conductors restarted six times already: ${!RESTARTED[*]}"
    echo "node $node: in deploying for over $STUCK s, under the live conductor $holder (the lock's release failed in the database outage); restarting $holder"
    RESTARTED[$holder]=1 FREED[$node]=$holder
    "$ROOT/scripts/ironic/run-ironic.sh" conductor-restart "${holder##*.}" || fail "could not restart conductor $holder"
  done <<<"$locks"
  read -r -a st <<<"$(states "${NODES[@]}")"
  busy=0
  for ((i = 0; i < N; i++)); do
    case "${st[$i]}" in
      active) ;;
      deploy_failed)
        [[ -n "${RETRIED[$i]:-}" ]] && fail "node scale-$i failed twice: $(node_field "${NODES[$i]}" "['last_error']")"
        echo "node scale-$i: deploy failed ($(node_field "${NODES[$i]}" "['last_error']")); deploying it again"
        RETRIED[$i]=1
        # The redeploy power-cycles the node (Ironic's power off, then on), which boots a
        # real node's ramdisk afresh: an agent the dead conductor had already powered off (its
        # last command) boots again; one still running is cut off (fake power cuts nothing)
        # and boots again. A running agent kept would answer with the aborted deploy's
        # command history, from which Ironic would wait for a step that never comes.
        if kill -0 "${PIDS[$i]}" 2>/dev/null; then
          CUT[$i]=1
          kill "${PIDS[$i]}"
          wait "${PIDS[$i]}" || true
        else
          wait "${PIDS[$i]}" || fail "the agent of scale-$i exited non-zero: $(tail -n 5 "$WORK/rivet-$i.log")"
          sed 's/\x1b\[[0-9;]*m//g' "$WORK/rivet-$i.log" | grep -a "system event ev=PowerOff" >/dev/null \
            || fail "the agent of scale-$i ended without a power-off: $(tail -n 5 "$WORK/rivet-$i.log")"
        fi
        BOOTS[$i]=1
        unset "STARTED[$i]"
        api PUT "/v1/nodes/${NODES[$i]}/states/provision" '{"target": "active"}' >/dev/null
        busy=1 ;;
      *) busy=1 ;;
    esac
  done
  ((busy == 0)) && break
  if ((SECONDS >= report)); then
    echo "  $((SECONDS - tdeploy)) s: $(tally)"; report=$((SECONDS + 30))
  fi
  sleep 1
done
read -r -a st <<<"$(states "${NODES[@]}")"
lost=0
for ((i = 0; i < N; i++)); do [[ "${st[$i]}" == active ]] || lost=$((lost + 1)); done
if ((lost > 0)); then
  # What the conductors last said of each (their logs name the node by UUID).
  for u in $(not_active "${NODES[@]}" | awk '{print $2}' | tr -d :); do
    echo "--- conductor log lines on $u (last 4):"
    grep -a -h "$u" "$STATE"/conductor-*.log | grep -a -E "ERROR|WARNING|state|fail" | tail -n 4 | cut -c1-300 || true
  done
  fail "$lost nodes not active after 600 s:
$(not_active "${NODES[@]}")"
fi
echo "ok: all $N nodes active $((SECONDS - tdeploy)) s after the deploys were asked for"

# No agent restarted: each ran once and ended (exit 0) at its node's power-off.
for ((i = 0; i < N; i++)); do
  for _ in $(seq 1 40); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.5; done
  wait "${PIDS[$i]}" || fail "the agent of scale-$i exited non-zero: $(tail -n 5 "$WORK/rivet-$i.log")"
done
PIDS=()
# Every disk holds the image (the first MiB, where the GPT's backup header is moved to the
# disk's end, compared from its second sector on: the rest byte for byte).
for ((i = 0; i < N; i++)); do
  cmp -i 1048576:1048576 -n $((SIZE - 1048576)) "$STATE/images/scale.raw" "${LOOPS[$i]}" \
    || fail "the disk of scale-$i differs from the image"
done
echo "ok: every disk holds the image"
# A node deployed once was written once: a takeover, the outage or a dead API never made an
# agent write (or a conductor ask for) the image again.
for ((i = 0; i < N; i++)); do
  [[ -n "${RETRIED[$i]:-}" ]] && continue
  w=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/rivet-$i.log" | grep -a -c "image written device=" || true)
  [[ "$w" == 1 ]] || fail "the agent of scale-$i wrote the image $w times"
done
echo "ok: each node not retried was written exactly once"
# Heartbeats per node (the API processes' request logs): none faster than one a second.
elapsed=$((SECONDS - tdeploy))
"$PY" - "$elapsed" "${NODES[@]}" "$STATE"/api-*.log <<'PY' || fail "heartbeat storm"
import collections, re, sys
elapsed, rest = int(sys.argv[1]), sys.argv[2:]
nodes = [a for a in rest if not a.endswith('.log')]
count = collections.Counter()
for path in (a for a in rest if a.endswith('.log')):
    for line in open(path, errors='replace'):
        m = re.search(r'POST /v1/heartbeat/([0-9a-f-]{36})', line)
        if m:
            count[m.group(1)] += 1
most = max((count[n] for n in nodes), default=0)
print(f"ok: heartbeats per node: at most {most} in {elapsed} s (sum {sum(count[n] for n in nodes)})")
assert most <= elapsed, f"{most} heartbeats in {elapsed} s"
PY

# --- fast track across a conductor's death ----------------------------------------------------
# One more node, fast-track (driver_info), made available with its agent already up (looked
# up, heartbeating). The conductor it maps to is killed; the survivor takes it over and
# deploys through the same agent: no power cycle, the same URL and token, one lookup.
truncate -s 80M "$WORK/disk-ft.img"
LOOPS+=("$(losetup --find --show "$WORK/disk-ft.img")")
FT_MAC=52:54:00:5c:ff:01
FT=$(api POST /v1/nodes "{\"name\": \"scale-ft\", \"driver\": \"fake-hardware\",
    \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
    \"management_interface\": \"fake\", \"network_interface\": \"noop\", \"driver_info\": {\"fast_track\": true},
    \"properties\": {\"cpu_arch\": \"x86_64\", \"local_gb\": 10, \"memory_mb\": 4096, \"cpus\": 2,
                     \"vendor\": \"lenovo\", \"root_device\": {\"name\": \"${LOOPS[-1]}\"}}}" | field "['uuid']")
api POST /v1/ports "{\"node_uuid\": \"$FT\", \"address\": \"$FT_MAC\"}" >/dev/null
api PUT "/v1/nodes/$FT/states/provision" '{"target": "manage"}' >/dev/null
wait_all manageable 60 "$FT"
api PUT "/v1/nodes/$FT/states/power" '{"target": "power on"}' >/dev/null
port=$(free_port)
echo "ipa-api-url=$API_URLS BOOTIF=$FT_MAC ipa-listen-host=127.0.0.1 ipa-listen-port=$port ipa-advertise-host=127.0.0.1 ipa-advertise-port=$port" > "$WORK/cmdline-ft"
"$RIVET" --cmdline-file "$WORK/cmdline-ft" --state-dir "$WORK/state-ft" --simulate-power --allow-loop-devices \
  >> "$WORK/rivet-ft.log" 2>&1 &
FT_PID=$!
PIDS+=("$FT_PID")
ft_field() { api GET "/v1/nodes/$FT" | field "$1"; }
for _ in $(seq 1 60); do
  [[ "$(ft_field "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$port" ]] && break
  sleep 1
done
[[ "$(ft_field "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$port" ]] \
  || fail "the fast-track agent never heartbeated: $(tail -n 5 "$WORK/rivet-ft.log")"
api PUT "/v1/nodes/$FT/states/provision" '{"target": "provide"}' >/dev/null
wait_all available 60 "$FT"
ft_cond=$(ft_field "['conductor']")
[[ "$ft_cond" == 127.0.1.* ]] || fail "no conductor serves the fast-track node: $ft_cond"
crash "$STATE/pids/conductor-${ft_cond##*.}.pid"
tkill=$SECONDS
for _ in $(seq 1 90); do
  now=$(ft_field "['conductor']")
  [[ "$now" == 127.0.1.* && "$now" != "$ft_cond" ]] && break
  sleep 1
done
[[ "$now" != "$ft_cond" ]] || fail "the fast-track node was not taken over from $ft_cond in 90 s"
echo "ok: fast track: conductor $ft_cond (the node's) killed; $now took the node over in $((SECONDS - tkill)) s"
api PATCH "/v1/nodes/$FT" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/scale.raw\",
  \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$SUM\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
api PUT "/v1/nodes/$FT/states/provision" '{"target": "active"}' >/dev/null
wait_all active 120 "$FT"
for _ in $(seq 1 40); do kill -0 "$FT_PID" 2>/dev/null || break; sleep 0.5; done
wait "$FT_PID" || fail "the fast-track agent exited non-zero: $(tail -n 5 "$WORK/rivet-ft.log")"
unset 'PIDS[-1]'
cmp -i 1048576:1048576 -n $((SIZE - 1048576)) "$STATE/images/scale.raw" "${LOOPS[-1]}" \
  || fail "the fast-track node's disk differs from the image"
ftlog=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/rivet-ft.log")
lookups=$(grep -a -c "lookup succeeded" <<<"$ftlog" || true)
writes=$(grep -a -c "image written device=" <<<"$ftlog" || true)
[[ "$lookups" == 1 && "$writes" == 1 ]] || fail "the fast-track agent looked up $lookups times and wrote $writes times (1 and 1 expected)"
grep -a "system event ev=PowerOff" <<<"$ftlog" >/dev/null || fail "the fast-track agent did not end at the power-off"
grep -a "Performing a fast track deployment for $FT" "$STATE/conductor-${now##*.}.log" >/dev/null \
  || fail "the conductor $now did not deploy $FT by fast track"
echo "ok: fast track across a conductor's death: $now deployed through the running agent (one boot, one lookup, one write, the same token); the disk holds the image"
echo "ok: the retried nodes booted their ramdisk again at the redeploy's power-cycle ($((${#BOOTS[@]} - ${#CUT[@]})) had been powered off by the dead conductor, ${#CUT[@]} were still running); no agent crashed or was restarted otherwise"
((${#RESTARTED[@]} == 0)) || echo "ok: conductors restarted to free the locks the database outage left: ${!RESTARTED[*]}"
echo "scaleout: $N active, $K conductors, 1 killed, ${#RETRIED[@]} retried once, db outage $outage s, lost $lost"
echo "PASS scaleout ($((SECONDS - t0)) s)"
