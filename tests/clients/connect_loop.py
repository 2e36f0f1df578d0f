#!/usr/bin/env python3
"""Connects, again and again, to an allowed and a denied destination, and reports how each
attempt went: the client that must never get through (or be turned away) while the daemon
restarts.

usage: connect_loop.py ALLOWED_ADDR DENIED_ADDR PORT SECONDS MAX_ROUNDS
Bounded by both SECONDS and MAX_ROUNDS; SIGTERM ends it early (it still reports). A connection "got through" when it reached the host:
it was accepted, or refused by the host (ECONNREFUSED: nothing listens on PORT, which makes the
loop fast, thousands of rounds a second). Anything else (EPERM from ram's gate) did not.
Prints one JSON line at the end:
{"rounds": n, "allowed_ok": n, "allowed_failed": {errno: n}, "denied_ok": n,
 "denied_refused": {errno: n}, "first_allowed_failure_ms": ms|null}
"""
import errno
import json
import signal
import socket
import sys
import time

stopping = False


def stop(_signum, _frame):
    global stopping
    stopping = True


def attempt(addr, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((addr, port))
            return "ok"
        except ConnectionRefusedError:
            return "ok"
        except socket.timeout:
            return "timeout"
        except OSError as err:
            return errno.errorcode.get(err.errno, str(err.errno))


def main():
    allowed, denied, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds, max_rounds = float(sys.argv[4]), int(sys.argv[5])
    report = {"rounds": 0, "allowed_ok": 0, "allowed_failed": {}, "denied_ok": 0,
              "denied_refused": {}, "first_allowed_failure_ms": None}
    signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    while (not stopping and report["rounds"] < max_rounds
           and time.monotonic() - start < seconds):
        report["rounds"] += 1
        got = attempt(allowed, port)
        if got == "ok":
            report["allowed_ok"] += 1
        else:
            report["allowed_failed"][got] = report["allowed_failed"].get(got, 0) + 1
            if report["first_allowed_failure_ms"] is None:
                report["first_allowed_failure_ms"] = (time.monotonic() - start) * 1000
        got = attempt(denied, port)
        if got == "ok":
            report["denied_ok"] += 1
        else:
            report["denied_refused"][got] = report["denied_refused"].get(got, 0) + 1
    print(json.dumps(report), flush=True)


main()
