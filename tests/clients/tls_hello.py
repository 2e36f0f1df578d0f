#!/usr/bin/env python3
"""Sends hand-made first bytes on a TCP connection, as clients ram must judge would.

usage: tls_hello.py ADDR PORT KIND [NAME]
  big    a ClientHello larger than one segment: GREASE, a 1,250-byte key share (post-quantum
         sized), a padding extension, and the server name NAME last; sent in one write
  split  the same hello in two writes 200 ms apart (the first 60 bytes, then the rest)
  nosni  a ClientHello without a server name
  plain  an HTTP request (not TLS)
  ech    the `big` hello with an Encrypted ClientHello extension (its name is the outer one)
  oddversion  the `big` hello with record version bytes 0x00 0x01 (some servers read any)
  fastopen  the `big` hello with sendto(MSG_FASTOPEN) (TCP Fast Open: the data is queued
         before the connection is established), then, on the same socket, the same hello again
  queued the `big` hello naming NAME queued before the connection is established and held
         back (MSG_FASTOPEN | MSG_MORE), then a hello naming registry.test, which the send
         check sees first and allows; both leave together, NAME's first

Output: {"result": "ok" | errno name, "ms": milliseconds from the first write to its outcome}
"""
import errno
import json
import signal
import socket
import struct
import sys
import time


def extension(kind, data):
    return struct.pack("!HH", kind, len(data)) + data


def server_name(name):
    host = name.encode()
    entry = b"\x00" + struct.pack("!H", len(host)) + host
    return extension(0, struct.pack("!H", len(entry)) + entry)


def hello(name, ech=False):
    body = b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32)
    suites = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F]
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
    body += b"\x01\x00"
    exts = extension(0x0A0A, b"")  # GREASE
    exts += extension(43, b"\x02\x03\x04")  # supported_versions: TLS 1.3
    exts += extension(10, b"\x00\x04\x11\xec\x00\x1d")  # groups: X25519MLKEM768, x25519
    share = struct.pack("!HH", 0x11EC, 1216) + bytes(1216) + struct.pack("!HH", 0x1D, 32) + bytes(32)
    exts += extension(51, struct.pack("!H", len(share)) + share)  # key_share
    exts += extension(21, bytes(200))  # padding
    if name:
        exts += server_name(name)
    if ech:
        exts += extension(0xFE0D, bytes(90))
    body += struct.pack("!H", len(exts)) + exts
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def main():
    addr, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    name = sys.argv[4] if len(sys.argv) > 4 else ""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    if kind in ("fastopen", "queued"):
        # Data queued before the connection is established, then a second send on the same
        # socket: the same hello (fastopen), or one naming registry.test held back behind it
        # (queued, MSG_MORE). Blocking: a timeout would make the send return EINPROGRESS.
        s.settimeout(None)
        signal.alarm(10)
        flags = socket.MSG_FASTOPEN | (socket.MSG_MORE if kind == "queued" else 0)
        second = hello("registry.test" if kind == "queued" else name)
        start = time.monotonic()
        result = "ok"
        try:
            s.sendto(hello(name), flags, (addr, port))
            time.sleep(0.3)
            s.sendall(second)
        except OSError as e:
            result = errno.errorcode.get(e.errno, str(e))
        print(json.dumps({"result": result, "ms": round((time.monotonic() - start) * 1000, 1)}))
        time.sleep(0.5)
        return
    s.connect((addr, port))
    if kind == "plain":
        writes = [b"GET / HTTP/1.0\r\nHost: " + name.encode() + b"\r\n\r\n"]
    elif kind == "nosni":
        writes = [hello("")]
    elif kind == "ech":
        writes = [hello(name, ech=True)]
    elif kind == "oddversion":
        data = hello(name)
        writes = [data[:1] + b"\x00\x01" + data[3:]]
    elif kind == "split":
        data = hello(name)
        writes = [data[:60], data[60:]]
    else:
        writes = [hello(name)]
    start = time.monotonic()
    result = "ok"
    try:
        for i, data in enumerate(writes):
            if i:
                time.sleep(0.2)
            s.sendall(data)
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e))
    ms = (time.monotonic() - start) * 1000
    time.sleep(0.3)
    s.close()
    print(json.dumps({"result": result, "ms": round(ms, 1), "bytes": sum(map(len, writes))}))


main()
