#!/usr/bin/env python3
"""UDP echo server for ram's tests: usage udp_echo.py PORT. Dual-stack, runs until killed."""
import socket
import sys

s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
