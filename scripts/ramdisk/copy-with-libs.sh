#!/usr/bin/env bash
# Copy a dynamically linked program into a root tree with the shared libraries and loader it
# links, at the paths its loader expects (for the ramdisk and the test images' chroots).
# usage: copy-with-libs.sh ROOT PROGRAM DEST   (DEST: the program's path inside ROOT)
# env: CROSS_ROOT=DIR: the program is of another architecture; DIR holds that architecture's
#      packages unpacked (dpkg -x), where its libraries are found (scripts/ramdisk/elf-libs.py)
#      LIBTREE=DIR: a package tree unpacked there (dpkg -x) whose libraries come first; each
#      goes to its path inside that tree.
set -euo pipefail
root=$1 prog=$2 dest=$3
install -D -m 0755 "$prog" "$root$dest"
if [[ -n "${CROSS_ROOT:-}" ]]; then
  # A program of another architecture (ldd cannot run it): its libraries from the packages
  # unpacked under CROSS_ROOT, found by their ELF headers.
  libs=$("$(dirname "$0")/elf-libs.py" "$CROSS_ROOT" "$prog")
  while IFS=$'\t' read -r real at; do
    [[ -n "$real" ]] && install -D -m 0755 "$real" "$root$at"
  done <<<"$libs"
  exit 0
fi
search=""
if [[ -n "${LIBTREE:-}" ]]; then
  for d in lib lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do search+="$LIBTREE/$d:"; done
fi
libs=$(LD_LIBRARY_PATH="$search${LD_LIBRARY_PATH:-}" ldd "$prog")
if grep "not found" <<<"$libs" >&2; then
  echo "copy-with-libs: $prog needs libraries not found here (above)" >&2
  exit 1
fi
for lib in $(grep -o '/[^ ]*' <<<"$libs"); do
  inside=$lib
  [[ -n "${LIBTREE:-}" && "$lib" == "$LIBTREE"/* ]] && inside=${lib#"$LIBTREE"}
  install -D -m 0755 "$(readlink -f "$lib")" "$root$inside"
done
