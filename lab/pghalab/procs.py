"""Processes: remembered by pid + kernel start time, so a recycled pid is never
mistaken for ours.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def proc_start(pid, zombies=False):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z" and not zombies:  # dead, only not reaped yet
        return None
    return int(fields[19])


def proc_ref(pid):
    return {"pid": pid, "start": proc_start(pid)}


def alive(ref):
    return bool(ref) and ref.get("start") is not None and proc_start(ref["pid"]) == ref["start"]


def signal_proc(ref, sig):
    if alive(ref):
        try:
            os.kill(ref["pid"], sig)
        except ProcessLookupError:
            pass


def wait_gone(refs, timeout):
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in refs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_reaped(refs, timeout=5):
    """Our processes are reparented to this machine's PID 1, which reaps them
    lazily: wait a little so that `ps` right after `down` shows no zombie."""
    deadline = time.monotonic() + timeout
    refs = [r for r in refs if r and r.get("start") is not None]
    while any(proc_start(r["pid"], zombies=True) == r["start"] for r in refs):
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def spawn(argv, logfile):
    """Start a background process in its own session; return its record."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as logf:
        p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    ref = proc_ref(p.pid)
    ref["cmd"] = Path(str(argv[0])).name
    return ref


def stop_proc(ref, timeout=10):
    signal_proc(ref, signal.SIGTERM)
    if not wait_gone([ref], timeout):
        signal_proc(ref, signal.SIGKILL)
        wait_gone([ref], 5)


def port_open(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_port(host, port, timeout=20):
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
