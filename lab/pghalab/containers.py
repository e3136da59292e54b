"""Hosts: an overlay (read-only base + per-host upper dir) booted by systemd-nspawn;
boot, clean stop, crash (SIGKILL to the cgroup), isolate/heal (the veth off/on the bridge).
"""

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

from .topology import BRIDGE, HOSTS, PREFIX, suite_of
from .settings import BOOT_TIMEOUT, CGROUP_DIR, HOST_DIRS, NSPAWN_RUN, STOP_TIMEOUT
from .common import Timer, die, is_mounted, log, parallel, remove_tree, rmdir_quiet, run
from .record import save_record
from .procs import alive, proc_ref, signal_proc, spawn, wait_gone
from .ssh import client_key, host_key, ssh_argv
from .network import link_exists, veth


def host_dir(name):
    return HOST_DIRS / name


def host_suite(rec, name):
    """The Debian release host ``name`` boots: `reset --cluster-major`'s, else PGHA_LAB_CLUSTER_MAJOR's."""
    return rec.get("suites", {}).get(name) or suite_of(name)


def image_of(rec, name):
    """The base image host ``name`` boots: its Debian release's."""
    return rec.get("images", {}).get(host_suite(rec, name)) or rec["image"]


def mount_overlay(rec, name):
    h = rec["hosts"].setdefault(name, {})
    d = host_dir(name)
    merged = d / "merged"
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if not is_mounted(merged):
        h["mount"] = str(merged)
        save_record(rec)
        lowers = ":".join(h.get("lowers") or [image_of(rec, name)])  # top first; a snapshot's layers
        run("mount", "-t", "overlay", f"pgha-lab-{name}", "-o",
            f"lowerdir={lowers},upperdir={d / 'upper'},workdir={d / 'work'}", merged)
    if not (d / "seeded").exists():
        seed_host(name, merged)
        (d / "seeded").touch()


def put(root, path, text, mode=0o644):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def seed_host(name, root):
    """Everything host-specific, written into the host's upper dir before first boot."""
    ip = HOSTS[name]["ip"]
    hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    hosts += "".join(f"{h['ip']} {n}\n" for n, h in HOSTS.items())
    put(root, "/etc/hostname", f"{name}\n")
    put(root, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    put(root, "/etc/hosts", hosts)
    put(root, "/etc/systemd/network/10-host0.network",
        "# pgha lab: static address, no gateway (nothing beyond the bridge)\n"
        f"[Match]\nName=host0\n\n[Network]\nAddress={ip}/{PREFIX}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    key = host_key(name)
    put(root, "/etc/ssh/ssh_host_ed25519_key", key.read_text(), 0o600)
    put(root, "/etc/ssh/ssh_host_ed25519_key.pub", Path(f"{key}.pub").read_text())
    put(root, "/root/.ssh/authorized_keys", Path(f"{client_key()}.pub").read_text(), 0o600)


def cgroup_roots():
    """Hierarchies nspawn uses: cgroup2 alone, or hybrid (name=systemd + unified)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [p for p in (base / "systemd", base / "unified") if p.is_dir()]


def host_cgroups(name):
    return [root / CGROUP_DIR / name for root in cgroup_roots()]


def remove_cgroups(name):
    """rmdir a host's cgroup subtrees, deepest first (they must be empty)."""
    for cg in host_cgroups(name):
        for _ in range(50):
            if not cg.exists():
                break
            for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                            reverse=True) + [cg]:
                rmdir_quiet(d)
            if cg.exists():
                time.sleep(0.1)


def find_leader(nspawn_ref, timeout=15):
    """The container's PID 1: the nspawn child living in another PID namespace."""
    my_ns = os.readlink("/proc/self/ns/pid")
    deadline = time.monotonic() + timeout
    pid = nspawn_ref["pid"]
    while time.monotonic() < deadline and alive(nspawn_ref):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in children:
                if os.readlink(f"/proc/{child}/ns/pid") != my_ns:
                    return proc_ref(int(child))
        except OSError:
            pass
        time.sleep(0.05)
    return None


def boot(rec, name):
    """Start nspawn for a mounted host; returns once its PID 1 exists."""
    h = rec["hosts"][name]
    cgroups = host_cgroups(name)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)
    rec["cgroups"] = True
    # nspawn (kept unit, no systemd outside) makes supervisor/ and payload/ cgroups
    # beside itself: start it inside the host's own cgroup so hosts never share one.
    join = "".join(f'echo $$ > "{cg}/cgroup.procs"; ' for cg in cgroups)
    argv = ["sh", "-c", join + 'exec "$@"', "sh",
            "systemd-nspawn", "--quiet", "-D", host_dir(name) / "merged", f"--machine={name}",
            "--boot", "--register=no", "--keep-unit", f"--network-bridge={BRIDGE}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only"]
    # nspawn locks the directory through this file and leaves it behind when
    # /run is not a tmpfs (as on this machine): remember it to remove it later.
    st = os.stat(host_dir(name) / "merged")
    h["lock_file"] = str(NSPAWN_RUN / "locks" / f"inode-{st.st_dev}:{st.st_ino}")
    h["nspawn"] = spawn(argv, host_dir(name) / "console.log")
    h["leader"] = find_leader(h["nspawn"])
    h["last"] = "booted"
    h["isolated"] = False  # a new veth pair, attached to the bridge by nspawn
    save_record(rec)
    if not h["leader"]:
        die(f"{name}: nspawn exited early, see {host_dir(name)}/console.log")


