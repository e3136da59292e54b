"""Small helpers of every module: logging, subprocesses, timing, files, mounts.
"""

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def log(msg):
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def run(*argv, check=True, capture=False, **kw):
    if capture:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run([str(a) for a in argv], check=check, text=True, **kw)


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Timer:
    def __init__(self):
        self.t0 = time.monotonic()

    def __str__(self):
        return f"{time.monotonic() - self.t0:.1f}s"


def write_private(path, text):
    """A 0600 file, written atomically (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def parallel(fn, names):
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(fn, names)))


def mounts_under(path):
    """Mount points at or below `path`, deepest first."""
    path = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == path or point.startswith(path + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def rmdir_quiet(path):
    """rmdir, if it is empty (and exists)."""
    try:
        Path(path).rmdir()
    except OSError:
        pass


def remove_tree(path):
    """rm -rf that never descends into a mount (unmounts them first)."""
    for point in mounts_under(path):
        run("umount", "-l", point, check=False)
    shutil.rmtree(path, ignore_errors=True)


def is_mounted(path):
    return str(path) in mounts_under(path)
