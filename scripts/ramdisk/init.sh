#!/bin/busybox sh
# PID 1 of the minimal Rivet ramdisk (scripts/build-initramfs.sh): mount the pseudo file
# systems, load the deploy modules, configure every NIC by DHCP, then keep the agent running
# (as systemd's Restart=always would). The agent powers the machine off or reboots it itself.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s
exec </dev/console >/dev/console 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
echo "[rivet-init] kernel up at $(up) s"
# Drivers for the devices present (PCI, USB, virtio, … by modalias), then what the agent
# itself may need whatever the hardware.
for a in $(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u); do modprobe -q "$a" 2>/dev/null; done
for m in sd_mod sr_mod vfat nls_cp437 nls_iso8859_1 nls_ascii nls_utf8 ext4 iso9660 loop efivarfs; do modprobe -q "$m" 2>/dev/null; done
# Disks behind controllers probed just now (virtio, NVMe) appear as their modules load;
# devices found later by the kernel get theirs here too.
for a in $(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u); do modprobe -q "$a" 2>/dev/null; done
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
echo "[rivet-init] modules loaded at $(up) s; disks: $(ls /sys/block | tr '\n' ' ')"
ip link set lo up
for n in /sys/class/net/*; do
  i=${n##*/}
  [ "$i" = lo ] && continue
  ip link set "$i" up
  udhcpc -i "$i" -n -q -t 10 -T 1 -s /etc/udhcpc.sh >/dev/null 2>&1 &
done
wait
echo "[rivet-init] network up at $(up) s: $(ip -4 -o addr show | awk '$2!="lo"{print $2, $4}' | tr '\n' ' ')"
# Test plumbing only (QEMU user networking, where the conductor and image server listen on
# the host's 127.0.0.1): rivet.forward=PORT,PORT makes 127.0.0.1:PORT here reach the host
# through QEMU's guestfwd alias 10.0.2.100:PORT.
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    rivet.forward=*)
      for p in $(echo "${arg#rivet.forward=}" | tr ',' ' '); do
        nc -ll -p "$p" -e nc 10.0.2.100 "$p" &
      done ;;
  esac
done
(
  while :; do
    echo "[rivet-init] starting rivet at $(up) s"
    /usr/bin/rivet --state-dir /run/rivet
    echo "[rivet-init] rivet exited ($?); again in 5 s"
    sleep 5
  done
) &
while :; do wait; sleep 1; done
