"""Snapshots: a stopped host's upper dir becomes a read-only overlay layer; a host
restored from it boots the layers (top first) over the base image with a new,
empty upper dir. Nothing is copied: restoring takes as long as a boot.
"""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .topology import AIRFLOW_RELEASE, HOSTS, SOURCE_MAJOR
from .cache import wheelhouse_key
from .settings import LAB_DAGS, LAB_DIR, PROVISION_DIR, SECRETS, SNAPSHOTS
from .common import Timer, die, log, remove_tree, run, write_private
from .record import Locked, save_record
from .ssh import client_key, fault_gate_host_key, fault_gate_key, host_pubkey, pubkey
from .containers import host_dir, image_of, kill_host, running, shutdown_hosts, start_hosts, unmount_host, wipe_host


def image_key(rec, name):
    return Path(image_of(rec, name)).parent.name


def snapshot_key(rec, name):
    """What a provisioned host depends on: lab/provision/, lab/dags/, the wheelhouse list at the
    lab's Airflow release, the base image, the source major and the lab's keys (the layers hold
    host keys and authorized_keys).
    Not dags/, plugins/, include/: `deploy` copies those after every restore."""
    h = hashlib.sha256()
    for base in (PROVISION_DIR, LAB_DAGS):
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(f"{path.relative_to(LAB_DIR)}\0".encode() + path.read_bytes() + b"\0")
    h.update(wheelhouse_key().encode())  # at the lab's Airflow release (PGHA_LAB_AIRFLOW)
    h.update(f"image {image_key(rec, name)}\0".encode())
    h.update(f"source major {SOURCE_MAJOR}\0".encode())  # vm1's PostgreSQL (PGHA_LAB_SOURCE_MAJOR)
    h.update(Path(f"{client_key()}.pub").read_bytes())
    h.update(pubkey(fault_gate_key()).encode() + pubkey(fault_gate_host_key()).encode())
    for n in HOSTS:
        h.update(host_pubkey(n).encode())
    return h.hexdigest()[:16]


def snapshot_id(host, snap_name, key):
    """NAME-HOST-<key>: a snapshot is of one host (host keys, machine-id) and one key."""
    return f"{snap_name}-{host}-{key}"


def snapshot_dir(snap_id):
    return SNAPSHOTS / snap_id


def load_snapshot(snap_id):
    meta = snapshot_dir(snap_id) / "meta.json"
    if not meta.exists():
        return None
    m = json.loads(meta.read_text())
    if not all(Path(layer).is_dir() for layer in m["layers"]):
        log(f"snapshot {snap_id} lost a layer; ignoring it")
        return None
    return m


def referenced_layers(rec):
    refs = set()
    for meta in SNAPSHOTS.glob("*/meta.json"):
        refs.update(json.loads(meta.read_text())["layers"])
    for h in rec["hosts"].values():
        refs.update(h.get("lowers") or [])
    return refs


def profile():
    """What lab settings a snapshot is made for: its source major and Airflow release. Snapshots of
    another profile are kept (a lab switched back to it restores them instead of provisioning again)."""
    return f"source {SOURCE_MAJOR}, airflow {AIRFLOW_RELEASE}"


def prune_snapshots(rec, host, name, keep):
    """Drop HOST's snapshots NAME of other keys of this profile (unusable: made from other files),
    then every layer no snapshot and no host of this lab uses."""
    for meta in SNAPSHOTS.glob("*/meta.json"):
        m = json.loads(meta.read_text())
        if m["name"] == name and m["host"] == host and m.get("profile", profile()) == profile() and m["id"] != keep:
            log(f"removing outdated snapshot {m['id']}")
            shutil.rmtree(meta.parent)
    refs = referenced_layers(rec)
    for layer in (SNAPSHOTS / "layers").glob("*"):
        if str(layer) not in refs:
            shutil.rmtree(layer, ignore_errors=True)


