#!/usr/bin/env bash
# Peer image sharing on a real network: N agents (`rivet install --peer-share`, the code
# `rivet-peer-share=1` runs), each in its own network namespace on one bridge, deploy the same
# image at once from one nginx whose link is limited by tc (the image server as the rack's
# bottleneck; tests/share/fleet.sh). Peers find each other by Local Service Discovery (BEP 14)
# multicast on the bridge; the torrent is mktorrent's (a standard tool), private, with no web
# seed in it.
#   0. One agent alone, for comparison.
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
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || fail "needs root (network namespaces)"
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET"
"$ROOT/scripts/apt-install.sh" aria2 mktorrent nginx-light iproute2 python3 curl time
# shellcheck source=fleet.sh
source "$ROOT/tests/share/fleet.sh"
trap fleet_cleanup EXIT
W=$FLEET_W P=$FLEET_P
fleet_up "$IMAGE_MIB" "$LINK" || fail "nginx does not serve the image"
IMAGE_BYTES=$FLEET_IMAGE_BYTES
for ((k = 1; k <= N; k++)); do fleet_node "a$k" "10.77.0.$((10 + k))"; done
fleet_node rogue 10.77.0.30
fleet_node leech 10.77.0.40
fleet_node seed 10.77.0.41
agent() { local k=$1; shift; fleet_agent "$P-a$k" "$k" --peer-share "$@"; }
copies() { awk -v o="$1" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.2f", o / i }'; }

# --- 0: one agent alone, for comparison ---------------------------------------------------
t0=$SECONDS
agent 1 --no-lsd
fleet_wait || fail "one agent alone"
echo "ok: one agent alone wrote the image in $((SECONDS - t0)) s (the server sent $(($(fleet_origin_bytes) >> 20)) MiB)"
fleet_origin_reset

# --- 1: N agents, a hostile node, a standard client downloading from the agents -----------
ip netns exec "$P-rogue" python3 "$ROOT/tests/share/rogue_peer.py" "$W/www/disk.raw.torrent" \
  10.77.0.30 6881 "$W/rogue.count" &
FLEET_PIDS+=($!)
mkdir -p "$W/leech"
ip netns exec "$P-leech" aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port=6881 --seed-time=0 --dir="$W/leech" \
  --console-log-level=warn --summary-interval=0 --bt-stop-timeout=120 \
  "$W/www/disk.raw.torrent" > "$W/leech.log" 2>&1 &
LEECH=$!
FLEET_PIDS+=($LEECH)
sleep 1
t0=$SECONDS
for ((k = 1; k <= N; k++)); do agent "$k" --peer 10.77.0.40:6881; done
fleet_wait || fail "$N agents"
took=$((SECONDS - t0))
origin=$(fleet_origin_bytes)
peers=0 banned=0
for ((k = 1; k <= N; k++)); do
  read -r _o p _s _n _b b < <(fleet_shared "$k") || fail "agent $k printed no shared line"
  peers=$((peers + p)); banned=$((banned + b))
done
echo "ok: $N agents wrote the image (${IMAGE_MIB} MiB) in $took s; the server sent $((origin >> 20)) MiB ($(copies "$origin") copies), peers $((peers >> 20)) MiB"
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
fleet_link 8mbit
fleet_origin_reset
mkdir -p "$W/seed"
cp "$W/www/disk.raw" "$W/seed/"
ip netns exec "$P-seed" aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port=6881 --seed-ratio=0.0 --check-integrity=true \
  --dir="$W/seed" --console-log-level=warn --summary-interval=0 \
  "$W/www/disk.raw.torrent" > "$W/seed.log" 2>&1 &
FLEET_PIDS+=($!)
sleep 2
t0=$SECONDS
for k in 1 2; do agent "$k" --peer 10.77.0.41:6881; done
fleet_wait || fail "two agents beside a seed"
origin=$(fleet_origin_bytes)
echo "ok: 2 agents beside an aria2c seed in $((SECONDS - t0)) s; the server sent $((origin >> 20)) MiB"
((origin * 2 < IMAGE_BYTES)) || fail "the server sent $origin bytes: the seed was not used"

# --- 3: IPv6 only: LSD's IPv6 group, the image server by its IPv6 address ------------------
fleet_link "$LINK"
fleet_origin_reset
for k in 1 2 3; do
  fleet_node "v$k"
  ip -n "$P-v$k" -6 addr add "fd77::1$k/64" dev eth0 nodad
done
sleep 1 # the link-local addresses, for the neighbour discovery the agents' traffic needs
t0=$SECONDS
for k in 1 2 3; do URL="http://[fd77::1]:8080/disk.raw" fleet_agent "$P-v$k" "$k" --peer-share; done
fleet_wait || fail "IPv6 only"
origin=$(fleet_origin_bytes)
peers=0
for k in 1 2 3; do
  read -r _o p _rest < <(fleet_shared "$k") || fail "agent $k printed no shared line"
  peers=$((peers + p))
done
echo "ok: IPv6 only: 3 agents in $((SECONDS - t0)) s; the server sent $((origin >> 20)) MiB, peers $((peers >> 20)) MiB"
((peers >= IMAGE_BYTES)) || fail "IPv6 only: the agents took only $peers bytes from each other (LSD over IPv6)"
echo "ok: peer sharing"
