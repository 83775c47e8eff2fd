#!/usr/bin/env bash
# Fleet benchmark (a program that prints figures, not a test): the real Ironic 39 conductor
# (standalone, sqlite, on 127.0.0.1) deploys N Rivet agents at once. Each agent runs on this
# host with its own MAC, API port, state directory and loop-device disk (in /dev/shm); every
# image comes from one nginx. For each image format and N it prints:
#   - seconds from the first provision request to the last node "active";
#   - per node, agent start → the conductor's power-off at the end of its deploy: p50, p95;
#   - the agents' summed peak RSS and CPU seconds; the conductor's CPU seconds;
#   - bytes the image server sent, heartbeats per node, and how busy the whole machine's CPUs
#     were (the loop devices' writes run in kernel threads no process is charged for);
#   - with CONDUCTORS=N (Ironic's scale-out, run-ironic.sh's multi-conductor mode: MariaDB,
#     one API process, N conductors), a second line: each conductor's CPU seconds and the
#     nodes it deployed, the API's CPU, and the API calls each agent made (heartbeats,
#     lookups, from the API's log) and the command polls it answered (from its own log).
# usage: scripts/bench-fleet.sh            env: NS ("1 4 16"), FORMATS ("raw zstd"),
#        IMAGE_MIB (256; 64 fits 64 nodes' disks in memory), CONDUCTORS (0: API and conductor
#        in one process on sqlite), RIVET (default: the static build, made if missing),
#        SHARE (1: the agents share pieces, rivet-peer-share=1, dialing each other on 127.0.0.1)
#
# With PEERS=0, 1 or "0 1" it is the peer-sharing benchmark instead (no conductor: the agents'
# image path alone, `rivet install`): N agents in network namespaces on one bridge
# (tests/share/fleet.sh) write the same image from one nginx whose link tc limits to LINK
# (default 1gbit), without (0) and with (1) peer sharing; per run: seconds until the last
# node is done, the server's bytes (and in copies of the image), bytes between peers, per node
# p50/p95 seconds, the agents' summed CPU seconds and largest RSS.
#   env: NS ("1 8 32"), IMAGE_MIB (256), LINK (1gbit), RIVET (the static build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${PEERS:-}" ]]; then
  RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
  NS=${NS:-1 8 32} IMAGE_MIB=${IMAGE_MIB:-256} LINK=${LINK:-1gbit}
  "$ROOT/scripts/apt-install.sh" aria2 mktorrent nginx-light iproute2 curl time
  [[ -x "$RIVET" ]] || "$ROOT/scripts/build-static.sh"
  # shellcheck source=../tests/share/fleet.sh
  source "$ROOT/tests/share/fleet.sh"
  trap fleet_cleanup EXIT
  fleet_up "$IMAGE_MIB" "$LINK" || { echo "nginx does not serve the image" >&2; exit 1; }
  max=0
  for n in $NS; do ((n > max)) && max=$n; done
  ((max <= 200)) || { echo "at most 200 nodes (one /24)" >&2; exit 1; }
  for ((k = 1; k <= max; k++)); do fleet_node "a$k" "10.77.0.$((10 + k))"; done
  echo "image $IMAGE_MIB MiB, server link $LINK, $(nproc) cores"
  printf '%-4s %-6s %9s %10s %7s %10s %7s %7s %9s %8s\n' N peers all_done_s server_MiB copies peers_MiB p50_s p95_s cpu_s rss_MiB
  for n in $NS; do
    for peers in $PEERS; do
      fleet_origin_reset
      t0=$(date +%s.%N)
      for ((k = 1; k <= n; k++)); do
        if ((peers)); then fleet_agent "$FLEET_P-a$k" "$k" --peer-share; else fleet_agent "$FLEET_P-a$k" "$k"; fi
      done
      fleet_wait
      all=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
      origin=$(fleet_origin_bytes)
      from_peers=0
      if ((peers)); then
        for ((k = 1; k <= n; k++)); do
          read -r _o p _rest < <(fleet_shared "$k"); from_peers=$((from_peers + p))
        done
      fi
      for ((k = 1; k <= n; k++)); do cat "$FLEET_W/agent$k.time"; done | sort -n > "$FLEET_W/times"
      read -r p50 p95 cpu rss < <(awk '{ e[NR] = $1; c += $2 + $3; if ($4 > r) r = $4 }
        END { i50 = int((NR + 1) / 2); i95 = int(NR * 0.95 + 0.999); if (i95 < 1) i95 = 1;
              printf "%.1f %.1f %.1f %.0f\n", e[i50], e[i95], c, r / 1024 }' "$FLEET_W/times")
      printf '%-4s %-6s %9.1f %10d %7.2f %10d %7s %7s %9s %8s\n' "$n" "$peers" "$all" $((origin >> 20)) \
        "$(awk -v o="$origin" -v i="$FLEET_IMAGE_BYTES" 'BEGIN { print o / i }')" $((from_peers >> 20)) "$p50" "$p95" "$cpu" "$rss"
    done
  done
  exit 0
fi
NS=${NS:-1 4 16}
CONDUCTORS=${CONDUCTORS:-0}
FORMATS=${FORMATS:-raw zstd}
IMAGE_MIB=${IMAGE_MIB:-256}
RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-bench-fleet}
export API_PORT=${API_PORT:-6395} IMG_PORT=${IMG_PORT:-8099}
export API="http://127.0.0.1:$API_PORT"
NGINX_PORT=${NGINX_PORT:-8098}
export IMG="http://127.0.0.1:$NGINX_PORT"
"$ROOT/scripts/deps.sh"
"$ROOT/scripts/apt-install.sh" nginx-light
[[ -x "$RIVET" ]] || "$ROOT/scripts/build-static.sh"
# shellcheck source=ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
LOOPS=() PIDS=() NODES=() NGINX_PID=
bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n "$NGINX_PID" ]] && kill "$NGINX_PID" 2>/dev/null || true
  for p in "${LOOPS[@]}"; do losetup -d "$p" 2>/dev/null || true; done
  rm -f /dev/shm/rivet-fleet-*.img
  session_cleanup
}
trap bench_cleanup EXIT

