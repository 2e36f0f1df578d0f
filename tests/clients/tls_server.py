#!/usr/bin/env python3
"""A TLS server for several names on one address (a shared front end), logging what arrives.

usage: tls_server.py ADDR PORT CERT KEY LOG

Each connection is logged, one line each, so that a test can prove what reached the far side:
  accepted PEER
  received N        bytes waiting within 3 s of the accept (0: the client closed, nothing sent)
  name NAME         the server name of a hello that completed the handshake ("-" for none)
  failed ERROR      the handshake failed (e.g. a hand-made hello)
A completed handshake is answered `HTTP/1.0 200 OK` with the body `hello NAME`.
"""
import socket
import ssl
import sys
import threading

addr, port, cert, key, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
lock = threading.Lock()


def log(line):
    with lock, open(log_path, "a") as f:
        f.write(line + "\n")


def serve(conn, peer):
    log(f"accepted {peer[0]}:{peer[1]}")
    conn.settimeout(3)
    try:
        waiting = conn.recv(65536, socket.MSG_PEEK)
        log(f"received {len(waiting)}")
    except socket.timeout:
        log("received none")
        conn.close()
        return
    except OSError as e:
        log(f"received error {e}")
        conn.close()
        return
    if not waiting:
        conn.close()
        return
    names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name or "-")
    try:
        tls = context.wrap_socket(conn, server_side=True)
        log(f"name {names[0] if names else '-'}")
        tls.recv(4096)
        body = f"hello {names[0] if names else '-'}\n".encode()
        tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        tls.close()
    except (ssl.SSLError, OSError) as e:
        log(f"failed {type(e).__name__}")
        conn.close()


listener = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((addr, port))
listener.listen(64)
while True:
    conn, peer = listener.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
