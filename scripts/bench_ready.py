#!/usr/bin/env python3
"""Start-up time to READY=1 and idle RSS of `balance-alertd run`, for scripts/bench.sh.

usage: bench_ready.py BIN CONFIG   -> prints "READY_MS IDLE_RSS_MB"
Binds a NOTIFY_SOCKET like systemd, starts the daemon, times READY=1, lets it idle for 2 s,
reads VmRSS from /proc, then stops it with SIGTERM.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

binary, config = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    start = time.monotonic()
    proc = subprocess.Popen([binary, "-c", config, "run"], env=env, stdout=subprocess.DEVNULL)
    while b"READY=1" not in sock.recv(4096):
        pass
    ready_ms = (time.monotonic() - start) * 1000
    time.sleep(2)
    with open(f"/proc/{proc.pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    print(f"{ready_ms:.0f} {rss_kb / 1024:.1f}")
