#!/usr/bin/env bash
# IPA 13 and Rivet side by side, as operators would compare them: in the lab (tests/lab), the
# same redfish-virtual-media whole-disk deploy (Ironic builds the ISO from each agent's kernel
# and initramfs, deploys a qcow2 image with a config drive onto the NVMe disk and reboots the
# node into it), once with IPA's ramdisk and once with Rivet's minimal one, in one run. Prints,
# per agent: Ironic's power-on → first heartbeat, → active (seconds, Ironic's log), the
# ramdisk's size, and the smallest VM memory the agent deploys with (bisected from 4 GiB down
# to MEM_STEP MiB, 32 by default; a boot that does not deploy within the time limit counts as
# too small).
#
# IPA's ramdisk is built once with ironic-python-agent-builder and diskimage-builder
# (debian-minimal, bookworm, IPA 13.0.0 from PyPI) and cached in $IPA_CACHE; the builder's
# element installs IPA from a git checkout, so the PyPI release is turned into a local one
# (OpenStack's own git is not reachable from here). Not part of the test command.
# usage: scripts/bench-vs-ipa.sh   (RIVET=static binary; IPA_CACHE=~/.cache/rivet-ipa;
#        RUNS_ONLY=1 skips the memory bisection; MEM_FLOOR=128; MEM_STEP=32)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${IPA_CACHE:-$HOME/.cache/rivet-ipa}
RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
[[ -x "$RIVET" ]] || "$ROOT/scripts/build-static.sh" >/dev/null
export RIVET
mkdir -p "$CACHE"

build_ipa() {
  [[ -f "$CACHE/ipa.initramfs" && -f "$CACHE/ipa.kernel" ]] && return 0
  local t0=$SECONDS
  "$ROOT/scripts/apt-install.sh" debootstrap squashfs-tools qemu-utils cpio git curl xz-utils zstd \
    kpartx sudo python3-venv
  [[ -x "$CACHE/venv/bin/ironic-python-agent-builder" ]] || {
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q -U pip
    "$CACHE/venv/bin/pip" install -q diskimage-builder ironic-python-agent-builder
  }
  # IPA 13.0.0 from PyPI as a git repository with its release tag (pbr reads the version from
  # the tag), and a requirements repository whose upper-constraints pins nothing.
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
  "$CACHE/venv/bin/pip" download -q --no-deps --no-binary :all: ironic-python-agent==13.0.0 -d "$CACHE/src"
  tar --no-same-owner -xzf "$CACHE"/src/ironic_python_agent-13.0.0.tar.gz -C "$CACHE/src" 2>/dev/null \
    || tar --no-same-owner -xzf "$CACHE"/src/ironic-python-agent-13.0.0.tar.gz -C "$CACHE/src"
  local ipa; ipa=$(ls -d "$CACHE"/src/ironic*python*agent-13.0.0)
  git -C "$ipa" init -q && git -C "$ipa" add -A \
    && git -C "$ipa" -c user.name=bench -c user.email=bench@localhost commit -q -m "IPA 13.0.0 (PyPI)" \
    && git -C "$ipa" tag 13.0.0
  # glean (simple-init: the image's network set-up) is fetched the same way: the element
  # caches its git repository even when it installs the PyPI release.
  "$CACHE/venv/bin/pip" download -q --no-deps --no-binary :all: glean -d "$CACHE/src"
  tar --no-same-owner -xzf "$CACHE"/src/glean-*.tar.gz -C "$CACHE/src"
  local glean; glean=$(ls -d "$CACHE"/src/glean-*/ | head -1)
  git -C "$glean" init -q && git -C "$glean" add -A \
    && git -C "$glean" -c user.name=bench -c user.email=bench@localhost commit -q -m "glean (PyPI)"
  mkdir -p "$CACHE/src/requirements" && : > "$CACHE/src/requirements/upper-constraints.txt"
  git -C "$CACHE/src/requirements" init -q && git -C "$CACHE/src/requirements" add -A \
    && git -C "$CACHE/src/requirements" -c user.name=bench -c user.email=bench@localhost commit -q -m constraints
  export DIB_REPOLOCATION_ironic_python_agent=$ipa DIB_REPOREF_ironic_python_agent=13.0.0
  export DIB_REPOLOCATION_requirements=$CACHE/src/requirements DIB_REPOREF_requirements=HEAD
  export DIB_REPOLOCATION_glean=${glean%/} DIB_REPOREF_glean=HEAD
  export DIB_RELEASE=bookworm DIB_DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
  export DIB_DEBOOTSTRAP_CACHE=1
  # This machine may reach PyPI through a proxy whose CA only the host trusts (its
  # /usr/local/share/ca-certificates): an element of the bench's lends those CAs to the build's
  # chroot, where pip runs with the host's environment (PIP_CERT, SSL_CERT_FILE point at the
  # system bundle), and takes them out again before the image is packed.
  local el=$CACHE/elements/bench-host-ca
  mkdir -p "$el/extra-data.d" "$el/pre-install.d" "$el/finalise.d"
  cat > "$el/extra-data.d/10-bench-host-ca" <<'SH'
#!/bin/bash
set -eu
mkdir -p "$TMP_HOOKS_PATH/bench-host-ca"
cp /usr/local/share/ca-certificates/*.crt "$TMP_HOOKS_PATH/bench-host-ca/" 2>/dev/null || true
SH
  cat > "$el/pre-install.d/01-bench-host-ca" <<'SH'
#!/bin/bash
set -eu
ls /tmp/in_target.d/bench-host-ca/*.crt >/dev/null 2>&1 || exit 0
mkdir -p /usr/local/share/ca-certificates/bench-host-ca /etc/ssl/certs
cp /tmp/in_target.d/bench-host-ca/*.crt /usr/local/share/ca-certificates/bench-host-ca/
cat /tmp/in_target.d/bench-host-ca/*.crt >> /etc/ssl/certs/ca-certificates.crt
SH
  cat > "$el/finalise.d/99-bench-host-ca" <<'SH'
#!/bin/bash
set -eu
rm -rf /usr/local/share/ca-certificates/bench-host-ca
if command -v update-ca-certificates >/dev/null; then update-ca-certificates --fresh >/dev/null; fi
SH
  chmod +x "$el"/*/*
  PATH="$CACHE/venv/bin:$PATH" ironic-python-agent-builder -o "$CACHE/ipa" --release bookworm \
    --elements-path "$CACHE/elements" -e bench-host-ca debian-minimal \
    > "$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; echo "IPA ramdisk build failed ($CACHE/build.log)" >&2; exit 1; }
  echo "ipa ramdisk built in $((SECONDS - t0)) s"
}
build_ipa
# Each run's log stays in $CACHE/runs (the last bench's only).
RD=$CACHE/runs
rm -rf "$RD" && mkdir -p "$RD"
# As shipped (gzip), like IPA's: the size and the memory figures are the operator's.
RIVET="$RIVET" "$ROOT/scripts/build-initramfs.sh" "$RD" >/dev/null