CONDUCTORS=$CONDUCTORS APIS=1 REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
I=$STATE/images
"$ROOT/scripts/ironic/make-test-image.sh" "$I/fleet.raw" "$IMAGE_MIB"
# Half of the data partition random, as an OS image's contents compress about 2:1.
dd if=/dev/urandom of="$I/fleet.raw" bs=1M seek=40 count=$(((IMAGE_MIB - 40) / 2)) conv=notrunc status=none
zstd -q -f -3 "$I/fleet.raw" -o "$I/fleet.raw.zst"
# SHARE=1: the agents share the image's pieces (rivet-peer-share=1), its torrent beside it.
if [[ -n "${SHARE:-}" ]]; then
  "$RIVET" torrent "$I/fleet.raw" >/dev/null
  "$RIVET" torrent "$I/fleet.raw.zst" >/dev/null
fi
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  log_format bytes '\$bytes_sent';
  access_log $WORK/nginx/access.log bytes;
  sendfile on;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  types { application/octet-stream raw zst; }
  server { listen 127.0.0.1:$NGINX_PORT; root $I; }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
for _ in $(seq 1 50); do curl -sf -o /dev/null "$IMG/fleet.raw.zst" -r 0-0 && break; sleep 0.1; done
curl -sf -o /dev/null "$IMG/fleet.raw.zst" -r 0-0 || fail "nginx does not serve the images"
# The processes whose CPU is counted, NAME:PIDFILE, and the log the API writes its requests to.
if ((CONDUCTORS == 0)); then
  PROCS=("conductor:$STATE/ironic.pid") API_LOG=$STATE/ironic.log
else
  PROCS=("api:$STATE/pids/api-0.pid") API_LOG=$STATE/api-0.log
  for ((k = 1; k <= CONDUCTORS; k++)); do PROCS+=("127.0.1.$k:$STATE/pids/conductor-$k.pid"); done
