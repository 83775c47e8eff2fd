#!/usr/bin/env python3
"""A hostile node on the provisioning network for tests/share/swarm.sh: it announces itself
by Local Service Discovery (BEP 14) for the torrent's info hash, offers every piece, and
answers every request with corrupt bytes. It writes how many blocks it served to COUNT_FILE.

usage: rogue_peer.py TORRENT LISTEN_IP PORT COUNT_FILE
"""
import hashlib
import socket
import struct
import sys
import threading
import time


def span(b, i):
    """End index of the bencoded value starting at i."""
    c = b[i:i + 1]
    if c == b"i":
        return b.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while b[i:i + 1] != b"e":
            i = span(b, i)
        return i + 1
    colon = b.index(b":", i)
    return colon + 1 + int(b[i:colon])


def info_of(doc):
    """The raw info dictionary and its pieces string."""
    i = 1
    while doc[i:i + 1] != b"e":
        kend = span(doc, i)
        key = doc[doc.index(b":", i) + 1:kend]
        vend = span(doc, kend)
        if key == b"info":
            info = doc[kend:vend]
            j = info.index(b"6:pieces") + len(b"6:pieces")
            return info, info[j:span(info, j)]
        i = vend
    raise SystemExit("no info dictionary")


def main():
    torrent, ip, port, count_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    doc = open(torrent, "rb").read()
    info, pieces_field = info_of(doc)
    info_hash = hashlib.sha1(info).digest()
    npieces = (len(pieces_field) - pieces_field.index(b":") - 1) // 20
    served = [0]
    lock = threading.Lock()

    def announce():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        msg = ("BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: %d\r\n"
               "Infohash: %s\r\ncookie: rogue\r\n\r\n\r\n" % (port, info_hash.hex())).encode()
        while True:
            s.sendto(msg, ("239.192.152.143", 6771))
            time.sleep(1)

    def read_exact(c, n):
        out = b""
        while len(out) < n:
            chunk = c.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def serve(c):
        try:
            read_exact(c, 68)
            c.sendall(b"\x13BitTorrent protocol" + b"\0" * 8 + info_hash + b"-XX0001-roguerogue00")
            field = bytearray(b"\xff" * ((npieces + 7) // 8))
            c.sendall(struct.pack(">IB", 1 + len(field), 5) + bytes(field))
            c.sendall(struct.pack(">IB", 1, 1))
            while True:
                (n,) = struct.unpack(">I", read_exact(c, 4))
                m = read_exact(c, n) if n else b""
                if m[:1] == b"\x06":
                    idx, begin, length = struct.unpack(">III", m[1:13])
                    c.sendall(struct.pack(">IBII", 9 + length, 7, idx, begin) + b"\xa5" * length)
                    with lock:
                        served[0] += 1
                        open(count_file, "w").write("%d\n" % served[0])
        except (EOFError, OSError):
            pass
        finally:
            c.close()

    threading.Thread(target=announce, daemon=True).start()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(64)
    open(count_file, "w").write("0\n")
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


main()
