"""Per-machine cache: the base image, the wheelhouse, and pgha built as a wheel of this checkout.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .settings import BUILD_SCRIPT, CACHE, PGHA_SOURCES, REPO_DIR, WHEEL_REQUIREMENTS
from .topology import AIRFLOW_RELEASE, AIRFLOW_RELEASE_PINS
from .common import Timer, die, log, remove_tree, run, sha256_of
from .record import Locked


def image_name(suite="bookworm"):
    """The cache key of a base image: build-image.sh's hash, and the Debian release unless bookworm."""
    key = sha256_of(BUILD_SCRIPT)[:16]
    return key if suite == "bookworm" else f"{key}-{suite}"


def ensure_image(suite="bookworm"):
    """The base root filesystem of one Debian release, built once per version of build-image.sh."""
    key = image_name(suite)
    image = CACHE / "images" / key
    if (image / "rootfs" / "etc" / "pgha-lab-image").exists():
        return image / "rootfs"
    with Locked(CACHE / "images" / ".lock"):
        if (image / "rootfs" / "etc" / "pgha-lab-image").exists():
            return image / "rootfs"
        t = Timer()
        log(f"building base image {key} (debootstrap {suite}, about a minute)")
        tmp = CACHE / "images" / f".build-{key}-{os.getpid()}"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        try:
            with open(CACHE / "images" / f"build-{key}.log", "w") as logf:
                run(BUILD_SCRIPT, tmp / "rootfs", suite, stdout=logf, stderr=subprocess.STDOUT)
        except subprocess.CalledProcessError:
            remove_tree(tmp)
            die(f"image build failed, see {CACHE}/images/build-{key}.log")
        tmp.rename(image)
        log(f"base image built in {t}: {image}/rootfs")
    return image / "rootfs"


AIRFLOW_PIN = re.compile(r"^apache-airflow==\S+$", re.MULTILINE)


def wheelhouse_requirements(release=AIRFLOW_RELEASE):
    """lab/wheelhouse.txt for one Airflow release: its `apache-airflow==` line set to the release,
    plus the pins that release needs. The newest release's text is the file itself."""
    text = WHEEL_REQUIREMENTS.read_text()
    text, count = AIRFLOW_PIN.subn(f"apache-airflow=={release}", text, count=1)
    if count != 1:
        die(f"{WHEEL_REQUIREMENTS} has no `apache-airflow==` line to set to {release}")
    pins = AIRFLOW_RELEASE_PINS[release]
    if pins:
        text += f"# what Airflow {release} needs beside it (PGHA_LAB_AIRFLOW)\n" + "".join(f"{p}\n" for p in pins)
    return text


def wheelhouse_constraints(release=AIRFLOW_RELEASE):
    """lab/constraints/airflow-RELEASE.txt: the versions an older release's wheelhouse resolves within."""
    return WHEEL_REQUIREMENTS.parent / "constraints" / f"airflow-{release}.txt"


def wheelhouse_dir(release=AIRFLOW_RELEASE):
    """CACHE/wheels for the newest release (lab/wheelhouse.txt as it is), wheels-RELEASE for others."""
    return CACHE / ("wheels" if wheelhouse_requirements(release) == WHEEL_REQUIREMENTS.read_text()
                    else f"wheels-{release}")


def wheelhouse_key(release=AIRFLOW_RELEASE):
    """What the wheelhouse of ``release`` is made from: its list and its constraints."""
    constraints = wheelhouse_constraints(release)
    extra = constraints.read_bytes() if constraints.exists() else b""
    return hashlib.sha256(wheelhouse_requirements(release).encode() + extra).hexdigest()


def ensure_wheelhouse(release=AIRFLOW_RELEASE):
    """Wheels for one resolution of wheelhouse.txt at the lab's Airflow release (no sdists:
    hosts never compile).

    Rebuilt from scratch when the list changes, so it never offers two versions
    of a package and a pin in the list is a pin on the hosts.
    """
    wheels = wheelhouse_dir(release)
    stamp = wheels.with_name(wheels.name + ".sha256")
    requirements = wheelhouse_requirements(release)
    key = wheelhouse_key(release)
    if stamp.exists() and stamp.read_text().strip() == key:
        return wheels
    with Locked(wheels.with_name(wheels.name + ".lock")):
        if stamp.exists() and stamp.read_text().strip() == key:
            return wheels
        t = Timer()
        log(f"building the wheelhouse of Airflow {release} (pip wheel, Debian's python3)")
        new = wheels.with_name(wheels.name + ".new")
        remove_tree(new)
        constraints = wheelhouse_constraints(release)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="pgha-wheelhouse-") as listed:
            listed.write(requirements)
            listed.flush()
            with open(wheels.with_name(wheels.name + ".log"), "w") as logf:
                r = run("/usr/bin/python3", "-m", "pip", "wheel", "--wheel-dir", new, "-r", listed.name,
                        *(["-c", constraints] if constraints.exists() else []),
                        check=False, stdout=logf, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            die(f"pip wheel failed, see {wheels}.log")
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