def in_host(rec, name, *cmd):
    """stdout of a command run inside a host's namespaces (no SSH needed)."""
    leader = rec["hosts"][name].get("leader")
    if not alive(leader):
        return None
    return run("nsenter", "-t", leader["pid"], "-a", *cmd, check=False, capture=True).stdout.strip()


def wait_ready(rec, name, deadline):
    """systemctl is-system-running says running/degraded, and sshd answers."""
    state = None
    while time.monotonic() < deadline:
        if not alive(rec["hosts"][name].get("nspawn")):
            die(f"{name}: container stopped while booting, see {host_dir(name)}/console.log")
        state = in_host(rec, name, "systemctl", "is-system-running")
        if state in ("running", "degraded"):
            break
        time.sleep(0.3)
    else:
        die(f"{name}: not booted in time (state {state!r}), see {host_dir(name)}/console.log")
    while time.monotonic() < deadline:
        r = run(*ssh_argv(name, "true", connect_timeout=2), check=False, capture=True)
        if r.returncode == 0:
            return state
        time.sleep(0.3)
    die(f"{name}: sshd does not answer on {HOSTS[name]['ip']}:22")


def running(rec, name):
    return alive(rec["hosts"].get(name, {}).get("nspawn"))


def check_names(names):
    for n in names:
        if n not in HOSTS:
            die(f"unknown host {n!r} (known: {', '.join(HOSTS)})")
    return names


def start_hosts(rec, names):
    t = Timer()
    names = [n for n in names if not running(rec, n)]
    for n in names:
        mount_overlay(rec, n)
        boot(rec, n)
    deadline = time.monotonic() + BOOT_TIMEOUT
    states = parallel(lambda n: wait_ready(rec, n, deadline), names)
    for n, s in states.items():
        log(f"{n} {HOSTS[n]['ip']} is up ({s})")
    if names:
        log(f"booted {' '.join(names)} in {t}")


def kill_host(rec, name):
    """SIGKILL every process of the host at once: no shutdown runs inside."""
    h = rec["hosts"].get(name, {})
    for cg in host_cgroups(name):
        if (cg / "cgroup.kill").exists():
            (cg / "cgroup.kill").write_text("1\n")
    for ref in (h.get("leader"), h.get("nspawn")):
        signal_proc(ref, signal.SIGKILL)
    wait_gone([h.get("leader"), h.get("nspawn")], 10)
    after_exit(rec, name, "crashed")


def shutdown_hosts(rec, names, timeout=STOP_TIMEOUT):
    """Clean shutdown: SIGTERM makes nspawn ask the container's systemd to power off."""
    names = [n for n in names if running(rec, n)]
    for n in names:
        signal_proc(rec["hosts"][n]["nspawn"], signal.SIGTERM)
    refs = [rec["hosts"][n]["nspawn"] for n in names]
    wait_gone(refs, timeout)
    for n in names:
        if running(rec, n):
            log(f"{n}: no clean shutdown after {timeout}s, killing it")
            kill_host(rec, n)
        else:
            after_exit(rec, n, "stopped")


def after_exit(rec, name, how):
    h = rec["hosts"].get(name, {})
    h["nspawn"] = h["leader"] = None
    h["last"] = how
    remove_cgroups(name)
    # The kernel removes the host's veth with its network namespace, a moment
    # after the last process is gone; a boot before that fails ("File exists").
    for _ in range(50):
        if not link_exists(veth(name)):
            break
        time.sleep(0.1)
    else:
        run("ip", "link", "del", veth(name), check=False)
    # nspawn leaves these behind when /run is not a tmpfs (as on this machine)
    shutil.rmtree(NSPAWN_RUN / "propagate" / name, ignore_errors=True)
    if h.get("lock_file"):
        Path(h["lock_file"]).unlink(missing_ok=True)
    save_record(rec)


def unmount_host(rec, name):
    h = rec["hosts"].get(name, {})
    if h.get("mount") and is_mounted(h["mount"]):
        unmount(h["mount"])
    h["mount"] = None
    save_record(rec)


def unmount(mount, tries=50):
    """umount, retried a while: a host just stopped can hold its root a moment longer ("target is busy"
    when a process that entered it is still exiting); then detached lazily (released when the last
    holder exits), with the holders logged."""
    for _ in range(tries):
        if run("umount", mount, check=False, capture=True).returncode == 0 or not is_mounted(mount):
            return
        time.sleep(0.2)
    holders = run("fuser", "-vm", mount, check=False, capture=True) if shutil.which("fuser") else None
    log(f"{mount} still busy after {tries * 0.2:.0f}s, detaching it lazily; held by: "
        f"{(holders.stdout + holders.stderr).strip() if holders else 'fuser is not installed'}")
    run("umount", "--lazy", mount)


def wipe_host(rec, name):
    """Unmount and delete the host's disk (its upper dir): back to the base image."""
    unmount_host(rec, name)
    remove_tree(host_dir(name))
    rec["hosts"].pop(name, None)
    save_record(rec)


def set_isolated(rec, name, isolated):
    port = veth(name)
    if isolated:
        run("ip", "link", "set", port, "nomaster")
    else:
        run("ip", "link", "set", port, "master", BRIDGE)
        run("ip", "link", "set", port, "up")
    rec["hosts"][name]["isolated"] = isolated
    save_record(rec)
