#!/usr/bin/env python3
"""Sends COUNT UDP datagrams to ADDR:PORT as fast as it can (each one a decision for the gates),
to fill ram's audit ring buffer. Prints {"sent": n, "refused": n}.

usage: flood.py ADDR PORT COUNT
"""
import json
import socket
import sys

addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sent = refused = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(count):
        try:
            s.sendto(b"x", (addr, port))
            sent += 1
        except PermissionError:
            refused += 1
print(json.dumps({"sent": sent, "refused": refused}), flush=True)