fi
# CPU ticks of a process and its children (Ironic's master forks the worker that runs the API
# and the conductor); ticks_all: of every Ironic process.
ticks() {
  local p t=0
  for p in "$1" $(pgrep -P "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
ticks_all() { local p t=0; for p in "${PROCS[@]}"; do t=$((t + $(ticks "$(cat "${p#*:}")"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
# deployed_by NAME: how many nodes the conductor NAME (or the all-in-one process) has moved to
# "active" so far, from its log.
deployed_by() {
  local log=$STATE/ironic.log
  [[ "$1" == 127.0.1.* ]] && log=$STATE/conductor-${1##*.}.log
  [[ "$1" == api ]] && { echo 0; return; }
  grep -a -c 'to provision state "active" from state "deploying"' "$log" 2>/dev/null || true
}
# The whole machine's busy and total CPU ticks (/proc/stat), to tell a CPU-bound run.
cpu_ticks() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6}' /proc/stat; }
now() { date +%s.%N; }

echo "fleet benchmark: ${IMAGE_MIB} MiB whole-disk image (zstd $(stat -c %s "$I/fleet.raw.zst") bytes), $(nproc) cores, Rivet $(stat -c %s "$RIVET") bytes"
printf '%-6s %4s %10s %9s %9s %13s %11s %13s %14s %8s %9s\n' format N "all (s)" "p50 (s)" "p95 (s)" "agents RSS" "agents CPU" "Ironic CPU" "served (MiB)" "hb/node" "CPU busy"
run() { # FORMAT N
  local fmt=$1 n=$2 file sum i
  case "$fmt" in raw) file=fleet.raw ;; zstd) file=fleet.raw.zst ;; esac
  sum=$(sha256sum "$I/$file" | cut -d' ' -f1)
  LOOPS=() PIDS=() NODES=()
  local macs=()
  for ((i = 0; i < n; i++)); do
    truncate -s $((IMAGE_MIB + 64))M "/dev/shm/rivet-fleet-$i.img"
    LOOPS+=("$(losetup --find --show "/dev/shm/rivet-fleet-$i.img")")
    macs+=("$(printf '52:54:00:f1:%02x:%02x' $((i / 256)) $((i % 256)))")
    NODES+=("$(enroll_available "fleet-$i" "${macs[$i]}" "{\"name\": \"${LOOPS[$i]}\"}")")
    api PATCH "/v1/nodes/${NODES[$i]}" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/$file\",
      \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$sum\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
  done
  : > "$WORK/nginx/access.log"
  local c0 t0 pt0=() deployed0=() logpos k
  c0=$(ticks_all)
  for k in "${!PROCS[@]}"; do
    pt0[k]=$(ticks "$(cat "${PROCS[$k]#*:}")")
    deployed0[k]=$(deployed_by "${PROCS[$k]%%:*}")
  done
  logpos=$(stat -c %s "$API_LOG")
  local m0; m0=$(cpu_ticks)
  t0=$(now)
  for ((i = 0; i < n; i++)); do
    api PUT "/v1/nodes/${NODES[$i]}/states/provision" '{"target": "active"}' >/dev/null
  done
  # Each agent starts the moment its node waits for it (as a machine boots once powered on).
  states_of() {
    api GET "/v1/nodes?fields=uuid,provision_state&limit=1000" | "$PY" -c "
import json, sys
d = {x['uuid']: x['provision_state'] for x in json.load(sys.stdin)['nodes']}
print(' '.join(d.get(u, '?').replace(' ', '_') for u in sys.argv[1:]))" "${NODES[@]}"
  }
  local started=() todo=$n end=$((SECONDS + 120)) share_peers=
  while ((todo > 0 && SECONDS < end)); do
    local st; read -r -a st <<<"$(states_of)"
    for ((i = 0; i < n; i++)); do
      [[ -n "${started[$i]:-}" || "${st[$i]}" != "wait_call-back" ]] && continue
      local port; port=$(free_port)
      local share=""
      if [[ -n "${SHARE:-}" ]]; then
        # On this host's loopback, where multicast does not go: no LSD, each agent dials the
        # ones started before it.
        local pport; pport=$(free_port)
        share="rivet-peer-share=1 rivet-peer-share-lsd=0 rivet-peer-share-port=$pport"
        [[ -n "$share_peers" ]] && share+=" rivet-peer-share-peers=${share_peers#,}"
        share_peers+=",127.0.0.1:$pport"
      fi
      echo "ipa-api-url=$API BOOTIF=${macs[$i]} ipa-listen-host=127.0.0.1 ipa-listen-port=$port ipa-advertise-host=127.0.0.1 ipa-advertise-port=$port ipa-debug=1 $share" > "$WORK/cmdline-$i"
      /usr/bin/time -f "%e %U %S %M" -o "$WORK/time-$i" \
        "$RIVET" --cmdline-file "$WORK/cmdline-$i" --state-dir "$WORK/state-$fmt-$n-$i" --simulate-power --allow-loop-devices \
        > "$WORK/rivet-$fmt-$n-$i.log" 2>&1 &
      PIDS+=($!)
      started[i]=1
      todo=$((todo - 1))
    done
    ((todo > 0)) && sleep 0.2
  done
  ((todo == 0)) || fail "$todo nodes did not wait for their agent within 120 s"
  # Every node's state in one request, twice a second, until all are active.
  local left=$n end=$((SECONDS + 900)) last
  while ((left > 0 && SECONDS < end)); do
    local states
    states=$(api GET "/v1/nodes?fields=uuid,provision_state&limit=1000" | "$PY" -c "
import json, sys
d = {x['uuid']: x['provision_state'] for x in json.load(sys.stdin)['nodes']}
print(' '.join(d.get(u, '?') for u in sys.argv[1:]))" "${NODES[@]}")
    last=$(now)
    [[ "$states" == *failed* ]] && fail "a node failed: $states"
    left=$(tr ' ' '\n' <<<"$states" | grep -vc '^active$' || true)
    sleep 0.5
  done
  ((left == 0)) || fail "$left nodes did not become active in 900 s"
  local c1; c1=$(ticks_all)
  local per=""
  if ((CONDUCTORS > 0)); then
    for k in "${!PROCS[@]}"; do
      local name=${PROCS[$k]%%:*} cpu_s
      cpu_s=$(awk -v a="${pt0[$k]}" -v b="$(ticks "$(cat "${PROCS[$k]#*:}")")" -v hz="$HZ" 'BEGIN{printf "%.1f s", (b - a) / hz}')
      if [[ "$name" == api ]]; then
        per+="API $cpu_s; "
      else
        per+="$name $cpu_s, $(($(deployed_by "$name") - deployed0[k])) nodes; "
      fi
    done
  fi
  local m1; m1=$(cpu_ticks)
  for p in "${PIDS[@]}"; do wait "$p" || fail "an agent exited non-zero"; done
  PIDS=()
  # Per node: agent start to its exit, which is the conductor powering it off at the end of
  # the deploy (measured by time(1), not by polling).
  local sorted p50 p95
  sorted=$(cat "$WORK"/time-* | awk '{print $1}' | sort -n)
  p50=$(awk -v n="$n" 'NR == int((n + 1) / 2) {print}' <<<"$sorted")
  p95=$(awk -v n="$n" 'BEGIN{k = int(n * 0.95 + 0.999)} NR == (k < 1 ? 1 : k) {print}' <<<"$sorted")
  local rss cpu served
  rss=$(cat "$WORK"/time-* | awk '{s += $4} END {printf "%.0f MiB", s / 1024}')
  cpu=$(cat "$WORK"/time-* | awk '{s += $2 + $3} END {printf "%.2f s", s}')
  served=$(awk '{s += $1} END {printf "%.1f", s / 1048576}' "$WORK/nginx/access.log")
  # Heartbeats each agent sent (what the conductor handled for it, besides its commands).
  local hbs; hbs=$(cat "$WORK"/rivet-"$fmt-$n"-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c "heartbeat accepted" || true)
  # The API calls the agents made (the API's log of this run) and the command polls they
  # answered (their own logs).
  local calls lookups polls
  calls=$(tail -c +$((logpos + 1)) "$API_LOG" | grep -a -c "POST /v1/heartbeat/" || true)
  lookups=$(tail -c +$((logpos + 1)) "$API_LOG" | grep -a -c "GET /v1/lookup" || true)
  polls=$(cat "$WORK"/rivet-"$fmt-$n"-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -a "api request" | grep -a "method=GET" | grep -a -c "path=/v1/commands" || true)
  printf '%-6s %4d %10.2f %9s %9s %13s %11s %13s %14s %8.1f %8.0f%%\n' "$fmt" "$n" \
    "$(awk -v a="$last" -v b="$t0" 'BEGIN{print a - b}')" "$p50" "$p95" "$rss" "$cpu" \
    "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{printf "%.2f s", (b - a) / hz}')" "$served" \
    "$(awk -v h="$hbs" -v n="$n" 'BEGIN{print h / n}')" \
    "$(awk -v a="$m0" -v b="$m1" 'BEGIN{split(a, x, " "); split(b, y, " "); print 100 * (y[1] - x[1]) / (y[2] - x[2])}')"
  printf '       %s per node: heartbeats %s, lookups %s, command polls answered %s\n' "$per" \
    "$(awk -v c="$calls" -v n="$n" 'BEGIN{printf "%.1f", c / n}')" \
    "$(awk -v c="$lookups" -v n="$n" 'BEGIN{printf "%.1f", c / n}')" \
    "$(awk -v c="$polls" -v n="$n" 'BEGIN{printf "%.1f", c / n}')"
  if [[ -n "${SHARE:-}" ]]; then
    # What the agents' swarms took from the server and from each other (their own logs).
    cat "$WORK"/rivet-"$fmt-$n"-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -a "image received through the swarm" |
      awk -v n="$n" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "origin_bytes") o += kv[2]; if (kv[1] == "peer_bytes") p += kv[2] } k++ }
        END { printf "       sharing: %d of %d agents through the swarm, %.1f MiB from the server, %.1f MiB from peers\n", k, n, o / 1048576, p / 1048576 }'
  fi
  rm -f "$WORK"/time-*
  for ((i = 0; i < n; i++)); do
    api PUT "/v1/nodes/${NODES[$i]}/maintenance" '{"reason": "bench done"}' >/dev/null
    api DELETE "/v1/nodes/${NODES[$i]}" >/dev/null
    losetup -d "${LOOPS[$i]}"
    rm -f "/dev/shm/rivet-fleet-$i.img"
  done
  LOOPS=()
}
for fmt in $FORMATS; do
  for n in $NS; do run "$fmt" "$n"; done
done
