"""The record (STATE/run.json: what this lab started), the lock that serialises changes to it,
and the lab's generated secrets (STATE/secrets.json).
"""

import fcntl
import json
import os
from pathlib import Path

from .settings import RECORD, SECRETS
from .common import die


def load_record():
    if RECORD.exists():
        return json.loads(RECORD.read_text())
    return {"hosts": {}, "procs": {}}


def save_record(rec):
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    tmp.replace(RECORD)


class Locked:
    """Exclusive lock on a file for the duration of a `with` block."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def load_secrets():
    return json.loads(SECRETS.read_text()) if SECRETS.exists() else {}


def require_up(rec):
    if not rec.get("image") or not rec.get("bridge"):
        die("the lab is not up: run `lab/lab up` first")
