"""pgha lab: real Debian 12 hosts as systemd-nspawn containers on one machine.

    lab/lab up [NODE...]       build/reuse the base image, start the lab, boot hosts
    lab/lab down               remove everything `up` started (by its record)
    lab/lab status             hosts, addresses, state
    lab/lab ssh NODE [CMD...]  ssh as root (lab key, verified host key)
    lab/lab stop NODE...       clean shutdown (disk kept)
    lab/lab start NODE...      boot (disk kept)
    lab/lab crash NODE...      SIGKILL the host's whole cgroup (disk kept)
    lab/lab isolate NODE...    cut the host off the bridge
    lab/lab heal NODE...       put it back
    lab/lab reset [NODE...]    back to the freshly built base (default: all booted hosts)
    lab/lab reset NODE --to NAME   back to snapshot NAME (of this NODE) instead
    lab/lab reset psg1 psg2 psg3 --cluster-major 17   boot the database hosts on the Debian release of
                               a 17 cluster (Debian 13); a reset without it: PGHA_LAB_CLUSTER_MAJOR's
    lab/lab snapshot NODE NAME stop NODE cleanly, keep its disk as snapshot NAME, boot it again
    lab/lab provision [--rebuild]  vm1 = Airflow (PGHA_LAB_AIRFLOW) on a single local PostgreSQL with history
                               and the Celery broker, vm4 = its Celery worker (each from its
                               `provisioned` snapshot when there is one), deployed
    lab/lab deploy             pip-install pgha (a wheel of this checkout) and copy dags/ lab/dags
                               lab/inventory.yml to the Airflow hosts
                               and vm4
    lab/lab ui                 the Airflow UI address and login
    lab/lab env                export lines: AIRFLOW_CONN_SSH_<HOST>, proxy/wheel URLs
    lab/lab mail [--json]      the alerts the SMTP sink on vm1 kept (/var/lib/pgha-lab/mail), oldest first

Python 3 standard library only; run as root. See lab/README.md.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from .topology import (
    AIRFLOW_HOST, AIRFLOW_HOSTS, AIRFLOW_HOSTS_SUITE, AIRFLOW_RELEASE, APT_PROXY_PORT, BRIDGE, BRIDGE_IP, CLUSTER_MAJOR,
    CLUSTER_SUITES, DATABASE_HOSTS, HOSTS, PREFIX, WHEEL_PORT, WORKER_HOST, suite_of,
)
from .settings import BRIDGE_OWNER, CGROUP_DIR, DEPLOY_ROOT, HOST_DIRS, LOGS, NSPAWN_RUN, PROVISIONED, RECORD, STATE
from .common import Timer, die, log, parallel, remove_tree, rmdir_quiet, run
from .record import Locked, load_record, require_up, save_record
from .procs import alive, stop_proc, wait_reaped
from .ssh import client_key, ensure_keys, host_pubkey, ssh_argv
from .cache import ensure_image, ensure_wheelhouse, wheelhouse_dir
from .network import ensure_network, ensure_services, link_exists, nft_table_exists, recorded_processes
from .containers import (
    cgroup_roots, check_names, host_suite, in_host, kill_host, running, set_isolated, shutdown_hosts, start_hosts,
    wipe_host,
)
from .snapshots import find_snapshot, restore_host, snapshot_host
from .lab_airflow import delivered_mail, print_ui, wait_airflow, wait_parsed, wait_worker
from .deploy import deploy
from .provision import (
    airflow_bundle, ensure_secrets, finish_airflow_host, finish_worker_host, provision_plan, run_bundle,
    start_fresh, worker_bundle,
)


# What `up` runs on the outer machine, and the Debian package that brings it.
PREREQUISITES = {
    "debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux",
    "apt-cacher-ng": "apt-cacher-ng", "nft": "nftables", "ip": "iproute2",
    "ssh-keygen": "openssh-client", "sshd": "openssh-server",
}


def check_prerequisites():
    """Name every missing tool (and its package) before anything is built or started."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [f"{tool} ({package})" for tool, package in PREREQUISITES.items()
               if not shutil.which(tool, path=path)]
    if subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True).returncode:
        missing.append("/usr/bin/python3 -m pip (python3-pip)")
    if missing:
        die("missing on this machine: " + ", ".join(missing) + "; install them with apt-get "
            "(or `bash .ci/install-deps`)")


