#!/usr/bin/env bash
# Start a standalone (API + conductor in ONE process) OpenStack Ironic on
# 127.0.0.1 only, with sqlite, noauth, fake hardware, direct deploy.
#
# With CONDUCTORS=N (N >= 1) it is Ironic's own scale-out instead: a MariaDB server (Debian's
# package; its own data directory and socket under STATE, no TCP), APIS ironic-api processes
# (ports API_PORT, API_PORT+1, ...) and N ironic-conductor processes reached over JSON-RPC,
# conductor K named and listening on 127.0.1.K:8089 (distinct loopback addresses), each with
# its own http_root and image caches; a dead conductor is noticed in CONDUCTOR_TIMEOUT
# seconds and its nodes go to the others by the hash ring. Pids in STATE/pids/.
#
# usage: run-ironic.sh [start|stop|status|install]   (install: only make the venv)
#        run-ironic.sh db-stop | db-start             (multi-conductor: the database down/up)
#        run-ironic.sh conductor-restart K            (multi-conductor: conductor K killed -9
#                                   and started again, as an operator's restart after a
#                                   crash: it clears its locks and fails its nodes left mid-step)
#   env: VENV (default $HOME/.cache/rivet-ironic/venv)
#        STATE (default ${TMPDIR:-/tmp}/rivet-ironic-state)  -- wiped on start
#        REQUIRE_TLS (true, Ironic's default: the agent must call back over https)
#        HEARTBEAT_TIMEOUT (30: agents heartbeat every 0.3-0.6 x this)
#        API_PORT (6385) IMG_PORT (8089)
#        AUTOMATED_CLEAN (false)  ERASE_META_PRIO (0, e.g. 99 to clean)
#        EXPRESS_PRIO (0: off) -> erase_devices_express in automated cleaning at that priority
#                                  ([conductor]clean_step_priority_override)
#        FAST_TRACK (false)  -> [deploy]fast_track
#        BIOS_BOOTLOADER (false) -> [agent]enable_bios_bootloader_install
#        AUTO_DISCOVERY (false) -> [auto_discovery]enabled (unknown nodes that post
#                                  inspection data are enrolled)
#        INSTALL (1): create the venv and pip install ironic when missing
#        CONDUCTORS (0: API and conductor in one process on sqlite), APIS (1),
#        CONDUCTOR_TIMEOUT (10: [conductor]heartbeat_timeout in the multi-conductor mode)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VENV:-$HOME/.cache/rivet-ironic/venv}"
STATE="${STATE:-${TMPDIR:-/tmp}/rivet-ironic-state}"
REQUIRE_TLS="${REQUIRE_TLS:-true}"
HEARTBEAT_TIMEOUT="${HEARTBEAT_TIMEOUT:-30}"
API_PORT="${API_PORT:-6385}"
IMG_PORT="${IMG_PORT:-8089}"
AUTOMATED_CLEAN="${AUTOMATED_CLEAN:-false}"
ERASE_META_PRIO="${ERASE_META_PRIO:-0}"
EXPRESS_PRIO="${EXPRESS_PRIO:-0}"
if ((EXPRESS_PRIO > 0)); then
  CLEAN_OVERRIDE="clean_step_priority_override = deploy.erase_devices_express:$EXPRESS_PRIO"
else
  CLEAN_OVERRIDE=""
fi
FAST_TRACK="${FAST_TRACK:-false}"
BIOS_BOOTLOADER="${BIOS_BOOTLOADER:-false}"
AUTO_DISCOVERY="${AUTO_DISCOVERY:-false}"
IRONIC_VERSION="${IRONIC_VERSION:-39.0.0}"
CONDUCTORS="${CONDUCTORS:-0}"
APIS="${APIS:-1}"
CONDUCTOR_TIMEOUT="${CONDUCTOR_TIMEOUT:-10}"
DB_DIR="$STATE/mysql"
DB_SOCK="$DB_DIR/mysqld.sock"
cmd="${1:-start}"

