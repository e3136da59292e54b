"""`provision`: vm1 (Airflow on a single PostgreSQL with history, the Celery broker) and
vm4 (its Celery worker), each built once and kept as its `provisioned` snapshot.
"""

import json
import sys

from .topology import (AIRFLOW_HOST, AIRFLOW_RELEASE, BRIDGE_IP, FAULT_GATE_PORT, HOSTS, SOURCE_MAJOR, SOURCE_SUITES,
                       WORKER_HOST, api_url)
from .settings import PROVISIONED, PROVISION_DIR, SECRETS
from .common import die, log, write_private
from .record import load_secrets
from .ssh import client_key, fault_gate_host_key, fault_gate_key, host_pubkey, pubkey, ssh_run, tar_bytes
from .containers import kill_host, running, start_hosts, wipe_host
from .snapshots import load_snapshot, saved_secrets, snapshot_host, snapshot_id, snapshot_key
from .lab_airflow import make_history, row_counts, wait_airflow, wait_worker
from .deploy import deploy


def provision_module():
    if str(PROVISION_DIR) not in sys.path:
        sys.path.insert(0, str(PROVISION_DIR))
    import airflow_host  # lab/provision/airflow_host.py (standard library only)
    return airflow_host


def ensure_secrets():
    """Generated once and kept (lab/.state/secrets.json, 0600); new names are added."""
    have = load_secrets()
    full = provision_module().complete(have)
    if full != have or (SECRETS.stat().st_mode & 0o777) != 0o600:
        write_private(SECRETS, json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


PROBES = {AIRFLOW_HOST: "probe.sh", WORKER_HOST: "vm4-probe.sh"}


def probe(name):
    """What tells whether the host is still as its `provisioned` snapshot left it."""
    return ssh_run(name, f"PGHA_LAB_SOURCE_MAJOR={SOURCE_MAJOR} bash -s",
                   stdin=(PROVISION_DIR / PROBES[name]).read_bytes(), check=False)


def airflow_bundle(secrets):
    fault_injector = {"host": BRIDGE_IP, "port": FAULT_GATE_PORT, "host_key": pubkey(fault_gate_host_key()),
                      "key": fault_gate_key().read_text()}
    files = provision_module().bundle(secrets, HOSTS, {n: host_pubkey(n) for n in HOSTS}, client_key().read_text(),
                                      HOSTS[AIRFLOW_HOST]["ip"], {WORKER_HOST: HOSTS[WORKER_HOST]["ip"]},
                                      fault_injector)
    # vm1.sh's source major and the Debian release it comes from (lab/pghalab/topology.py)
    files["source.env"] = (f"SOURCE_MAJOR={SOURCE_MAJOR}\nSOURCE_SUITE={SOURCE_SUITES[SOURCE_MAJOR]}\n".encode(), 0o644)
    files.update(release_env())
    return files


def worker_bundle(secrets):
    files = provision_module().worker_bundle(secrets, HOSTS[AIRFLOW_HOST]["ip"])
    files.update(release_env())
    return files


def release_env():
    """airflow-host.sh's Airflow release (PGHA_LAB_AIRFLOW, lab/pghalab/topology.py)."""
    return {"release.env": (f"AIRFLOW_RELEASE={AIRFLOW_RELEASE}\n".encode(), 0o644)}


def run_bundle(name, files, script):
    """Put a provisioning bundle on the host (/root/pgha-provision, 0700: the secrets travel
    only inside it), run its script there, remove it. SSH only: safe in a thread."""
    ssh_run(name, "rm -rf /root/pgha-provision && install -d -m 0700 /root/pgha-provision && "
                  "tar -x -C /root/pgha-provision -f -", stdin=tar_bytes(files))
    try:
        ssh_run(name, f"/root/pgha-provision/{script}", capture=False)
    finally:
        ssh_run(name, "rm -rf /root/pgha-provision", check=False)


def finish_airflow_host(rec, t):
    """vm1 after vm1.sh: code, health, history, snapshot `provisioned` (minutes)."""
    name = AIRFLOW_HOST
    log(f"{name}: Airflow installed in {t}")
    deploy(rec, name)
    wait_airflow()
    log(f"{name}: Airflow healthy at {api_url()} ({t})")
    make_history()
    counts = row_counts(name)
    log("history rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if sum(counts.values()) < 2000:
        die(f"too little history: {counts}")
    meta = snapshot_host(rec, name, PROVISIONED, extra={"probe": probe(name), "rows": counts}, boot_after=True)
    log(f"{name}: provisioned from scratch in {t}")
    return meta


def finish_worker_host(rec, t):
    """vm4 after vm4.sh (vm1 ready): code, worker started and answering, snapshot `provisioned`."""
    name = WORKER_HOST
    log(f"{name}: Airflow installed in {t}")
    deploy(rec, name)
    ssh_run(name, "systemctl restart airflow-celery-worker")
    wait_worker(name)
    log(f"{name}: celery@{name} answers through the broker on {AIRFLOW_HOST} ({t})")
    meta = snapshot_host(rec, name, PROVISIONED, extra={"probe": probe(name)}, boot_after=True)
    log(f"{name}: provisioned from scratch in {t}")
    return meta


def provision_plan(rec, name, rebuild, healthy=lambda: True):
    """('keep' | 'restore' | 'build', snapshot meta or None, why) for one host. A worker's
    snapshot is usable only with the secrets vm1 runs on now (its airflow.cfg holds them)."""
    snap_id = snapshot_id(name, PROVISIONED, snapshot_key(rec, name))
    meta = None if rebuild else load_snapshot(snap_id)
    if meta and name != AIRFLOW_HOST and saved_secrets(meta) != load_secrets():
        return "build", None, f"snapshot {snap_id} was made with other secrets than {AIRFLOW_HOST}'s"
    if not meta:
        return "build", None, "--rebuild" if rebuild else f"no snapshot {snap_id}"
    h = rec["hosts"].get(name) or {}
    if h.get("snapshot") != snap_id:
        return "restore", meta, f"snapshot {snap_id} (not from this snapshot)"
    if running(rec, name) and healthy() and probe(name) == meta.get("probe"):
        return "keep", meta, f"unchanged since snapshot {snap_id}"
    return "restore", meta, f"snapshot {snap_id} (used since)"


def start_fresh(rec, name):
    """The host on the bare base image (its disk thrown away), booted."""
    if name in rec["hosts"]:
        log(f"{name}: starting from the bare base image")
        if running(rec, name):
            kill_host(rec, name)
        wipe_host(rec, name)
    start_hosts(rec, [name])
