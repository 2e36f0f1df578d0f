#!/usr/bin/env python3
"""N HTTPS requests, each on a new connection with a full TLS handshake (the ssl module:
OpenSSL), to ADDR:PORT by the server name NAME, trusting CA. Prints nanoseconds per request.

usage: tls_requests.py ADDR PORT NAME CA N
"""
import socket
import ssl
import sys
import time

addr, port, name, ca, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
context = ssl.create_default_context(cafile=ca)
request = b"GET / HTTP/1.0\r\nHost: " + name.encode() + b"\r\n\r\n"
start = time.perf_counter_ns()
for _ in range(count):
    with socket.create_connection((addr, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(request)
            while tls.recv(4096):
                pass
print((time.perf_counter_ns() - start) // count)