def cmd_up(args):
    names = check_names(args or [n for n, h in HOSTS.items() if h["boot"]])
    check_prerequisites()
    t = Timer()
    with Locked(STATE / "lock"):
        if not RECORD.exists():
            remove_tree(LOGS)  # a fresh lab starts fresh logs
        rec = load_record()
        rec.setdefault("made_nspawn_run", not NSPAWN_RUN.exists())
        ensure_keys()
        rec["image"] = rec.get("image") or str(ensure_image())  # Debian 12: the Airflow hosts, and snapshots
        for suite in sorted({suite_of(n) for n in HOSTS} - {AIRFLOW_HOSTS_SUITE}):  # PGHA_LAB_CLUSTER_MAJOR
            rec.setdefault("images", {})[suite] = rec.get("images", {}).get(suite) or str(ensure_image(suite))
        wheels = ensure_wheelhouse()
        save_record(rec)
        ensure_network(rec)
        ensure_services(rec, wheels)
        start_hosts(rec, names)
    log(f"up in {t}")
    cmd_status([])


def cmd_down(args):
    t = Timer()
    with Locked(STATE / "lock"):
        if not RECORD.exists():
            log("nothing to do: the lab is not up")
            return
        rec = load_record()
        pids = recorded_processes(rec)
        shutdown_hosts(rec, list(rec["hosts"]), timeout=20)
        for name in list(rec["hosts"]):
            wipe_host(rec, name)
        if rec.get("cgroups"):
            for cg_root in cgroup_roots():
                rmdir_quiet(cg_root / CGROUP_DIR)
        for name, ref in rec["procs"].items():
            stop_proc(ref)
        if rec.get("nft_table") and nft_table_exists():
            run("nft", "delete", "table", "inet", rec["nft_table"])
        if rec.get("bridge") and link_exists(rec["bridge"]):
            run("ip", "link", "delete", rec["bridge"])
            BRIDGE_OWNER.unlink(missing_ok=True)
        if rec.get("made_nspawn_run"):
            # only nspawn's empty bookkeeping dirs, and only if we made them
            for sub in ("propagate", "locks", "unix-export"):
                rmdir_quiet(NSPAWN_RUN / sub)
            rmdir_quiet(NSPAWN_RUN)
        remove_tree(STATE / "run")
        remove_tree(HOST_DIRS)
        RECORD.unlink()
        wait_reaped(pids)
    log(f"down in {t}")


def cmd_status(args):
    rec = load_record()
    if not rec.get("bridge"):
        print("lab: down")
        return
    procs = ", ".join(f"{n} pid {r['pid']}{'' if alive(r) else ' (DEAD)'}"
                      for n, r in rec["procs"].items())
    print(f"lab: up  bridge {rec['bridge']} {BRIDGE_IP}/{PREFIX}  nft inet {rec.get('nft_table')}")
    print(f"     apt proxy http://{BRIDGE_IP}:{APT_PROXY_PORT}  "
          f"wheels http://{BRIDGE_IP}:{WHEEL_PORT}/  ({procs})")
    print(f"     image {rec['image']}")
    for suite, image in sorted(rec.get("images", {}).items()):
        print(f"     image ({suite}: {', '.join(n for n in HOSTS if host_suite(rec, n) == suite)}) {image}")
    print(f"{'HOST':6} {'ADDRESS':13} {'STATE':9} {'SYSTEM':9} {'LINK':9} {'PID1':>8}  ROLE")
    for name, h in HOSTS.items():
        hr = rec["hosts"].get(name)
        if not hr:
            state, system, link, pid = "absent", "-", "-", "-"
        elif running(rec, name):
            state = "running"
            system = in_host(rec, name, "systemctl", "is-system-running") or "?"
            link = "ISOLATED" if hr.get("isolated") else "bridged"
            pid = str(hr["leader"]["pid"])
        else:
            state, system, link, pid = hr.get("last") or "stopped", "-", "-", "-"
        role = h["role"] + (f"  [snapshot {hr['snapshot']}]" if hr and hr.get("snapshot") else "")
        print(f"{name:6} {h['ip']:13} {state:9} {system:9} {link:9} {pid:>8}  {role}")


def cmd_ssh(args):
    if not args:
        die("usage: lab/lab ssh NODE [CMD...]")
    check_names(args[:1])
    argv = ssh_argv(args[0], *args[1:])
    os.execvp(argv[0], argv)


def with_hosts(args, need_running=None):
    """Common prologue of the one-host commands: lock, record, checked names."""
    if not args:
        die("name at least one host")
    check_names(args)
    rec = load_record()
    require_up(rec)
    for n in args:
        if need_running is True and not running(rec, n):
            die(f"{n} is not running")
    return rec