stop_pid() { # PIDFILE: TERM, then KILL after 10 s
  local f=$1 pid
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
stop() {
  local f
  for f in "$STATE/ironic.pid" "$STATE/imgsrv.pid" "$STATE"/pids/*.pid; do stop_pid "$f"; done
}
# The database of the multi-conductor mode: Debian's MariaDB on its own data directory and
# socket (never the system's server), listening on no TCP port.
db_start() {
  mkdir -p "$DB_DIR" "$STATE/pids"
  if [[ ! -d "$DB_DIR/data/mysql" ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR/data" --skip-test-db \
      --auth-root-authentication-method=normal > "$DB_DIR/install.log" 2>&1 \
      || { echo "mariadb-install-db failed: $(tail -5 "$DB_DIR/install.log")" >&2; return 1; }
  fi
  nohup mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCK" \
    --skip-networking --pid-file="$DB_DIR/mariadbd.pid" --log-error="$DB_DIR/error.log" \
    --innodb-buffer-pool-size=64M --max-connections=500 > /dev/null 2>&1 &
  echo $! > "$STATE/pids/mariadb.pid"
  for _ in $(seq 1 100); do
    mariadb --no-defaults -S "$DB_SOCK" -u root -e "SELECT 1" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$STATE/pids/mariadb.pid")" 2>/dev/null \
      || { echo "mariadbd died: $(tail -5 "$DB_DIR/error.log")" >&2; return 1; }
    sleep 0.2
  done
  echo "mariadbd did not answer in 20 s" >&2
  return 1
}

# start_conductor K: conductor K with its own name, address, http_root and caches; appends
# to its log (a restart keeps the first run's lines).
start_conductor() {
  local k=$1 c=$STATE/conductor-$1
  nohup "$VENV/bin/ironic-conductor" "${CONFS[@]}" --config-file "$c.conf" >> "$c.stdout" 2>&1 &
  echo $! > "$STATE/pids/conductor-$k.pid"
}
# restart_conductor K: kill -9 (with its workers), start again, wait for it to register.
restart_conductor() {
  local k=$1 pid n0 n
  [[ -f "$STATE/conductor-$k.conf" ]] || { echo "no conductor $k in $STATE" >&2; return 1; }
  if [[ -f "$STATE/pids/conductor-$k.pid" ]]; then
    pid=$(cat "$STATE/pids/conductor-$k.pid")
    pkill -9 -P "$pid" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  n0=$(grep -c "Successfully started conductor with hostname 127.0.1.$k\." "$STATE/conductor-$k.log" || true)
  start_conductor "$k"
  for _ in $(seq 1 240); do
    n=$(grep -c "Successfully started conductor with hostname 127.0.1.$k\." "$STATE/conductor-$k.log" || true)
    ((n > n0)) && return 0
    kill -0 "$(cat "$STATE/pids/conductor-$k.pid")" 2>/dev/null \
      || { echo "conductor $k died at its restart: $(tail -n 5 "$STATE/conductor-$k.stdout")" >&2; return 1; }
    sleep 0.5
  done
  echo "conductor $k did not start again in 120 s" >&2
  return 1
}

case "$cmd" in
  stop) stop; exit 0 ;;
  db-stop) stop_pid "$STATE/pids/mariadb.pid"; exit 0 ;;
  db-start) db_start; exit $? ;;
  conductor-restart)
    CONFS=(--config-file "$STATE/ironic.conf" --config-file "$STATE/multi.conf")
    restart_conductor "${2:?usage: $0 conductor-restart K}"; exit $? ;;
  status)
    curl -s "http://127.0.0.1:$API_PORT/" ; echo; exit 0 ;;
  start|install) ;;
  *) echo "usage: $0 [start|stop|status|install|db-stop|db-start|conductor-restart K]"; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/ironic" ]]; then
  if [[ "${INSTALL:-1}" == 1 ]]; then
    "$(dirname "$0")/../apt-install.sh" curl python3-venv
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
    "$VENV/bin/pip" install -q "ironic==$IRONIC_VERSION" python-ironicclient pymysql
  else
    echo "no ironic in $VENV (set INSTALL=1)"; exit 1
  fi
fi
# The MariaDB driver (a venv made before the multi-conductor mode lacks it).
"$VENV/bin/python" -c 'import pymysql' 2>/dev/null || "$VENV/bin/pip" install -q pymysql
[[ "$cmd" == install ]] && { echo "Ironic $IRONIC_VERSION in $VENV"; exit 0; }

stop
# Another Ironic (or anything) on our ports would answer in its place: fail clearly instead.
ports=("$API_PORT" "$IMG_PORT")
for ((j = 1; j < APIS; j++)); do ports+=($((API_PORT + j))); done
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use (a stale Ironic from another STATE dir?)" >&2
    exit 1
  fi
done
rm -rf "$STATE"
mkdir -p "$STATE/httproot" "$STATE/locks" "$STATE/images" "$STATE/certificates"
sed -e "s#@STATE@#$STATE#g" -e "s#@API_PORT@#$API_PORT#g" \
    -e "s#@IMG_PORT@#$IMG_PORT#g" -e "s#@AUTOMATED_CLEAN@#$AUTOMATED_CLEAN#g" \
    -e "s#@ERASE_META_PRIO@#$ERASE_META_PRIO#g" -e "s#@FAST_TRACK@#$FAST_TRACK#g" \
    -e "s#@CLEAN_OVERRIDE@#$CLEAN_OVERRIDE#g" \
    -e "s#@AUTO_DISCOVERY@#$AUTO_DISCOVERY#g" -e "s#@BIOS_BOOTLOADER@#$BIOS_BOOTLOADER#g" \
    -e "s#@REQUIRE_TLS@#$REQUIRE_TLS#g" -e "s#@HEARTBEAT_TIMEOUT@#$HEARTBEAT_TIMEOUT#g" \
    "$HERE/ironic.conf.in" > "$STATE/ironic.conf"

# test images served on 127.0.0.1:$IMG_PORT
"$VENV/bin/python" - "$STATE/images" <<'PY'
import os, sys
d = sys.argv[1]
# 4 MiB "whole disk image" (raw, first sector marked), 2 MiB "partition image"
with open(os.path.join(d, 'disk.raw'), 'wb') as f:
    f.write(b'\xeb\x63\x90' + b'FAKEDISK' * 64 + b'\0' * (4 * 1024 * 1024 - 515) + b'\x55\xaa')
with open(os.path.join(d, 'part.raw'), 'wb') as f:
    f.write(b'FAKEPART' * (2 * 1024 * 1024 // 8))
for n in ('vmlinuz', 'initrd'):
    with open(os.path.join(d, n), 'wb') as f:
        f.write(n.encode() * 1024)
PY
(cd "$STATE/images" && for f in *; do sha256sum "$f" | cut -d' ' -f1 > "$f.sha256"; done)
nohup "$VENV/bin/python" -m http.server "$IMG_PORT" --bind 127.0.0.1 \
  --directory "$STATE/images" > "$STATE/imgsrv.log" 2>&1 &
echo $! > "$STATE/imgsrv.pid"

t0=$(date +%s.%N)
CONFS=(--config-file "$STATE/ironic.conf")
if ((CONDUCTORS > 0)); then
  db_start
  mariadb --no-defaults -S "$DB_SOCK" -u root -e "CREATE DATABASE ironic CHARACTER SET utf8mb4"
  # Layered on ironic.conf (a later file wins): the shared database, JSON-RPC between the API
  # and the conductors, a conductor declared dead (and its nodes taken over) in seconds.
  cat > "$STATE/multi.conf" <<EOF
[DEFAULT]
rpc_transport = json-rpc
hash_ring_reset_interval = 5
[database]
connection = mysql+pymysql://root@localhost/ironic?unix_socket=$DB_SOCK
max_retries = -1
retry_interval = 1
[conductor]
heartbeat_interval = 2
heartbeat_timeout = $CONDUCTOR_TIMEOUT
[json_rpc]
auth_strategy = noauth
# Ironic's default port, on each conductor's own address: on any other port Ironic 39
# registers a conductor as HOST:PORT but reserves nodes as HOST, and a dead conductor's
# "deploying" nodes then never match it and are never taken over.
port = 8089
EOF
  CONFS+=(--config-file "$STATE/multi.conf")
fi
"$VENV/bin/ironic-dbsync" "${CONFS[@]}" create_schema > "$STATE/dbsync.log" 2>&1
t1=$(date +%s.%N)
# ready URL LOG...: wait until URL lists fake-hardware (the API answers and a conductor
# registered the driver); a process of ours that died is named, with the logs' tails.
ready() {
  local url=$1 f; shift
  for _ in $(seq 1 240); do
    if curl -sf "$url/v1/drivers" -H 'X-OpenStack-Ironic-API-Version: latest' 2>/dev/null | grep -q fake-hardware; then
      return 0
    fi
    for f in "$STATE/ironic.pid" "$STATE"/pids/*.pid; do
      [[ -f "$f" ]] || continue
      kill -0 "$(cat "$f")" 2>/dev/null || { echo "ironic died ($f), see $*"; tail -n 30 "$@"; exit 1; }
    done
    sleep 0.5
  done
  echo "Ironic not ready in 120 s, see $*"; exit 1
}
if ((CONDUCTORS == 0)); then
  nohup "$VENV/bin/ironic" "${CONFS[@]}" > "$STATE/ironic.stdout" 2>&1 &
  echo $! > "$STATE/ironic.pid"
  ready "http://127.0.0.1:$API_PORT" "$STATE/ironic.stdout" "$STATE/ironic.log"
  t2=$(date +%s.%N)
  printf 'dbsync %.1fs, ironic ready %.1fs (pid %s), API http://127.0.0.1:%s, images http://127.0.0.1:%s/\n' \
    "$(awk "BEGIN{print $t1-$t0}")" "$(awk "BEGIN{print $t2-$t1}")" "$(cat "$STATE/ironic.pid")" "$API_PORT" "$IMG_PORT"
  exit 0
fi
for ((k = 1; k <= CONDUCTORS; k++)); do
  c=$STATE/conductor-$k
  mkdir -p "$c/httproot" "$c/images" "$c/master_images"
  cat > "$c.conf" <<EOF
[DEFAULT]
host = 127.0.1.$k
log_file = $c.log
[json_rpc]
host_ip = 127.0.1.$k
[deploy]
http_root = $c/httproot
[pxe]
images_path = $c/images
instance_master_path = $c/master_images
EOF
  start_conductor "$k"
done
urls=()
for ((j = 0; j < APIS; j++)); do
  port=$((API_PORT + j))
  cat > "$STATE/api-$j.conf" <<EOF
[DEFAULT]
log_file = $STATE/api-$j.log
[api]
port = $port
public_endpoint = http://127.0.0.1:$port
EOF
  nohup "$VENV/bin/ironic-api" "${CONFS[@]}" --config-file "$STATE/api-$j.conf" > "$STATE/api-$j.stdout" 2>&1 &
  echo $! > "$STATE/pids/api-$j.pid"
  urls+=("http://127.0.0.1:$port")
done
for u in "${urls[@]}"; do ready "$u" "$STATE/api-0.stdout" "$STATE/api-0.log" "$STATE/conductor-1.log"; done
# Every conductor registered before nodes come: the hash ring then spreads them.
n=0
for _ in $(seq 1 120); do
  n=$(mariadb --no-defaults -S "$DB_SOCK" -u root -N -e "SELECT COUNT(*) FROM ironic.conductors WHERE online = 1")
  ((n == CONDUCTORS)) && break
  sleep 0.5
done
((n == CONDUCTORS)) || { echo "only $n of $CONDUCTORS conductors registered"; exit 1; }
t2=$(date +%s.%N)
printf 'dbsync %.1fs, %d conductors and %d APIs ready %.1fs, APIs %s, images http://127.0.0.1:%s/\n' \
  "$(awk "BEGIN{print $t1-$t0}")" "$CONDUCTORS" "$APIS" "$(awk "BEGIN{print $t2-$t1}")" "${urls[*]}" "$IMG_PORT"
