#!/usr/bin/env bash
# Install the Debian packages named that are missing, one installer at a time: the test
# command builds and tests side by side (the static build, the DIB ramdisk, the lab), each
# installing what it needs, and apt serves one at a time (a second `apt-get update` fails on
# its lock at once). Packages never start their services here (policy-rc.d says no while
# installing): every daemon a script needs, it starts itself with its own configuration.
# usage: scripts/apt-install.sh [--foreign-arch ARCH] PKG...
#   --foreign-arch ARCH: apt also knows ARCH's packages (e.g. arm64, for a cross build or the
#   arm64 ramdisk: `apt-get download PKG:arm64`), its lists fetched once
set -euo pipefail
foreign=""
if [[ "${1:-}" == --foreign-arch ]]; then foreign=$2; shift 2; fi
missing() { local p; for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done; }
arch_missing() { [[ -n "$foreign" ]] && ! dpkg --print-foreign-architectures | grep -qx "$foreign"; }
[[ -n "$(missing "$@")" ]] || arch_missing || exit 0
exec 9>/var/lock/rivet-apt.lock
flock 9
updated=
if arch_missing; then
  dpkg --add-architecture "$foreign"
  apt-get -o DPkg::Lock::Timeout=600 update -qq; updated=1
fi
# Twice at most: installing Debian's qemu-system-x86 removes a newer qemu-utils from
# backports, which the second pass puts back at the matching version.
for _ in 1 2; do
  mapfile -t need < <(missing "$@")
  ((${#need[@]})) || exit 0
  echo "installing: ${need[*]}" >&2
  # apt's own locks (another installer than ours, e.g. unattended upgrades) are waited for.
  [[ -n "$updated" ]] || { apt-get -o DPkg::Lock::Timeout=600 update -qq; updated=1; }
  guard=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${need[@]}" >/dev/null || rc=$?
  [[ -n "$guard" ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || exit "$rc"
done
