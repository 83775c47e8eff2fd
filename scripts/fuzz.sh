#!/usr/bin/env bash
# Fuzz the parsers that read untrusted input (cargo-fuzz, libFuzzer): the qcow2 metadata
# parser and write pass, the compressed-cluster decoder, checksum files, the kernel command
# line, command JSON (image_info, inject_files, hints), root device hints, the conductor's
# lookup config, and partition sizes from a deploy step. Each target runs
# for a bounded time from a seed corpus generated here; the script prints executions and
# crashes per target and fails if any target crashed (the crashing input is kept under
# fuzz/artifacts/TARGET/ to become a regression test in fuzz/regressions/).
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60; installs nightly and cargo-fuzz)
# The test command does not run it (nightly and a build of minutes); it runs every target's body
# under `cargo test` instead (tests/fuzz_smoke.rs, seeded mutations). FUZZ_SANITIZER (default none) picks cargo-fuzz's
# sanitizer: the fuzzed code is safe Rust (unsafe_code is denied), where AddressSanitizer finds
# nothing the language does not already stop, and cargo-fuzz does not build the C decoders
# (zstd, liblzma) with it; without it the build takes ~6 min instead of ~9 on two cores and
# runs faster. A panic, an overflow (debug assertions are on), a stack overflow, a timeout or an
# allocation over -rss_limit_mb is a crash either way.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-60}
SAN=${FUZZ_SANITIZER:-none}
export PATH="$HOME/.cargo/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$ROOT/fuzz"
C=$ROOT/fuzz/corpus
seed() { # TARGET NAME: stdin becomes a seed
  mkdir -p "$C/$1"; cat > "$C/$1/$2"
}
if [[ ! -d "$C" ]]; then
  tmp=$(mktemp -d)
  head -c 300000 /dev/urandom > "$tmp/data"
  truncate -s 1M "$tmp/data"
  for o in "cluster_size=512" "cluster_size=65536" "cluster_size=32768,extended_l2=on" \
           "compression_type=zstd"; do
    qemu-img convert -q -c -f raw -O qcow2 -o "$o" "$tmp/data" "$tmp/q"
    seed qcow2 "${o//[=,]/_}" < "$tmp/q"
  done
  qemu-img create -q -f qcow2 "$tmp/e" 4M && seed qcow2 empty < "$tmp/e"
  printf 'x' | gzip -c | tail -c +11 | seed qcow2_cluster deflate
  printf '\001' | cat - <(printf 'hello' | zstd -q -c) | seed qcow2_cluster zstd
  printf 'image.qcow2\n%s  image.qcow2\n%s  other.img\n' "$(sha256sum "$tmp/q" | cut -c1-64)" \
    "$(md5sum "$tmp/q" | cut -c1-32)" | seed checksum_file gnu
  printf 'image.raw\nSHA256 (image.raw) = %s\n' "$(sha256sum "$tmp/q" | cut -c1-64)" | seed checksum_file bsd
  printf 'ipa-api-url=https://10.0.0.1:6385,http://[fd00::1]:6385 BOOTIF=01-52-54-00-12-34-56 ipa-insecure=1 ipa-lookup-timeout=300 ipa-tls-min-version=1.3 "ipa-global-request-id=req-1" nofb boot_method=vmedia\n' | seed cmdline ironic
  printf '{"id":"i1","urls":["http://h/i"],"os_hash_algo":"sha256","os_hash_value":"%s","disk_format":"qcow2","image_type":"partition","root_mb":1024,"files":[{"path":"/etc/x","content":"eA=="}],"name":"s== /dev/sda","size":">= 10"}' \
    "$(sha256sum "$tmp/q" | cut -c1-64)" | seed command_json image_info
  "$(command -v python3)" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d["node"].get("properties", {})))' \
    "$ROOT/tests/fixtures/captured_lookup.json" 2>/dev/null | seed command_json lookup_properties || true
  printf '"name": "s== /dev/sda", "size": "<range-in> [100 200]", "rotational": false, "serial": "<or> A <or> B"' | seed root_hints ops
  cat "$ROOT/tests/fixtures/captured_lookup.json" | seed lookup_config captured
  printf '{"root_mb": 1024, "swap_mb": 512, "ephemeral_mb": "2048", "deploy_boot_mode": "bios", "disk_label": "msdos", "configdrive_bytes": 65536}' | seed step_sizes bios
  printf 'step = "write_marker"\nkinds = ["clean", "service"]\ntimeout = 60\nexec = "marker.sh"\n[argsinfo.text]\ndescription = "What to write"\nrequired = true\n' | seed step_manifest example
  rm -rf "$tmp"
fi
# One build for every target (its time is printed apart from the fuzzing).
t0=$SECONDS
blog=$(mktemp)
if ! cargo +nightly fuzz build -s "$SAN" > "$blog" 2>&1; then tail -40 "$blog" >&2; exit 1; fi
rm -f "$blog"
echo "build_seconds $((SECONDS - t0)) sanitizer $SAN"
echo "target executions crashes seconds"
failed=0
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$C/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  log=$(mktemp)
  # -rss_limit_mb: a parser that tries to allocate without bound is a finding too.
  if ! cargo +nightly fuzz run -s "$SAN" "$t" "$C/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 \
       -max_len=262144 -print_final_stats=1 > "$log" 2>&1; then
    failed=1
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  after=$(find "artifacts/$t" -type f | wc -l)
  echo "$t ${runs:-0} $((after - before)) $SECS"
  if ((after > before)) || [[ -z "$runs" ]]; then
    failed=1
    grep -E "ERROR|panicked|SUMMARY|error" "$log" | head -20 >&2 || true
  fi
  rm -f "$log"
done
exit $failed