# run AGENT MEMORY: one vmedia deploy in a fresh lab; prints "heartbeat_s active_s" or fails.
run() {
  local agent=$1 mem=$2 log=$RD/run-$1-$2.log k r foreign=0
  if [[ "$agent" == ipa ]]; then k=$CACHE/ipa.kernel r=$CACHE/ipa.initramfs foreign=1
  else k=$RD/rivet.kernel r=$RD/rivet.initramfs; fi
  if FLOWS=vmedia LANES=1 VM_MEMORY_MIB=$mem VMEDIA_DEPLOY_KERNEL=$k VMEDIA_DEPLOY_RAMDISK=$r \
       VMEDIA_FOREIGN_AGENT=$foreign VMEDIA_UNDEPLOY=0 VMEDIA_NETWORK=0 HB_TIMEOUT=${HB_TIMEOUT:-480} \
       "$ROOT/tests/vm/deploy.sh" > "$log" 2>&1; then
    echo "$(sed -n 's/^time vmedia_boot_to_heartbeat \([0-9]*\)s$/\1/p' "$log") $(sed -n 's/^time vmedia_power_on_to_active \([0-9]*\)s$/\1/p' "$log")"
  else
    return 1
  fi
}
# smallest AGENT FLOOR: the smallest memory (MiB) it deploys with, bisected between 4 GiB (it
# deployed there) and FLOOR (no less than the compressed ramdisk: the kernel holds it whole).
smallest() {
  local step=${MEM_STEP:-32} lo=$2 hi=4096
  while ((hi - lo > step)); do
    local mid=$(((lo + hi) / 2 / step * step))
    if run "$1" "$mid" >/dev/null; then
      hi=$mid; echo "  $1 at $mid MiB: deployed" >&2
    else
      lo=$mid; echo "  $1 at $mid MiB: did not deploy ($(grep -a -m1 -o -E "FAIL: .{0,160}" "$RD/run-$1-$mid.log" || true))" >&2
    fi
  done
  echo "$hi"
}
size() { echo "$(( ($(stat -c %s "$1") + $(stat -c %s "$2")) / 1048576 ))"; }
echo "agent ramdisk_mib power_on_to_heartbeat_s power_on_to_active_s smallest_memory_mib"
for a in ipa rivet; do
  if [[ "$a" == ipa ]]; then s=$(size "$CACHE/ipa.kernel" "$CACHE/ipa.initramfs")
  else s=$(size "$RD/rivet.kernel" "$RD/rivet.initramfs"); fi
  read -r hb act < <(run "$a" 4096) || { echo "$a $s failed at 4096 MiB (see $RD)"; continue; }
  mem="-"
  floor=${MEM_FLOOR:-128}
  ((floor > s)) || floor=$s
  [[ "${RUNS_ONLY:-0}" == 1 ]] || mem=$(smallest "$a" "$floor")
  echo "$a $s $hb $act $mem"
done
