#!/usr/bin/env python3
"""A minimal DNS client for ram's tests, printing one JSON line.

usage: dns_query.py RESOLVER NAME [A|AAAA] [--tcp] [--connect PORT] [--accept-any-id]
  Sends one query (UDP, or TCP with --tcp) and reports the addresses in the answer; with
  --connect, then connects at once to the first address (the "resolve, connect at once" of
  real clients). --accept-any-id takes the first reply even if its transaction id differs
  (as a careless client would), to show that such a reply teaches ram nothing.
  --race N: N trials of resolving a never-seen name (NAME is a template with {a} {b}) and
  connecting at once; a connection refused by the host (ECONNREFUSED) counts as let through.

Output: {"addrs": [...], "connect": "ok" | errno name | null, "error": ...}
"""
import errno
import json
import random
import socket
import struct
import sys


def build_query(txid, name, qtype):
    header = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack("!HH", {"A": 1, "AAAA": 28}[qtype], 1)


def skip_name(msg, pos):
    while True:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def addresses(msg):
    ancount = struct.unpack("!H", msg[6:8])[0]
    pos = skip_name(msg, 12) + 4
    out = []
    for _ in range(ancount):
        pos = skip_name(msg, pos)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
        rdata = msg[pos + 10 : pos + 10 + rdlen]
        if rtype == 1:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
        pos += 10 + rdlen
    return out


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def query(resolver, name, qtype, tcp=False, accept_any_id=False):
    txid = random.randrange(65536)
    msg = build_query(txid, name, qtype)
    if tcp:
        with socket.create_connection((resolver, 53), timeout=3) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = s.recv(65535)
                if not chunk:
                    break
                data += chunk
            reply = data[2:]
    else:
        with socket.socket(family(resolver), socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(msg, (resolver, 53))
            while True:
                reply, _ = s.recvfrom(4096)
                if accept_any_id or reply[:2] == msg[:2]:
                    break
    return addresses(reply)


def connect(addr, port):
    try:
        with socket.socket(family(addr), socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((addr, port))
        return "ok"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))


def main():
    args = sys.argv[1:]
    resolver, name = args[0], args[1]
    qtype = args[2] if len(args) > 2 and args[2] in ("A", "AAAA") else "A"
    tcp = "--tcp" in args
    port = int(args[args.index("--connect") + 1]) if "--connect" in args else None
    if "--race" in args:
        # name is a template with {a} {b}: e.g. 198-18-{a}-{b}.race.test
        trials = int(args[args.index("--race") + 1])
        denied, failed = [], 0
        for i in range(trials):
            a, b = divmod(i, 250)
            target = name.format(a=a, b=b + 1)
            try:
                addrs = query(resolver, target, qtype)
            except OSError:
                failed += 1
                continue
            result = connect(addrs[0], port)
            # ECONNREFUSED: the host answered (nothing listens on the port), so the gate let
            # the connection through; the test uses such a port to run fast.
            if result not in ("ok", "ECONNREFUSED"):
                denied.append([target, result])
        print(json.dumps({"trials": trials, "denied": denied[:20], "denied_count": len(denied),
                          "lookup_failures": failed}))
        return
    out = {"addrs": [], "connect": None, "error": None}
    try:
        out["addrs"] = query(resolver, name, qtype, tcp, "--accept-any-id" in args)
    except (OSError, socket.timeout) as err:
        out["error"] = errno.errorcode.get(getattr(err, "errno", None) or 0, str(err))
    if port is not None and out["addrs"]:
        out["connect"] = connect(out["addrs"][0], port)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
