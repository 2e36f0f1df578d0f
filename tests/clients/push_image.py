#!/usr/bin/env python3
"""Pushes a one-layer image to a registry over the distribution API (what `docker push` sends):
the layer blob, the config blob, then the image manifest (Docker schema 2).

usage: push_image.py REGISTRY_URL NAME:TAG [--file PATH CONTENT] [--random-bytes N]

The layer is a gzip'd tar holding one file (PATH with CONTENT), or a random file of N bytes
(for throughput benchmarks; gzip level 0 so it stays N bytes). Prints JSON: the manifest's
digest and the layer's digest and size.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.status, response.headers, response.read()


def upload_blob(registry, name, blob):
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _, headers, _ = request("POST", f"{registry}/v2/{name}/blobs/uploads/")
    location = headers["Location"]
    if location.startswith("/"):
        location = registry + location
    separator = "&" if "?" in location else "?"
    request(
        "PUT",
        f"{location}{separator}digest={digest}",
        data=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    return digest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("registry")
    parser.add_argument("reference")
    parser.add_argument("--file", nargs=2, default=["hello.txt", "hello\n"])
    parser.add_argument("--random-bytes", type=int, default=0)
    args = parser.parse_args()
    name, tag = args.reference.rsplit(":", 1)

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        path, content = args.file
        data = os.urandom(args.random_bytes) if args.random_bytes else content.encode()
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    uncompressed = tar_bytes.getvalue()
    layer = gzip.compress(uncompressed, compresslevel=0 if args.random_bytes else 6, mtime=0)
    layer_digest = upload_blob(args.registry, name, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()],
            },
        }
    ).encode()
    config_digest = upload_blob(args.registry, name, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": layer_digest,
                }
            ],
        }
    ).encode()
    request(
        "PUT",
        f"{args.registry}/v2/{name}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    print(
        json.dumps(
            {
                "manifest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                "layer": layer_digest,
                "layer_size": len(layer),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
