#!/usr/bin/env bash
# Copy a dynamically linked program into a root tree with the shared libraries and loader it
# links, at the paths its loader expects (for the ramdisk and the test images' chroots).
# usage: copy-with-libs.sh ROOT PROGRAM DEST   (DEST: the program's path inside ROOT)
set -euo pipefail
root=$1 prog=$2 dest=$3
install -D -m 0755 "$prog" "$root$dest"
for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