def snapshot_host(rec, name, snap_name, extra=None, boot_after=None):
    """Stop the host cleanly, turn its upper dir into a layer, record NAME-<key>, and
    continue on top of it (booted again if it was running, or if boot_after)."""
    h = rec["hosts"].get(name)
    if not h:
        die(f"{name} has no disk (absent): nothing to snapshot")
    key = snapshot_key(rec, name)
    snap_id = snapshot_id(name, snap_name, key)
    was_running = running(rec, name)
    t = Timer()
    shutdown_hosts(rec, [name])
    if rec["hosts"][name].get("last") == "crashed":
        die(f"{name} did not shut down cleanly: no snapshot")
    unmount_host(rec, name)
    with Locked(SNAPSHOTS / ".lock"):
        layer = SNAPSHOTS / "layers" / f"{snap_id}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        layer.parent.mkdir(parents=True, exist_ok=True)
        upper = host_dir(name) / "upper"
        try:
            upper.rename(layer)  # same filesystem: instant
        except OSError:
            tmp = layer.with_name(layer.name + ".tmp")
            run("cp", "-a", upper, tmp)  # keeps whiteouts (0:0 devices) and overlay xattrs
            tmp.rename(layer)
            remove_tree(upper)
        layer.chmod(0o755)
        lowers = [str(layer)] + (h.get("lowers") or [image_of(rec, name)])
        meta = {"id": snap_id, "name": snap_name, "key": key, "host": name, "image": image_of(rec, name),
                "profile": profile(),
                "layers": lowers[:-1], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
        tmpdir = SNAPSHOTS / f".{snap_id}.{os.getpid()}"
        shutil.rmtree(tmpdir, ignore_errors=True)
        tmpdir.mkdir(mode=0o700)
        (tmpdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if SECRETS.exists():
            write_private(tmpdir / "secrets.json", SECRETS.read_text())
        if snapshot_dir(snap_id).exists():
            shutil.rmtree(snapshot_dir(snap_id))
        tmpdir.rename(snapshot_dir(snap_id))
        h["lowers"], h["snapshot"] = lowers, snap_id
        remove_tree(host_dir(name) / "work")
        save_record(rec)
        prune_snapshots(rec, name, snap_name, keep=snap_id)
    log(f"{name}: snapshot {snap_id} in {t} ({len(lowers) - 1} layer(s) over the image)")
    if boot_after or (boot_after is None and was_running):
        start_hosts(rec, [name])
    return meta


def restore_host(rec, name, meta):
    """Throw the host's disk away and boot the snapshot's layers instead of the bare image."""
    if meta["host"] != name:
        die(f"snapshot {meta['id']} is of {meta['host']}, not {name} (host keys, machine-id)")
    if meta["image"] != image_of(rec, name):
        die(f"snapshot {meta['id']} was made on image {meta['image']}, {name} boots {image_of(rec, name)}")
    if running(rec, name):
        kill_host(rec, name)  # its disk is thrown away: no need to shut down
    wipe_host(rec, name)
    host_dir(name).mkdir(parents=True)
    (host_dir(name) / "seeded").touch()  # the layers hold the host's identity already
    rec["hosts"][name] = {"lowers": meta["layers"] + [meta["image"]], "snapshot": meta["id"]}
    save_record(rec)
    saved = snapshot_dir(meta["id"]) / "secrets.json"
    if saved.exists() and (not SECRETS.exists() or SECRETS.read_text() != saved.read_text()):
        log(f"secrets: {SECRETS} now holds the ones of snapshot {meta['id']}")
        write_private(SECRETS, saved.read_text())
    start_hosts(rec, [name])


def find_snapshot(rec, host, name):
    snap_id = snapshot_id(host, name, snapshot_key(rec, host))
    meta = load_snapshot(snap_id)
    if not meta:
        have = sorted(p.parent.name for p in SNAPSHOTS.glob("*/meta.json"))
        die(f"no snapshot {snap_id} (NAME-HOST-<key of lab/provision, lab/dags, wheelhouse, image, keys>); "
            f"have: {', '.join(have) or 'none'}")
    return meta


def saved_secrets(meta):
    path = snapshot_dir(meta["id"]) / "secrets.json"
    return json.loads(path.read_text()) if path.exists() else None
