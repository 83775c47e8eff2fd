#!/usr/bin/env bash
# What serving peers costs a node's own deploy (a program that prints figures, not a test).
# One agent writes an image from nginx (its link limited by tc to LINK) with peer sharing on,
# three ways: alone; beside LEECHERS aria2c clients that do not know it (they wait for peers:
# what their mere presence on this small machine costs); and while those clients download the
# image from it (and from nothing else: the torrent names no web seed). The clients stand for
# other machines: they run in the idle scheduling class so that their CPU is not taken from
# the agent's. Serving's cost is the third against the second. Rounds alternate the three
# (and the binaries, when BASE names a second one to compare side by side), so the machine's
# noise falls on all alike. Prints each run, then per binary the medians and what was
# uploaded.
#   env: RIVET (the static build), BASE (optional second binary), IMAGE_MIB (256),
#        LINK (1gbit), LEECHERS (3), ROUNDS (3), UP (upload limit, MiB/s: 100)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
IMAGE_MIB=${IMAGE_MIB:-256} LINK=${LINK:-1gbit} LEECHERS=${LEECHERS:-3} ROUNDS=${ROUNDS:-3}
UP=${UP:-100}
"$ROOT/scripts/apt-install.sh" aria2 mktorrent nginx-light iproute2 time util-linux
[[ -x "$RIVET" ]] || "$ROOT/scripts/build-static.sh"
# shellcheck source=../tests/share/fleet.sh
source "$ROOT/tests/share/fleet.sh"
LEECH_PIDS=()
stop_leechers() {
  local p
  for p in "${LEECH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  LEECH_PIDS=()
}
trap 'stop_leechers; fleet_cleanup' EXIT
fleet_up "$IMAGE_MIB" "$LINK" || { echo "nginx does not serve the image" >&2; exit 1; }
fleet_node agent 10.77.0.11
peers=()
for ((k = 1; k <= LEECHERS; k++)); do
  fleet_node "l$k" "10.77.0.$((40 + k))"
  peers+=(--peer "10.77.0.$((40 + k)):6881")
done

# The machine's busy and total jiffies (all CPUs, softirq included).
jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }

# RUN BINARY LEECHING: one deploy (LEECHING: 0 alone, 1 clients beside it, 2 clients served
# by it); sets SECS, SENT (bytes uploaded), CPU (the agent's CPU
# seconds), BUSY (per cent of the machine's CPUs busy meanwhile, whoever used them).
run() {
  local bin=$1 leech=$2 k b0 t0 b1 t1
  if ((leech)); then
    for ((k = 1; k <= LEECHERS; k++)); do
      rm -rf "$FLEET_W/l$k" && mkdir -p "$FLEET_W/l$k"
      ip netns exec "$FLEET_P-l$k" chrt --idle 0 aria2c --enable-dht=false --enable-dht6=false \
        --bt-enable-lpd=false --enable-peer-exchange=false --listen-port=6881 --seed-time=0 \
        --dir="$FLEET_W/l$k" --console-log-level=error --summary-interval=0 \
        --bt-stop-timeout=60 "$FLEET_W/www/disk.raw.torrent" > "$FLEET_W/l$k.log" 2>&1 &
      LEECH_PIDS+=($!)
    done
    sleep 1
  fi
  read -r b0 t0 < <(jiffies)
  local given=()
  ((leech == 2)) && given=("${peers[@]}")
  RIVET=$bin fleet_agent "$FLEET_P-agent" 1 --peer-share --no-lsd --peer-share-upload "$UP" \
    "${given[@]}"
  fleet_wait
  read -r b1 t1 < <(jiffies)
  stop_leechers
  BUSY=$(((b1 - b0) * 100 / (t1 - t0)))
  CPU=$(awk '{ print $2 + $3 }' "$FLEET_W/agent1.time")
  SECS=$(cut -d' ' -f1 "$FLEET_W/agent1.time")
  SENT=$(fleet_shared 1 | cut -d' ' -f3)
}

bins=("$RIVET")
[[ -n "${BASE:-}" ]] && bins+=("$BASE")
declare -A times
for ((r = 1; r <= ROUNDS; r++)); do
  for b in "${!bins[@]}"; do
    for leech in 0 1 2; do
      run "${bins[$b]}" "$leech"
      secs=$SECS sent=$SENT
      times[$b.$leech]+="$secs "
      if ((leech == 2)); then times[$b.sent]+="$sent "; fi
      printf 'round %d  %-28s %-8s %6.2f s  uploaded %4d MiB  agent CPU %5.2f s  machine busy %3d %%\n' \
        "$r" "${bins[$b]}" "$(cut -d' ' -f$((leech + 1)) <<< 'alone beside serving')" "$secs" \
        "$((sent >> 20))" "$CPU" "$BUSY"
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "image $IMAGE_MIB MiB, server link $LINK, $LEECHERS leechers, upload limit $UP MiB/s, medians of $ROUNDS:"
for b in "${!bins[@]}"; do
  alone=$(median <<< "${times[$b.0]}")
  beside=$(median <<< "${times[$b.1]}")
  with=$(median <<< "${times[$b.2]}")
  sent=$(median <<< "${times[$b.sent]}")
  awk -v n="${bins[$b]}" -v a="$alone" -v i="$beside" -v w="$with" -v s="$sent" 'BEGIN {
    printf "%s: alone %.2f s, beside the clients %.2f s, serving them %.2f s: serving costs %+.1f %%; uploaded %d MiB (%.0f MiB/s)\n",
      n, a, i, w, (w / i - 1) * 100, s / 1048576, s / 1048576 / w }'
done
