#!/usr/bin/env bash
# Image pipeline benchmark: prints "NAME VALUE" lines, measured side by side in one run.
#   raw_vs_curl_dd          rivet install time / (curl | dd oflag=direct bs=4M conv=fsync) time, raw image
#   zstd_vs_curl_zstd_dd    the same for a zstd image (curl | zstd -d | dd)
#   qcow2_vs_ipa_path       rivet install time / (curl -o tmpfs file + qemu-img convert -O raw -t none),
#                           IPA's way of writing qcow2, for the same qcow2 image
#   peak_rss_mib_raw/zstd/qcow2   Rivet's peak resident memory
#   resume_extra_bytes_pct  bytes served beyond the image size, after 3 forced disconnects
# Everything listens on 127.0.0.1. Needs root (loop device). SIZE_GIB (default 2), RUNS (3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_GIB=${SIZE_GIB:-2}; RUNS=${RUNS:-3}; PORT=${PORT:-8099}; PROXY_PORT=$((PORT + 1))
"$ROOT/scripts/apt-install.sh" nginx-light time zstd curl e2fsprogs qemu-utils python3
RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
[[ -x "$RIVET" ]] || "$ROOT/scripts/build-static.sh" >/dev/null
W=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
LOOP=; NGINX_PID=; PROXY_PID=
cleanup() {
  [[ -n "$PROXY_PID" ]] && kill "$PROXY_PID" 2>/dev/null || true
  [[ -n "$NGINX_PID" ]] && kill "$NGINX_PID" 2>/dev/null || true
  [[ -n "$LOOP" ]] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$W" "${SHM:-/nonexistent}"
}
trap cleanup EXIT