def cmd_stop(args):
    with Locked(STATE / "lock"):
        rec = with_hosts(args)
        t = Timer()
        shutdown_hosts(rec, args)
        log(f"stopped {' '.join(args)} in {t}")


def cmd_start(args):
    with Locked(STATE / "lock"):
        rec = with_hosts(args)
        start_hosts(rec, args)


def cmd_crash(args):
    with Locked(STATE / "lock"):
        rec = with_hosts(args, need_running=True)
        for n in args:
            kill_host(rec, n)
            log(f"{n} crashed (SIGKILL to its cgroup; disk kept)")


def cmd_isolate(args, isolated=True):
    with Locked(STATE / "lock"):
        rec = with_hosts(args, need_running=True)
        for n in args:
            set_isolated(rec, n, isolated)
            log(f"{n} {'isolated from' if isolated else 'back on'} {BRIDGE}")


def cmd_heal(args):
    cmd_isolate(args, isolated=False)


def option(args, name, usage):
    """(value of ``name VALUE`` in args or None, args without it)."""
    if name not in args:
        return None, args
    i = args.index(name)
    if i + 1 >= len(args):
        die(f"usage: {usage}")
    return args[i + 1], args[:i] + args[i + 2:]


def cmd_reset(args):
    to, args = option(args, "--to", "lab/lab reset NODE... --to NAME")
    major, args = option(args, "--cluster-major", "lab/lab reset psg1 psg2 psg3 --cluster-major 15|17")
    with Locked(STATE / "lock"):
        rec = load_record()
        require_up(rec)
        names = check_names(args or [n for n in HOSTS if n in rec["hosts"]])
        t = Timer()
        set_cluster_suite(rec, [n for n in names if n in DATABASE_HOSTS], major)
        if to:
            metas = {n: find_snapshot(rec, n, to) for n in names}
            for n in names:
                restore_host(rec, n, metas[n])
            log(f"reset {' '.join(names)} to snapshot {to} ({', '.join(m['id'] for m in metas.values())}) in {t}")
            return
        for n in names:
            if running(rec, n):
                kill_host(rec, n)  # its disk is thrown away: no need to shut down
            wipe_host(rec, n)
        start_hosts(rec, names)
        log(f"reset {' '.join(names)} in {t}")


def set_cluster_suite(rec, names, major):
    """The Debian release database hosts ``names`` boot from their next reset: the one of cluster major
    ``major`` (its image built when missing), or PGHA_LAB_CLUSTER_MAJOR's when None."""
    if major is not None and (not major.isdigit() or int(major) not in CLUSTER_SUITES):
        die(f"--cluster-major {major}: the lab builds a cluster of major {' or '.join(map(str, CLUSTER_SUITES))}")
    suite = CLUSTER_SUITES[int(major)] if major else CLUSTER_SUITES[CLUSTER_MAJOR]
    if suite != AIRFLOW_HOSTS_SUITE:
        rec.setdefault("images", {})[suite] = rec.get("images", {}).get(suite) or str(ensure_image(suite))
    for n in names:
        rec.setdefault("suites", {})[n] = suite
    save_record(rec)


def cmd_snapshot(args):
    if len(args) != 2:
        die("usage: lab/lab snapshot NODE NAME")
    check_names(args[:1])
    if not args[1].replace("-", "").replace("_", "").isalnum():
        die("snapshot names: letters, digits, - and _")
    if args[1] == PROVISIONED:
        die(f"`{PROVISIONED}` is made (and checked) by `lab/lab provision`; pick another name")
    with Locked(STATE / "lock"):
        rec = load_record()
        require_up(rec)
        snapshot_host(rec, args[0], args[1])


