#!/usr/bin/env bash
# The fast deploy ramdisk, no distribution inside: Debian's kernel, the modules a deploy needs
# (virtio, NVMe, AHCI/SCSI, USB storage, common NICs, vfat/ext4/iso9660, loop, md RAID),
# busybox-static for the shell tools, mdadm and multipath-tools (with the libraries they
# link), the static rivet
# binary, and a small /init (scripts/ramdisk/init.sh) that mounts the pseudo file systems,
# loads the modules, runs `rivet network` (network_data.json or DHCP, VLANs, bonds) and keeps
# the agent running.
#
# usage: scripts/build-initramfs.sh [OUT_DIR]      (default: target/ramdisk, target/ramdisk-arm64)
#   -> OUT_DIR/rivet.kernel (Debian's vmlinuz), OUT_DIR/rivet.initramfs (cpio; COMPRESS=gzip|zstd|none)
# env: ARCH (x86_64 or aarch64, default this machine's: the arm64 ramdisk is built here from
#      Debian's arm64 packages, downloaded and unpacked, nothing emulated), RIVET (binary,
#      default the static release build of ARCH), KVER (kernel ABI, default Debian's),
#      EXTRA_MODULES, CACHE (downloaded .debs, default ~/.cache/rivet-ramdisk[-arm64]),
#      RIVET_STEPS_DIR (custom steps to ship in /etc/rivet/steps.d)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCH=${ARCH:-$(uname -m)}
case "$ARCH" in
  x86_64 | amd64) ARCH=x86_64 DEB=amd64 SUFFIX="" ;;
  aarch64 | arm64) ARCH=aarch64 DEB=arm64 SUFFIX=-arm64 ;;
  *) echo "ARCH must be x86_64 or aarch64, not $ARCH" >&2; exit 2 ;;
esac
OUT=$(mkdir -p "${1:-$ROOT/target/ramdisk$SUFFIX}" && cd "${1:-$ROOT/target/ramdisk$SUFFIX}" && pwd)
RIVET=${RIVET:-$ROOT/target/$ARCH-unknown-linux-gnu/release/rivet}
CACHE=${CACHE:-$HOME/.cache/rivet-ramdisk$SUFFIX}
COMPRESS=${COMPRESS:-gzip}
t0=$(date +%s.%N)
# Another architecture's packages: apt knows them once it is a foreign architecture here.
CROSS=""
[[ "$ARCH" == "$(uname -m)" ]] || CROSS=1
if [[ -n "$CROSS" ]]; then
  "$ROOT/scripts/apt-install.sh" --foreign-arch "$DEB" cpio kmod file binutils python3
else
  "$ROOT/scripts/apt-install.sh" busybox-static cpio kmod file
fi
[[ -x "$RIVET" ]] || ARCH=$ARCH "$ROOT/scripts/build-static.sh" >/dev/null
file -b "$RIVET" | grep -q "$([[ "$ARCH" == aarch64 ]] && echo "ARM aarch64" || echo "x86-64")" \
  || { echo "$RIVET is not an $ARCH binary: $(file -b "$RIVET")" >&2; exit 2; }
if [[ -z "${KVER:-}" ]]; then
  KVER=$(apt-cache depends "linux-image-$DEB:$DEB" | awk '/Depends: linux-image-[0-9]/{sub("linux-image-", "", $2); sub(":.*", "", $2); print $2; exit}')
fi
mkdir -p "$CACHE"
cd "$CACHE"
ls "linux-image-${KVER}_"*.deb >/dev/null 2>&1 || apt-get download -qq "linux-image-$KVER:$DEB"
if [[ ! -f "kernel-$KVER/lib/modules/$KVER/modules.dep" ]]; then
  rm -rf "kernel-$KVER"
  dpkg -x "linux-image-${KVER}_"*.deb "kernel-$KVER"
  # The package's postinst would make modules.dep; dpkg -x does not run it.
  depmod -b "kernel-$KVER" "$KVER"
