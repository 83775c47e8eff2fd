# A fleet on one provisioning network, for the peer-sharing test (tests/share/swarm.sh) and
# benchmark (scripts/bench-fleet.sh PEERS=…): a bridge in a network namespace of its own, an
# nginx image server in another whose link toward the nodes is limited by tc, and one
# namespace per node, each with eth0 on the bridge. Sourced; the caller sets RIVET, and calls
# fleet_cleanup on exit.
#   fleet_up IMAGE_MIB LINK    the bridge, the server (10.77.0.1, fd77::1), a random image with
#                              mktorrent's private torrent beside it: $FLEET_W/www/disk.raw
#   fleet_node NAME [IPV4]     a namespace $FLEET_P-NAME on the bridge (IPv6 only without IPV4)
#   fleet_agent NS K ARGS...   rivet install --peer-share in namespace NS onto $FLEET_W/diskK,
#                              output in $FLEET_W/agentK.{out,err,time}; its pid in FLEET_AGENTS
#   fleet_wait                 every agent succeeded and its disk holds the image
#   fleet_origin_bytes         image bytes nginx sent since fleet_origin_reset
#   fleet_shared K             agent K's `shared:` figures: origin peers sent peers_seen bad banned
FLEET_P=rvsh$$ # namespace and interface prefix, this run's own
FLEET_W=$(mktemp -d /dev/shm/rivet-fleet.XXXXXX)
chmod 755 "$FLEET_W" # nginx serves as www-data
FLEET_PIDS=() FLEET_AGENTS=()
fleet_cleanup() {
  local p ns
  for p in "${FLEET_PIDS[@]}" "${FLEET_AGENTS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${FLEET_PIDS[@]}" "${FLEET_AGENTS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$FLEET_P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  if [[ -n "${KEEP:-}" ]]; then echo "kept $FLEET_W" >&2; else rm -rf "$FLEET_W"; fi
}
fleet_node() { # NAME [IPV4]
  local ns=$FLEET_P-$1
  ip netns add "$ns"
  ip link add "$FLEET_P$1" netns "$FLEET_P-hub" type veth peer name eth0 netns "$ns"
  ip -n "$FLEET_P-hub" link set "$FLEET_P$1" master br0 up
  [[ -z "${2:-}" ]] || ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
fleet_up() { # IMAGE_MIB LINK
  local w=$FLEET_W
  FLEET_IMAGE_BYTES=$(($1 << 20))
  ip netns add "$FLEET_P-hub"
  ip -n "$FLEET_P-hub" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  ip -n "$FLEET_P-hub" link set br0 up
  fleet_node srv 10.77.0.1
  ip -n "$FLEET_P-srv" -6 addr add fd77::1/64 dev eth0 nodad
  # The server's link toward the nodes (its egress) is the fleet's bottleneck.
  ip netns exec "$FLEET_P-srv" tc qdisc add dev eth0 root tbf rate "$2" burst 64kb latency 400ms
  mkdir -p "$w/www" "$w/nginx"
  head -c "$FLEET_IMAGE_BYTES" /dev/urandom > "$w/www/disk.raw"
  FLEET_SUM=$(sha256sum "$w/www/disk.raw" | cut -d' ' -f1)
  mktorrent -p -l 18 -o "$w/www/disk.raw.torrent" "$w/www/disk.raw" >/dev/null
  cat > "$w/nginx/nginx.conf" <<EOC
daemon off;
worker_processes 1;
pid $w/nginx/nginx.pid;
error_log $w/nginx/error.log;
events { worker_connections 1024; }
http {
  log_format bytes '\$uri \$status \$body_bytes_sent';
  access_log $w/nginx/access.log bytes;
  sendfile on;
  client_body_temp_path $w/nginx;
  proxy_temp_path $w/nginx;
  fastcgi_temp_path $w/nginx;
  uwsgi_temp_path $w/nginx;
  scgi_temp_path $w/nginx;
  types { application/octet-stream raw torrent; }
  server { listen 10.77.0.1:8080; listen [fd77::1]:8080; root $w/www; }
}
EOC
  ip netns exec "$FLEET_P-srv" nginx -c "$w/nginx/nginx.conf" -p "$w/nginx" &
  FLEET_PIDS+=($!)
  FLEET_URL=http://10.77.0.1:8080/disk.raw
  fleet_node probe 10.77.0.254
  local _
  for _ in $(seq 1 50); do
    ip netns exec "$FLEET_P-probe" curl -sf -o /dev/null -r 0-0 "$FLEET_URL" && break
    sleep 0.1
  done
  ip netns exec "$FLEET_P-probe" curl -sf -o /dev/null -r 0-0 "$FLEET_URL" || return 1
  fleet_origin_reset
}
fleet_link() { ip netns exec "$FLEET_P-srv" tc qdisc change dev eth0 root tbf rate "$1" burst 64kb latency 400ms; }
fleet_origin_reset() { : > "$FLEET_W/nginx/access.log"; }
fleet_origin_bytes() { awk '$1 == "/disk.raw" { s += $3 } END { print s + 0 }' "$FLEET_W/nginx/access.log"; }
fleet_agent() { # NS K ARGS...
  local ns=$1 k=$2; shift 2
  rm -f "$FLEET_W/disk$k"
  truncate -s $((FLEET_IMAGE_BYTES + (8 << 20))) "$FLEET_W/disk$k"
  ip netns exec "$ns" /usr/bin/time -f '%e %U %S %M' -o "$FLEET_W/agent$k.time" \
    "$RIVET" install --quiet --image-url "${URL:-$FLEET_URL}" \
    --checksum "sha256:$FLEET_SUM" --device "$FLEET_W/disk$k" --disk-format raw --timeout 10 \
    --retry-interval 0.5 --max-duration 900 "$@" > "$FLEET_W/agent$k.out" 2> "$FLEET_W/agent$k.err" &
  FLEET_AGENTS+=($!)
}
fleet_wait() {
  local k=0 p rc
  for p in "${FLEET_AGENTS[@]}"; do
    k=$((k + 1)); rc=0
    wait "$p" || rc=$?
    if ((rc != 0)); then
      tail -n 20 "$FLEET_W/agent$k.err" >&2
      echo "FAIL: agent $k failed (exit $rc)" >&2; return 1
    fi
    if ! cmp -n "$FLEET_IMAGE_BYTES" "$FLEET_W/disk$k" "$FLEET_W/www/disk.raw"; then
      echo "FAIL: agent $k's disk differs from the image" >&2; return 1
    fi
  done
  FLEET_AGENTS=()
}
fleet_shared() { grep '^shared:' "$FLEET_W/agent$1.out" | tr -cs '0-9' ' ' | sed 's/^ //'; echo; }
