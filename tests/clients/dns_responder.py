#!/usr/bin/env python3
"""A scriptable DNS server for ram's tests: answers the way a test needs, including the ways a
hostile or broken server would. usage: dns_responder.py CONFIG.json

CONFIG: {"listen": ["198.51.100.2", "2001:db8:100::2"], "port": 53,
         "names": {"reg.test": {"records": [[owner, type, ttl, value], ...],
                                "txid_delta": 0, "silent": false}}}
A record's owner "@" means the question name (sent as a compression pointer). Types: A, AAAA,
CNAME. Unknown names get NXDOMAIN. Serves UDP and TCP on every listen address; runs until
killed.
"""
import json
import socket
import struct
import sys
import threading

TYPES = {"A": 1, "CNAME": 5, "AAAA": 28}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def parse_question(msg):
    pos, labels = 12, []
    while msg[pos] != 0:
        length = msg[pos]
        labels.append(msg[pos + 1 : pos + 1 + length].decode())
        pos += 1 + length
    qtype, qclass = struct.unpack("!HH", msg[pos + 1 : pos + 5])
    return ".".join(labels), qtype, msg[12 : pos + 5]


def answer(config, query):
    txid = struct.unpack("!H", query[:2])[0]
    qname, qtype, question = parse_question(query)
    entry = config["names"].get(qname.lower())
    if entry is None:
        return struct.pack("!HHHHHH", txid, 0x8183, 1, 0, 0, 0) + question
    if entry.get("silent"):
        return None
    txid = (txid + entry.get("txid_delta", 0)) & 0xFFFF
    records = b""
    count = 0
    for owner, rtype, ttl, value in entry["records"]:
        owner_bytes = b"\xc0\x0c" if owner == "@" else encode_name(owner)
        if rtype == "A":
            rdata = socket.inet_pton(socket.AF_INET, value)
        elif rtype == "AAAA":
            rdata = socket.inet_pton(socket.AF_INET6, value)
        else:
            rdata = encode_name(value)
        records += owner_bytes + struct.pack("!HHIH", TYPES[rtype], 1, ttl, len(rdata)) + rdata
        count += 1
    return struct.pack("!HHHHHH", txid, 0x8180, 1, count, 0, 0) + question + records


def serve_udp(config, sock):
    while True:
        query, peer = sock.recvfrom(4096)
        reply = answer(config, query)
        if reply is not None:
            sock.sendto(reply, peer)


def serve_tcp_client(config, conn):
    with conn:
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                length = struct.unpack("!H", data[:2])[0]
                query, data = data[2 : 2 + length], data[2 + length :]
                reply = answer(config, query)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)


def serve_tcp(config, sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(config, conn), daemon=True).start()


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    config["names"] = {k.lower().rstrip("."): v for k, v in config["names"].items()}
    threads = []
    for addr in config["listen"]:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((addr, config.get("port", 53)))
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((addr, config.get("port", 53)))
        tcp.listen(64)
        threads.append(threading.Thread(target=serve_udp, args=(config, udp), daemon=True))
        threads.append(threading.Thread(target=serve_tcp, args=(config, tcp), daemon=True))
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
