#!/usr/bin/env python3
"""A registry front that behaves as Docker Hub does towards a client: token authentication and
layers served from another host (a CDN). For tests of ram's pull gate, which must pass both on.

usage: token_registry.py REGISTRY_ADDR:PORT TOKEN_ADDR:PORT CDN_ADDR:PORT

- REGISTRY: /v2/... without `Authorization: Bearer good-token` answers 401 with a Bearer
  challenge naming the token service; with it, manifests answer a fixed JSON and blobs answer
  307 to the CDN.
- TOKEN: /token answers {"token": "good-token"} to Basic user:secret (GET or POST), 401 else.
- CDN: answers a blob's bytes, which say whether the request carried credentials (it must
  not: they are the registry's).
Runs until killed.
"""
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "good-token"
BASIC = "Basic " + base64.b64encode(b"user:secret").decode()


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main():
    registry, token, cdn = (addr(a) for a in sys.argv[1:4])

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body=b"", headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    class Registry(Quiet):
        def do_GET(self):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                realm = f"http://{token[0]}:{token[1]}/token"
                challenge = f'Bearer realm="{realm}",service="test-hub",scope="repository:x:pull"'
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]})
                return self.answer(401, body.encode(), [("WWW-Authenticate", challenge)])
            if self.path == "/v2/":
                return self.answer(200, b"{}")
            if "/blobs/" in self.path:
                location = f"http://{cdn[0]}:{cdn[1]}/cdn{self.path}"
                return self.answer(307, b"", [("Location", location)])
            body = json.dumps({"schemaVersion": 2, "path": self.path}).encode()
            return self.answer(200, body, [("Content-Type", "application/json")])

        do_HEAD = do_GET

    class Token(Quiet):
        def do_GET(self):
            if self.headers.get("Authorization") != BASIC:
                return self.answer(401, b"{}")
            body = json.dumps({"token": TOKEN, "query": self.path}).encode()
            return self.answer(200, body, [("Content-Type", "application/json")])

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            return self.do_GET()

    class Cdn(Quiet):
        def do_GET(self):
            saw = "yes" if self.headers.get("Authorization") else "no"
            body = f"layer bytes from the CDN; authorization: {saw}\n".encode()
            return self.answer(200, body, [("Content-Type", "application/octet-stream")])

    servers = [
        ThreadingHTTPServer(registry, Registry),
        ThreadingHTTPServer(token, Token),
        ThreadingHTTPServer(cdn, Cdn),
    ]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    sys.exit(main())
