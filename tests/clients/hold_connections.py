"""Holds COUNT idle TCP connections to HOST PORT until stdin closes; prints how many the server
kept open (the others it closed at once), once they have had time to close. Run as another
user (setpriv) to test a server's per-user share."""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    held.append(s)
time.sleep(1)
open_ones = 0
for s in held:
    s.setblocking(False)
    try:
        if s.recv(1):
            open_ones += 1
    except BlockingIOError:
        open_ones += 1
    except OSError:
        pass
print("open", open_ones, flush=True)
sys.stdin.read()
