#!/usr/bin/env python3
"""One socket operation, reported as a JSON line: what ram's integration tests run as a real
client inside (or outside) an enforced cgroup.

usage: probe.py OP ADDR PORT
  tcp-connect   TCP connect(), then close
  tcp-http      TCP connect(), send a GET, read the status line
  tcp-fastopen  sendto(MSG_FASTOPEN) on a TCP socket (TCP Fast Open)
  udp-sendto    sendto() on an unconnected UDP socket
  udp-connect   connect() on a UDP socket
  udp-echo      sendto() and wait up to 2 s for the echo
ADDR decides the family: an address with ':' uses AF_INET6 (e.g. ::ffff:198.51.100.3).

Output: {"result": "ok" | errno name | "timeout", "ms": elapsed milliseconds, "detail": ...}
"""
import errno
import json
import signal
import socket
import sys
import time


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def run(op, addr, port):
    af = family(addr)
    if op == "tcp-connect":
        with socket.socket(af, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((addr, port))
        return None
    if op == "tcp-http":
        with socket.socket(af, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((addr, port))
            s.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            return s.recv(64).split(b"\r\n")[0].decode(errors="replace")
    if op == "tcp-fastopen":
        # Blocking socket (a Python timeout makes it non-blocking, and a non-blocking TFO send
        # returns EINPROGRESS); SIGALRM bounds the wait instead.
        signal.alarm(5)
        with socket.socket(af, socket.SOCK_STREAM) as s:
            s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, (addr, port))
            return s.recv(64).split(b"\r\n")[0].decode(errors="replace")
    if op == "udp-sendto":
        with socket.socket(af, socket.SOCK_DGRAM) as s:
            s.sendto(b"probe", (addr, port))
        return None
    if op == "udp-connect":
        with socket.socket(af, socket.SOCK_DGRAM) as s:
            s.connect((addr, port))
        return None
    if op == "udp-echo":
        with socket.socket(af, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(b"probe", (addr, port))
            data, _ = s.recvfrom(64)
            return data.decode(errors="replace")
    raise SystemExit(f"unknown operation {op}")


def on_alarm(signum, frame):
    raise TimeoutError()


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    op, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.monotonic()
    try:
        detail = run(op, addr, port)
        result = "ok"
    except (socket.timeout, TimeoutError):
        detail, result = None, "timeout"
    except OSError as err:
        detail = str(err)
        result = errno.errorcode.get(err.errno, str(err.errno))
    elapsed = (time.monotonic() - start) * 1000
    print(json.dumps({"result": result, "ms": elapsed, "detail": detail}))


if __name__ == "__main__":
    main()
