#!/usr/bin/env python3
"""Detaches the bpf_link pinned at PATH (BPF_LINK_DETACH), as `bpftool link detach` would: what
an intruder or a careless operator might do to a running ram. Prints {"detached": true} or the
error.

usage: link_detach.py PATH
"""
import ctypes
import json
import os
import sys

SYS_BPF = 321  # x86_64
BPF_OBJ_GET = 7
BPF_LINK_DETACH = 34

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    rc = libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return rc


class ObjGet(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("pad", ctypes.c_uint64 * 2)]


class LinkDetach(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32 * 7)]


path = ctypes.create_string_buffer(sys.argv[1].encode())
try:
    fd = bpf(BPF_OBJ_GET, ObjGet(pathname=ctypes.addressof(path)))
    bpf(BPF_LINK_DETACH, LinkDetach(link_fd=fd))
    os.close(fd)
    print(json.dumps({"detached": True}))
except OSError as err:
    print(json.dumps({"detached": False, "error": str(err)}))
    sys.exit(1)