# A realistic image: an ext4 file system holding real files (/usr/share: about a third of
# 2 GiB), and free space.
mkdir -p "$W/www"; chmod 755 "$W" "$W/www"   # nginx workers run unprivileged
mkfs.ext4 -q -F -d "${BENCH_TREE:-/usr/share}" -L bench "$W/www/disk.raw" "${SIZE_GIB}G"
zstd -q -3 -T0 "$W/www/disk.raw" -o "$W/www/disk.raw.zst"
qemu-img convert -f raw -O qcow2 "$W/www/disk.raw" "$W/www/disk.qcow2"
chmod 644 "$W"/www/*
RAW_SUM=$(sha256sum "$W/www/disk.raw" | cut -d' ' -f1)
ZST_SUM=$(sha256sum "$W/www/disk.raw.zst" | cut -d' ' -f1)
QC_SUM=$(sha256sum "$W/www/disk.qcow2" | cut -d' ' -f1)
# IPA stages qcow2 in the ramdisk's RAM (tmpfs) before converting it.
SHM=$(mktemp -d -p /dev/shm)
SIZE=$(stat -c %s "$W/www/disk.raw")
echo "image_bytes $SIZE"
echo "image_zstd_bytes $(stat -c %s "$W/www/disk.raw.zst")"
echo "image_qcow2_bytes $(stat -c %s "$W/www/disk.qcow2")"

cat > "$W/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $W/nginx.pid; error_log $W/nginx-error.log;
events { worker_connections 64; }
http { access_log $W/access.log; sendfile on;
  server { listen 127.0.0.1:$PORT; root $W/www; } }
NGX
nginx -c "$W/nginx.conf" & NGINX_PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/disk.raw.zst" -r 0-0 && break; sleep 0.1; done
truncate -s $((SIZE + (64 << 20))) "$W/target.img"
LOOP=$(losetup --find --show "$W/target.img")

# Each timed command starts with nothing dirty in the page cache and ends with its data
# flushed: the target is a loop device over a file, where O_DIRECT still lands in the backing
# file's cache, so without this whichever command ran next would pay for the previous one's
# writeback. Rivet fsyncs; dd gets conv=fsync; qemu-img convert flushes at its end.
t() { sync; /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; return 1; }; cat "$W/time"; }
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratios_raw=(); ratios_zst=(); ratios_qc=(); rss_raw=0; rss_zst=0; rss_qc=0
for _ in $(seq "$RUNS"); do
  read -r a ra < <(t "$RIVET" install --quiet --image-url "http://127.0.0.1:$PORT/disk.raw" --checksum "sha256:$RAW_SUM" --device "$LOOP")
  read -r b _ < <(t sh -c "curl -sf http://127.0.0.1:$PORT/disk.raw | dd of=$LOOP bs=4M oflag=direct iflag=fullblock conv=fsync status=none")
  ratios_raw+=("$(awk "BEGIN{print $a/$b}")"); ((ra > rss_raw)) && rss_raw=$ra
  read -r a rz < <(t "$RIVET" install --quiet --image-url "http://127.0.0.1:$PORT/disk.raw.zst" --checksum "sha256:$ZST_SUM" --device "$LOOP")
  read -r b _ < <(t sh -c "curl -sf http://127.0.0.1:$PORT/disk.raw.zst | zstd -dc | dd of=$LOOP bs=4M oflag=direct iflag=fullblock conv=fsync status=none")
  ratios_zst+=("$(awk "BEGIN{print $a/$b}")"); ((rz > rss_zst)) && rss_zst=$rz
  read -r a rq < <(t "$RIVET" install --quiet --image-url "http://127.0.0.1:$PORT/disk.qcow2" --checksum "sha256:$QC_SUM" --device "$LOOP")
  read -r b _ < <(t sh -c "curl -sf -o $SHM/disk.qcow2 http://127.0.0.1:$PORT/disk.qcow2 && qemu-img convert -f qcow2 -O raw -t none $SHM/disk.qcow2 $LOOP && rm -f $SHM/disk.qcow2")
  ratios_qc+=("$(awk "BEGIN{print $a/$b}")"); ((rq > rss_qc)) && rss_qc=$rq
done
echo "raw_vs_curl_dd $(printf '%s\n' "${ratios_raw[@]}" | med)"
echo "zstd_vs_curl_zstd_dd $(printf '%s\n' "${ratios_zst[@]}" | med)"
echo "qcow2_vs_ipa_path $(printf '%s\n' "${ratios_qc[@]}" | med)"
echo "peak_rss_mib_raw $((rss_raw / 1024))"
echo "peak_rss_mib_zstd $((rss_zst / 1024))"
echo "peak_rss_mib_qcow2 $((rss_qc / 1024))"

# Resume: a proxy cuts the connection after 1/4, 2/4 and 3/4 of the image, once each.
cat > "$W/proxy.py" <<'PY'
import socket, sys, threading
listen, upstream, size, tally = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cuts = [size // 4, size // 2, 3 * size // 4]
lock = threading.Lock()
def handle(c):
    u = socket.create_connection(("127.0.0.1", upstream))
    req = c.recv(65536)
    # One response per connection, so the proxy knows when the transfer is complete.
    head, _, rest = req.partition(b"\r\n")
    u.sendall(head + b"\r\nConnection: close" + (b"\r\n" + rest if rest else b"\r\n"))
    start = 0
    for line in req.decode("latin1").split("\r\n"):
        if line.lower().startswith("range: bytes="):
            start = int(line.split("=")[1].split("-")[0])
    with lock:
        cut = next((x for x in cuts if x > start), None)
        if cut is not None: cuts.remove(cut)
    sent, header_done, buf = 0, False, b""
    while True:
        d = u.recv(1 << 16)
        if not d: break
        if not header_done:
            buf += d
            if b"\r\n\r\n" not in buf: continue
            head, d = buf.split(b"\r\n\r\n", 1); c.sendall(head + b"\r\n\r\n"); header_done = True
        if cut is not None and start + sent + len(d) > cut:
            c.sendall(d[: cut - start - sent]); sent = cut - start; break
        c.sendall(d); sent += len(d)
    c.close(); u.close()
    with lock, open(tally, "a") as t:
        t.write("%d\n" % sent)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", listen)); s.listen(8)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
PY
python3 "$W/proxy.py" "$PROXY_PORT" "$PORT" "$SIZE" "$W/tally" & PROXY_PID=$!
sleep 0.5
: > "$W/access.log"; kill -USR1 "$NGINX_PID" 2>/dev/null || true
"$RIVET" install --quiet --retry-interval 0.2 --image-url "http://127.0.0.1:$PROXY_PORT/disk.raw" --checksum "sha256:$RAW_SUM" --device "$LOOP" >/dev/null
sleep 1
# What reached Rivet (counted by the proxy) beyond the image size; and what nginx sent.
got=$(awk '{s += $1} END {print s}' "$W/tally")
served=$(awk '{s += $10} END {print s}' "$W/access.log")
echo "resume_requests $(wc -l < "$W/tally")"
echo "resume_extra_bytes_pct $(awk "BEGIN{printf \"%.3f\", ($got - $SIZE) * 100 / $SIZE}")"
echo "resume_server_extra_bytes_pct $(awk "BEGIN{printf \"%.3f\", ($served - $SIZE) * 100 / $SIZE}")"
