#!/usr/bin/env bash
# Peer image sharing on a real network: N agents (`rivet install --peer-share`, the code
# `rivet-peer-share=1` runs), each in its own network namespace on one bridge, deploy the same
# image at once from one nginx whose link is limited by tc (the image server as the rack's
# bottleneck). Peers find each other by Local Service Discovery (BEP 14) multicast on the
# bridge; the torrent is mktorrent's (a standard tool), private, with no web seed in it.
#   1. N agents + a hostile node announcing itself by LSD and serving corrupt pieces + a
#      standard client (aria2c) with nothing, told of the agents by them dialing it: every
#      disk equals the image, the server sent at most 2 copies, the hostile node was asked for
#      pieces and banned, aria2c downloaded the whole image from the agents alone.
#   2. Two agents beside a standard client (aria2c) seeding the image, the server 10 x
#      slower: the agents take the image from aria2c (the server sends less than half a copy).
#   3. Three agents with IPv6 addresses only: they find each other on LSD's IPv6 group.
# usage: tests/share/swarm.sh    env: RIVET (default target/debug/rivet), N (8), IMAGE_MIB (32),
#        LINK (tc rate of the image server's link, 80mbit)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
N=${N:-8}
IMAGE_MIB=${IMAGE_MIB:-32}
LINK=${LINK:-80mbit}
P=rvsh$$ # namespace and interface prefix, this run's own
W=$(mktemp -d /dev/shm/rivet-swarm.XXXXXX)
chmod 755 "$W" # nginx serves as www-data
PIDS=()
fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
  local p ns
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  [[ -n "${KEEP:-}" ]] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
[[ $(id -u) == 0 ]] || fail "needs root (network namespaces)"
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET"
"$ROOT/scripts/apt-install.sh" aria2 mktorrent nginx-light iproute2 python3

# The bridge lives in its own namespace; every node gets a veth into it.
ip netns add "$P-hub"
ip -n "$P-hub" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
ip -n "$P-hub" link set br0 up
node_ns() { # NAME IP: a namespace with eth0 on the bridge
  local ns=$P-$1
  ip netns add "$ns"
  ip link add "$P$1" netns "$P-hub" type veth peer name eth0 netns "$ns"
  ip -n "$P-hub" link set "$P$1" master br0 up
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
node_ns srv 10.77.0.1
ip -n "$P-srv" -6 addr add fd77::1/64 dev eth0 nodad
# The server's link toward the nodes (its egress) is the fleet's bottleneck.
ip netns exec "$P-srv" tc qdisc add dev eth0 root tbf rate "$LINK" burst 64kb latency 400ms

mkdir -p "$W/www" "$W/nginx"
head -c $((IMAGE_MIB << 20)) /dev/urandom > "$W/www/disk.raw"
SUM=$(sha256sum "$W/www/disk.raw" | cut -d' ' -f1)
IMAGE_BYTES=$((IMAGE_MIB << 20))
mktorrent -p -l 18 -o "$W/www/disk.raw.torrent" "$W/www/disk.raw" >/dev/null
cat > "$W/nginx/nginx.conf" <<EOC
daemon off;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 1024; }
http {
  log_format bytes '\$uri \$status \$body_bytes_sent';
  access_log $W/nginx/access.log bytes;
  sendfile on;
  client_body_temp_path $W/nginx;
  proxy_temp_path $W/nginx;
  fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx;
  scgi_temp_path $W/nginx;
  types { application/octet-stream raw torrent; }
  server { listen 10.77.0.1:8080; listen [fd77::1]:8080; root $W/www; }
}
EOC
ip netns exec "$P-srv" nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" &
PIDS+=($!)
URL=http://10.77.0.1:8080/disk.raw
origin_bytes() { awk '$1 == "/disk.raw" { s += $3 } END { print s + 0 }' "$W/nginx/access.log"; }

# Agents: N namespaces on the bridge, each writing a disk file of its own.
for ((k = 1; k <= N; k++)); do node_ns "a$k" "10.77.0.$((10 + k))"; done
node_ns rogue 10.77.0.30
node_ns leech 10.77.0.40
node_ns seed 10.77.0.41
for _ in $(seq 1 50); do
  ip netns exec "$P-a1" curl -sf -o /dev/null -r 0-0 "$URL" && break
  sleep 0.1
done
ip netns exec "$P-a1" curl -sf -o /dev/null -r 0-0 "$URL" || fail "nginx does not serve the image"
: > "$W/nginx/access.log"

agent() { # K EXTRA...: rivet install in namespace a$K (or $NS_OF_K), output in $W/agent$K.out
  local k=$1; shift
  rm -f "$W/disk$k"
  truncate -s $(((IMAGE_MIB + 8) << 20)) "$W/disk$k"
  ip netns exec "${AGENT_NS:-$P-a}$k" "$RIVET" install --quiet --peer-share --image-url "$URL" \
    --checksum "sha256:$SUM" --device "$W/disk$k" --disk-format raw --timeout 10 \
    --retry-interval 0.5 --max-duration 300 "$@" > "$W/agent$k.out" 2> "$W/agent$k.err" &
  AGENTS+=($!)
}
wait_agents() { # every agent succeeded and its disk holds the image
  local k=0 p rc
  for p in "${AGENTS[@]}"; do
    k=$((k + 1)); rc=0
    wait "$p" || rc=$?
    if ((rc != 0)); then
      tail -n 20 "$W/agent$k.err" >&2
      fail "agent $k failed (exit $rc)"
    fi
    cmp -n "$IMAGE_BYTES" "$W/disk$k" "$W/www/disk.raw" || fail "agent $k's disk differs from the image"
  done
}
# The figures of an agent's `shared:` line: origin peers sent peers_seen bad banned.
shared() { grep '^shared:' "$W/agent$1.out" | tr -cs '0-9' ' ' | sed 's/^ //'; echo; }