def cmd_provision(args):
    """vm1 as the runbook's VM1 (Airflow on a single PostgreSQL, with history, the Celery
    broker) and vm4 as its VM4 (a Celery worker): each kept when it still is, restored from
    its `provisioned` snapshot when it was used, built otherwise (both builds at once)."""
    rebuild = "--rebuild" in args
    vm1, vm4 = AIRFLOW_HOST, WORKER_HOST
    t = Timer()
    with Locked(STATE / "lock"):
        rec = load_record()
        require_up(rec)
        if rec.get("wheels_dir", str(wheelhouse_dir())) != str(wheelhouse_dir()):
            die(f"the lab serves the wheelhouse {rec['wheels_dir']}, not Airflow {AIRFLOW_RELEASE}'s "
                "(PGHA_LAB_AIRFLOW changed since `lab/lab up`): run `lab/lab down` first")
        # 1. vm1 first: restoring it may bring back the secrets of its snapshot, which vm4's
        #    snapshot must match. Everything that changes the record happens in this thread.
        plans = {}
        for name in (vm1, vm4):
            healthy = (lambda: wait_airflow(120, fatal=False)) if name == vm1 else (lambda: True)
            action, meta, why = plans[name] = provision_plan(rec, name, rebuild, healthy)
            log(f"{name}: " + {"keep": "", "restore": "restoring ", "build": "provisioning from scratch: "}[action]
                + why)
            if action == "restore":
                restore_host(rec, name, meta)
            elif action == "build":
                start_fresh(rec, name)
            secrets = ensure_secrets()
        # 2. The install scripts, in parallel (SSH only).
        scripts = {vm1: (airflow_bundle, "vm1.sh"), vm4: (worker_bundle, "vm4.sh")}
        builds = [n for n in (vm1, vm4) if plans[n][0] == "build"]
        parallel(lambda n: run_bundle(n, scripts[n][0](secrets), scripts[n][1]), builds)
        # 3. vm1 (code, history, snapshot), then vm4 (code, worker, snapshot) on a ready vm1.
        meta = plans[vm1][1]
        if vm1 in builds:
            meta = finish_airflow_host(rec, t)
        since = time.time()
        changed = deploy(rec, vm1)
        wait_airflow()
        if changed:
            log(f"deploy: {changed} file(s) changed on {vm1} since the snapshot; waiting for the DAGs to be parsed")
            wait_parsed(since)
        if vm4 in builds:
            finish_worker_host(rec, t)
        changed = deploy(rec, vm4)
        if changed:
            log(f"deploy: {changed} file(s) changed on {vm4} since the snapshot")
        wait_worker(vm4)
        log(f"{vm4}: celery@{vm4} answers through the broker on {vm1}")
    log(f"provision done in {t}")
    print_ui(meta.get("rows"))


def cmd_deploy(args):
    with Locked(STATE / "lock"):
        rec = load_record()
        require_up(rec)
        t = Timer()
        for name in AIRFLOW_HOSTS:
            if name != AIRFLOW_HOST and not running(rec, name):
                log(f"deploy: {name} is not running; skipped (`lab/lab provision` deploys it)")
                continue
            changed = deploy(rec, name)
            log(f"deploy: {changed} file(s) changed on {name}:{DEPLOY_ROOT} in {t}")


def cmd_ui(args):
    print_ui()


def cmd_mail(args):
    rec = load_record()
    require_up(rec)
    messages = delivered_mail()
    if args == ["--json"]:
        print(json.dumps(messages, indent=2))
        return
    for m in messages:
        print(f"=== {m['file']}\nDate: {m['date']}\nFrom: {m['from']}\nTo: {m['to']}\nSubject: {m['subject']}\n\n"
              f"{m['body']}")
    log(f"{len(messages)} message(s) in the SMTP sink on {AIRFLOW_HOST}")


def cmd_env(args):
    ensure_keys()
    for name, h in HOSTS.items():
        conn = {"conn_type": "ssh", "host": h["ip"], "login": "root", "port": 22,
                "extra": {"key_file": str(client_key()), "host_key": host_pubkey(name),
                          "no_host_key_check": False}}
        print(f"export AIRFLOW_CONN_SSH_{name.upper()}={shlex.quote(json.dumps(conn))}")
    print(f"export PGHA_LAB_APT_PROXY=http://{BRIDGE_IP}:{APT_PROXY_PORT}")
    print(f"export PGHA_LAB_PIP_FIND_LINKS=http://{BRIDGE_IP}:{WHEEL_PORT}/")
    print("# pip ignores a plain-http --find-links without --trusted-host")
    print(f"export PGHA_LAB_PIP_TRUSTED_HOST={BRIDGE_IP}")


COMMANDS = {
    "up": cmd_up, "down": cmd_down, "status": cmd_status, "ssh": cmd_ssh,
    "stop": cmd_stop, "start": cmd_start, "crash": cmd_crash, "isolate": cmd_isolate,
    "heal": cmd_heal, "reset": cmd_reset, "env": cmd_env, "snapshot": cmd_snapshot,
    "provision": cmd_provision, "deploy": cmd_deploy, "ui": cmd_ui, "mail": cmd_mail,
}


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    if os.geteuid() != 0:
        die("run as root (nspawn, mounts, bridge, nftables)")
    COMMANDS[argv[0]](argv[1:])
    return 0
