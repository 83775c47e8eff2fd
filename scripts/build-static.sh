#!/usr/bin/env bash
# Build the statically linked release binary:
#   target/x86_64-unknown-linux-gnu/release/rivet
# glibc static-pie (+crt-static); the release profile is tuned for size and speed (fat LTO, one
# codegen unit, unwinding panics, stripped). Installs its build dependencies when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
need=()
for pkg in libblkid-dev libclang-dev file; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$TARGET"
BIN="target/$TARGET/release/rivet"
desc=$(file -b "$BIN")
case "$desc" in
  *"static-pie linked"* | *"statically linked"*) ;;
  *) echo "not a static binary: $desc" >&2; exit 1 ;;
esac
if ldd "$BIN" >/dev/null 2>&1 && ! ldd "$BIN" 2>&1 | grep -q "not a dynamic executable\|statically linked"; then
  echo "ldd finds dynamic dependencies:" >&2; ldd "$BIN" >&2; exit 1
fi
size=$(stat -c %s "$BIN")
limit=$((12 * 1024 * 1024))
((size <= limit)) || { echo "binary is $size bytes, over the 12 MiB budget" >&2; exit 1; }
echo "$BIN: $(numfmt --to=iec-i --suffix=B "$size") ($size bytes); $desc"
