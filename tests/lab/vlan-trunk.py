#!/usr/bin/env python3
"""A switch port that carries the provisioning network tagged and nothing untagged.

usage: vlan-trunk.py TRUNK ACCESS VID LLDP_HEX_FILE

TRUNK is the node's tap (its NIC's wire); ACCESS is a veth end whose peer is on the lab's
bridge. Frames from the bridge go to the node tagged with VID; frames from the node tagged VID
go to the bridge untagged; anything else the node sends (untagged, other VLANs) is dropped.
Every second the port also sends the node the switch's LLDP frame (LLDP_HEX_FILE, which names
VID in an 802.1 VLAN Name TLV), as a top-of-rack switch does.

This machine's kernel has neither 802.1Q nor bridge VLAN filtering, so the tagging is done
here, in user space, with packet sockets: the kernel strips a received tag into the packet's
metadata (PACKET_AUXDATA), which is where it is read back from.
"""
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 1 << 4
AUX = struct.Struct("IIIHHHH")  # struct tpacket_auxdata


def open_port(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((name, 0))
    s.setblocking(False)
    return s


def receive(s):
    """(frame, vlan id or None), or None for our own outgoing frames."""
    data, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(AUX.size))
    if addr[2] == PACKET_OUTGOING:
        return None
    vid = None
    for level, kind, payload in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= AUX.size:
            status, _l, _s, _m, _n, tci, _tpid = AUX.unpack(payload[: AUX.size])
            if status & TP_STATUS_VLAN_VALID:
                vid = tci & 0x0FFF
    # A tag the kernel left in the frame (no offload on this path).
    if vid is None and len(data) >= 18 and data[12:14] == b"\x81\x00":
        vid = struct.unpack("!H", data[14:16])[0] & 0x0FFF
        data = data[:12] + data[16:]
    return data, vid


def send(s, frame):
    try:
        s.send(frame)
    except OSError:
        pass  # the node is off (its tap has no reader): the frame is lost, as on a wire


def main():
    trunk_name, access_name, vid, lldp_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    hexed = "".join(l for l in open(lldp_file).read().splitlines() if not l.startswith("#"))
    lldp = bytes.fromhex(hexed.strip())
    trunk, access = open_port(trunk_name), open_port(access_name)
    tag = struct.pack("!HH", 0x8100, vid)
    next_lldp = 0.0
    while True:
        now = time.monotonic()
        if now >= next_lldp:
            send(trunk, lldp)
            next_lldp = now + 1.0
        ready, _, _ = select.select([trunk, access], [], [], max(0.0, next_lldp - now))
        for s in ready:
            while True:
                try:
                    got = receive(s)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if got is None:
                    continue
                frame, fvid = got
                if s is access:
                    send(trunk, frame[:12] + tag + frame[12:])
                elif fvid == vid:
                    send(access, frame)


if __name__ == "__main__":
    main()