# --- 0: one agent alone, for comparison ---------------------------------------------------
AGENTS=()
t0=$SECONDS
agent 1 --no-lsd
wait_agents
one=$((SECONDS - t0))
echo "ok: one agent alone wrote the image in $one s (the server sent $(($(origin_bytes) >> 20)) MiB)"
: > "$W/nginx/access.log"

# --- 1: N agents, a hostile node, a standard client downloading from the agents -----------
ip netns exec "$P-rogue" python3 "$ROOT/tests/share/rogue_peer.py" "$W/www/disk.raw.torrent" \
  10.77.0.30 6881 "$W/rogue.count" &
PIDS+=($!)
mkdir -p "$W/leech"
ip netns exec "$P-leech" aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port=6881 --seed-time=0 --dir="$W/leech" \
  --console-log-level=warn --summary-interval=0 --bt-stop-timeout=120 \
  "$W/www/disk.raw.torrent" > "$W/leech.log" 2>&1 &
LEECH=$!
PIDS+=($LEECH)
sleep 1
AGENTS=()
t0=$SECONDS
for ((k = 1; k <= N; k++)); do agent "$k" --peer 10.77.0.40:6881; done
wait_agents
took=$((SECONDS - t0))
origin=$(origin_bytes)
peers=0 banned=0
for ((k = 1; k <= N; k++)); do
  read -r _o p _s _n _b b < <(shared "$k") || fail "agent $k printed no shared line"
  peers=$((peers + p)); banned=$((banned + b))
done
echo "ok: $N agents wrote the image (${IMAGE_MIB} MiB) in $took s; the server sent $((origin >> 20)) MiB ($(awk -v o="$origin" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.2f", o / i }') copies), peers $((peers >> 20)) MiB"
((origin <= 2 * IMAGE_BYTES)) || fail "the server sent $origin bytes (more than 2 copies)"
((peers >= IMAGE_BYTES)) || fail "the agents took only $peers bytes from each other"
rogue=$(cat "$W/rogue.count")
((rogue > 0)) || fail "the hostile node was never asked for a piece (LSD did not reach it)"
((banned > 0)) || fail "the hostile node served $rogue corrupt blocks and no agent banned it"
echo "ok: the hostile node served $rogue corrupt blocks, banned $banned times; every disk equals the image"
rc=0
timeout 120 tail --pid="$LEECH" -f /dev/null || rc=$?
((rc == 0)) || fail "aria2c did not finish: $(tail -n 5 "$W/leech.log")"
wait "$LEECH" || fail "aria2c failed: $(tail -n 5 "$W/leech.log")"
cmp "$W/leech/disk.raw" "$W/www/disk.raw" || fail "aria2c's copy differs"
echo "ok: aria2c (no web seed, no tracker, no DHT) downloaded the whole image from the agents"

# --- 2: a standard client seeding; the server ten times slower ---------------------------
ip netns exec "$P-srv" tc qdisc change dev eth0 root tbf rate 8mbit burst 64kb latency 400ms
: > "$W/nginx/access.log"
mkdir -p "$W/seed"
cp "$W/www/disk.raw" "$W/seed/"
ip netns exec "$P-seed" aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port=6881 --seed-ratio=0.0 --check-integrity=true \
  --dir="$W/seed" --console-log-level=warn --summary-interval=0 \
  "$W/www/disk.raw.torrent" > "$W/seed.log" 2>&1 &
PIDS+=($!)
sleep 2
AGENTS=()
t0=$SECONDS
for k in 1 2; do agent "$k" --peer 10.77.0.41:6881; done
wait_agents
origin=$(origin_bytes)
echo "ok: 2 agents beside an aria2c seed in $((SECONDS - t0)) s; the server sent $((origin >> 20)) MiB"
((origin * 2 < IMAGE_BYTES)) || fail "the server sent $origin bytes: the seed was not used"

# --- 3: IPv6 only: LSD's IPv6 group, the image server by its IPv6 address ------------------
ip netns exec "$P-srv" tc qdisc change dev eth0 root tbf rate "$LINK" burst 64kb latency 400ms
: > "$W/nginx/access.log"
for k in 1 2 3; do
  ip netns add "$P-v$k"
  ip link add "${P}v$k" netns "$P-hub" type veth peer name eth0 netns "$P-v$k"
  ip -n "$P-hub" link set "${P}v$k" master br0 up
  ip -n "$P-v$k" -6 addr add "fd77::1$k/64" dev eth0 nodad
  ip -n "$P-v$k" link set eth0 up
done
sleep 1 # the link-local addresses, for the neighbour discovery the agents' traffic needs
URL="http://[fd77::1]:8080/disk.raw"
AGENTS=()
t0=$SECONDS
for k in 1 2 3; do AGENT_NS=$P-v agent "$k"; done
wait_agents
origin=$(origin_bytes)
peers=0
for k in 1 2 3; do
  read -r _o p _rest < <(shared "$k") || fail "agent $k printed no shared line"
  peers=$((peers + p))
done
echo "ok: IPv6 only: 3 agents in $((SECONDS - t0)) s; the server sent $((origin >> 20)) MiB, peers $((peers >> 20)) MiB"
((peers >= IMAGE_BYTES)) || fail "IPv6 only: the agents took only $peers bytes from each other (LSD over IPv6)"
echo "ok: peer sharing"
