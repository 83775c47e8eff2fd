#!/usr/bin/env bash
# Start a standalone (API + conductor in ONE process) OpenStack Ironic on
# 127.0.0.1 only, with sqlite, noauth, fake hardware, direct deploy.
#
# usage: run-ironic.sh [start|stop|status|install]   (install: only make the venv)
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
cmd="${1:-start}"

stop() {
  for f in "$STATE/ironic.pid" "$STATE/imgsrv.pid"; do
    if [[ -f "$f" ]]; then
      pid="$(cat "$f")"
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$f"
    fi
  done
}

case "$cmd" in
  stop) stop; exit 0 ;;
  status)
    curl -s "http://127.0.0.1:$API_PORT/" ; echo; exit 0 ;;
  start|install) ;;
  *) echo "usage: $0 [start|stop|status|install]"; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/ironic" ]]; then
  if [[ "${INSTALL:-1}" == 1 ]]; then
    command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; }
    python3 -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
    "$VENV/bin/pip" install -q "ironic==$IRONIC_VERSION" python-ironicclient
  else
    echo "no ironic in $VENV (set INSTALL=1)"; exit 1
  fi
fi
[[ "$cmd" == install ]] && { echo "Ironic $IRONIC_VERSION in $VENV"; exit 0; }

stop
# Another Ironic (or anything) on our ports would answer in its place: fail clearly instead.
for port in "$API_PORT" "$IMG_PORT"; do
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
"$VENV/bin/ironic-dbsync" --config-file "$STATE/ironic.conf" create_schema \
  > "$STATE/dbsync.log" 2>&1
t1=$(date +%s.%N)
nohup "$VENV/bin/ironic" --config-file "$STATE/ironic.conf" \
  > "$STATE/ironic.stdout" 2>&1 &
echo $! > "$STATE/ironic.pid"
# wait until API answers and the conductor has registered the driver
for i in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$API_PORT/v1/drivers" -H 'X-OpenStack-Ironic-API-Version: latest' 2>/dev/null | grep -q fake-hardware; then
    break
  fi
  if ! kill -0 "$(cat "$STATE/ironic.pid")" 2>/dev/null; then
    echo "ironic died, see $STATE/ironic.log $STATE/ironic.stdout"; tail -30 "$STATE/ironic.stdout" "$STATE/ironic.log"; exit 1
  fi
  sleep 0.5
done
t2=$(date +%s.%N)
printf 'dbsync %.1fs, ironic ready %.1fs (pid %s), API http://127.0.0.1:%s, images http://127.0.0.1:%s/\n' \
  "$(awk "BEGIN{print $t1-$t0}")" "$(awk "BEGIN{print $t2-$t1}")" "$(cat "$STATE/ironic.pid")" "$API_PORT" "$IMG_PORT"
