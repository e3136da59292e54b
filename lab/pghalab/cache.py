"""Per-machine cache: the base image, the wheelhouse, and pgha built as a wheel of this checkout.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .settings import BUILD_SCRIPT, CACHE, PGHA_SOURCES, REPO_DIR, WHEEL_REQUIREMENTS
from .common import Timer, die, log, remove_tree, run, sha256_of
from .record import Locked


def ensure_image():
    """The base root filesystem, built once per version of build-image.sh."""
    key = sha256_of(BUILD_SCRIPT)[:16]
    image = CACHE / "images" / key
    if (image / "rootfs" / "etc" / "pgha-lab-image").exists():
        return image / "rootfs"
    with Locked(CACHE / "images" / ".lock"):
        if (image / "rootfs" / "etc" / "pgha-lab-image").exists():
            return image / "rootfs"
        t = Timer()
        log(f"building base image {key} (debootstrap, about a minute)")
        tmp = CACHE / "images" / f".build-{key}-{os.getpid()}"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        try:
            with open(CACHE / "images" / f"build-{key}.log", "w") as logf:
                run(BUILD_SCRIPT, tmp / "rootfs", stdout=logf, stderr=subprocess.STDOUT)
        except subprocess.CalledProcessError:
            remove_tree(tmp)
            die(f"image build failed, see {CACHE}/images/build-{key}.log")
        tmp.rename(image)
        log(f"base image built in {t}: {image}/rootfs")
    return image / "rootfs"


def ensure_wheelhouse():
    """Wheels for one resolution of wheelhouse.txt (no sdists: hosts never compile).

    Rebuilt from scratch when the list changes, so it never offers two versions
    of a package and a pin in the list is a pin on the hosts.
    """
    wheels = CACHE / "wheels"
    stamp = CACHE / "wheels.sha256"
    key = sha256_of(WHEEL_REQUIREMENTS)
    if stamp.exists() and stamp.read_text().strip() == key:
        return wheels
    with Locked(CACHE / "wheels.lock"):
        if stamp.exists() and stamp.read_text().strip() == key:
            return wheels
        t = Timer()
        log("building the wheelhouse (pip wheel, Debian's python3)")
        new = CACHE / "wheels.new"
        remove_tree(new)
        with open(CACHE / "wheels.log", "w") as logf:
            r = run("/usr/bin/python3", "-m", "pip", "wheel", "--wheel-dir", new,
                    "-r", WHEEL_REQUIREMENTS, check=False, stdout=logf, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            die(f"pip wheel failed, see {CACHE}/wheels.log")
        remove_tree(wheels)
        new.rename(wheels)
        stamp.write_text(key + "\n")
        log(f"wheelhouse ready in {t}: {wheels}")
    return wheels


def pgha_wheel():
    """pgha built as a wheel from this checkout (cached by a digest of its sources): the lab
    installs pgha with pip, as a deployment does, never by copying code into Airflow's folders.
    Built from a copy of the sources, so no build/ of an earlier build leaks into it."""
    digest = hashlib.sha256()
    for top in PGHA_SOURCES:
        src = REPO_DIR / top
        for path in sorted([src] if src.is_file() else src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                digest.update(str(path.relative_to(REPO_DIR)).encode() + b"\0" + path.read_bytes())
    out = CACHE / "pgha-wheel" / digest.hexdigest()[:16]
    found = sorted(out.glob("pgha-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="pgha-wheel-") as tmp:
        tree = Path(tmp) / "src"
        for top in PGHA_SOURCES:
            src = REPO_DIR / top
            if src.is_file():
                tree.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tree / top)
            else:
                shutil.copytree(src, tree / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        built = Path(tmp) / "dist"
        r = run("/usr/bin/python3", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "--wheel-dir", built, tree, check=False, capture=True)
        if r.returncode != 0:
            die(f"building the pgha wheel failed: {r.stderr[-2000:]}")
        out.mkdir(parents=True, exist_ok=True)
        wheel = next(built.glob("pgha-*.whl"))
        shutil.copy2(wheel, out / wheel.name)
    return out / wheel.name