fi
KDIR=$CACHE/kernel-$KVER
# mdadm for software RAID, from its Debian package (not installed on the build machine).
ls mdadm_*.deb >/dev/null 2>&1 || apt-get download -qq "mdadm:$DEB"
[[ -x mdadm/sbin/mdadm ]] || { rm -rf mdadm; dpkg -x mdadm_*.deb mdadm; }
# Another architecture: its busybox, and the libraries every program here links (glibc and
# what mdadm and multipath-tools pull in), unpacked into one tree they are found in.
if [[ -n "$CROSS" ]]; then
  ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download -qq "busybox-static:$DEB"
  [[ -x busybox/bin/busybox ]] || { rm -rf busybox; dpkg -x busybox-static_*.deb busybox; }
  SYSROOT_PKGS=(libc6 libudev1 libcap2 libaio1 libdevmapper1.02.1 libedit2 libbsd0 libmd0 libtinfo6
                libjson-c5 libsystemd0 libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1 liburcu8
                libselinux1 libpcre2-8-0)
  if [[ ! -f sysroot/.done ]]; then
    rm -rf sysroot sysroot-debs && mkdir sysroot-debs
    (cd sysroot-debs && apt-get download -qq "${SYSROOT_PKGS[@]/%/:$DEB}")
    for d in sysroot-debs/*.deb; do dpkg -x "$d" sysroot; done
    touch sysroot/.done
  fi
fi

# multipath-tools for SAN disks reached over two paths, with the libraries it needs that the
# build machine may lack (Debian's packages, unpacked into one tree; not installed here).
MPT=(multipath-tools liburcu8 libaio1 libdevmapper1.02.1)
if [[ ! -x multipath/sbin/multipathd ]]; then
  rm -rf multipath multipath-debs && mkdir multipath-debs
  (cd multipath-debs && apt-get download -qq "${MPT[@]/%/:$DEB}")
  for d in multipath-debs/*.deb; do dpkg -x "$d" multipath; done
  rm -f sysroot/.multipath
fi
# Another architecture: multipath's own libraries are found beside the others.
if [[ -n "$CROSS" && ! -f sysroot/.multipath ]]; then
  for d in multipath-debs/*.deb; do dpkg -x "$d" sysroot; done
  touch sysroot/.multipath
fi

R=$(mktemp -d)
# The root of the ramdisk, as any root: readable by users (the rescue user logs in there).
chmod 755 "$R"
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,tmp,etc,usr/bin,usr/sbin,var/log,lib/modules/"$KVER"}
if [[ -n "$CROSS" ]]; then
  cp "$CACHE/busybox/bin/busybox" "$R/bin/busybox"
  # Every program below finds its libraries in the unpacked tree (ldd cannot run it here).
  export CROSS_ROOT=$CACHE/sysroot
else
  cp /bin/busybox "$R/bin/busybox"
fi
install -m 0755 "$RIVET" "$R/usr/bin/rivet"
# mdadm with the libraries it links (glibc, libudev), at the paths its loader expects.
"$ROOT/scripts/ramdisk/copy-with-libs.sh" "$R" "$CACHE/mdadm/sbin/mdadm" /sbin/mdadm
# multipath and multipathd with their path checkers and prioritisers (loaded by name at run
# time), the libraries from the unpacked tree at their own paths; `find_multipaths yes`: a map
# only for a WWID seen on two paths, so a local disk stays a plain disk.
for p in multipath multipathd; do
  LIBTREE=$CACHE/multipath "$ROOT/scripts/ramdisk/copy-with-libs.sh" "$R" "$CACHE/multipath/sbin/$p" "/sbin/$p"
done
for so in "$CACHE"/multipath/lib/multipath/*.so; do
  LIBTREE=$CACHE/multipath "$ROOT/scripts/ramdisk/copy-with-libs.sh" "$R" "$so" "/lib/multipath/${so##*/}"
done
mkdir -p "$R/etc/multipath"
install -m 0644 "$ROOT/dib-element/rivet/static/etc/multipath.conf" "$R/etc/multipath.conf"
install -m 0755 "$ROOT/scripts/ramdisk/init.sh" "$R/init"
# RIVET_STEPS_DIR: custom steps (NAME.toml + executables), read from /etc/rivet/steps.d.
if [[ -n "${RIVET_STEPS_DIR:-}" ]]; then
  [[ -d "$RIVET_STEPS_DIR" ]] || { echo "RIVET_STEPS_DIR $RIVET_STEPS_DIR is not a directory" >&2; exit 2; }
  mkdir -p "$R/etc/rivet/steps.d"
  cp -a "$RIVET_STEPS_DIR"/. "$R/etc/rivet/steps.d/"
fi
printf 'root:x:0:0:root:/:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "$R/etc/shadow"
chmod 600 "$R/etc/shadow"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$R/etc/hosts"

# Modules, with their dependencies resolved here and loaded in order by /init. A module
# missing from this kernel (built in, or renamed) is skipped.
MODULES=(virtio_pci virtio_blk virtio_net virtio_scsi nvme ahci ata_piix sd_mod sr_mod
         usb_storage uas xhci_pci ehci_pci e1000 e1000e igb ixgbe i40e bnxt_en tg3
         vfat nls_cp437 nls_iso8859_1 nls_ascii nls_utf8 ext4 iso9660 loop efivarfs
         md_mod raid0 raid1 raid10 raid456 dm_multipath dm_service_time dm_round_robin
         dm_queue_length scsi_dh_alua scsi_dh_rdac scsi_dh_emc 8021q bonding ${EXTRA_MODULES:-})
: > "$R/etc/modules.order"
for m in "${MODULES[@]}"; do
  modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}' || true
done | awk '!seen[$0]++' | while read -r ko; do
  rel=${ko#*/lib/modules/$KVER/}
  install -D -m 0644 "$ko" "$R/lib/modules/$KVER/$rel"
  echo "/lib/modules/$KVER/$rel" >> "$R/etc/modules.order"
done

# modules.dep and modules.alias for busybox modprobe: /init loads what the machine's devices
# ask for (their modalias), not the whole list.
cp "$KDIR/lib/modules/$KVER/modules.builtin" "$KDIR/lib/modules/$KVER/modules.order" "$R/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$R" "$KVER"
cd "$R"
case "$COMPRESS" in
  none) C=(cat) ;;
  gzip) C=(gzip -6) ;;
  zstd) C=(zstd -q -10 -T0) ;;
  *) echo "COMPRESS must be gzip, zstd or none" >&2; exit 2 ;;
esac
find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | "${C[@]}" > "$OUT/rivet.initramfs"
cp "$KDIR/boot/vmlinuz-$KVER" "$OUT/rivet.kernel"
t1=$(date +%s.%N)
echo "ramdisk: $OUT/rivet.kernel ($(stat -c %s "$OUT/rivet.kernel") bytes), $OUT/rivet.initramfs ($(stat -c %s "$OUT/rivet.initramfs") bytes, $COMPRESS, $(wc -l < "$R/etc/modules.order") modules), built in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
