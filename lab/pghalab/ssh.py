"""Keys (one lab client key, one ed25519 host key per host; made once, kept) and SSH to the hosts.
"""

import subprocess
import sys
from pathlib import Path

from .topology import HOSTS
from .settings import KEYS, STATE
from .common import die, run


def client_key():
    return KEYS / "id_ed25519"


def fault_gate_key():
    """The drill's key for the fault injector (its authorized_keys line forces the gate)."""
    return KEYS / "fault_gate_ed25519"


def fault_gate_host_key():
    return KEYS / "fault_gate_host_ed25519"


def host_key(name):
    return KEYS / "hosts" / name / "ssh_host_ed25519_key"


def ensure_keys():
    keys = [(client_key(), "pgha-lab"), (fault_gate_key(), "pgha-drill"), (fault_gate_host_key(), "pgha-fault-gate")]
    keys += [(host_key(n), f"root@{n}") for n in HOSTS]
    for path, comment in keys:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
        path.chmod(0o600)
    write_known_hosts()


def pubkey(private):
    """'ssh-ed25519 AAAA...' (type and key, no comment)."""
    return " ".join(Path(f"{private}.pub").read_text().split()[:2])


def host_pubkey(name):
    return pubkey(host_key(name))


def write_known_hosts():
    lines = [f"{n},{h['ip']} {host_pubkey(n)}\n" for n, h in HOSTS.items()]
    (STATE / "known_hosts").write_text("".join(lines))


def ssh_argv(name, *cmd, connect_timeout=5):
    return ["ssh", "-F", "none", "-i", str(client_key()), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={STATE / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR", f"root@{HOSTS[name]['ip']}", *cmd]


def ssh_run(name, command, stdin=None, check=True, capture=True, timeout=None):
    """Run a shell command on a host over the lab's SSH; stdin may be bytes."""
    r = subprocess.run(ssh_argv(name, command), input=stdin, timeout=timeout, check=False,
                       stdout=subprocess.PIPE if capture else sys.stderr,
                       stderr=subprocess.PIPE if capture else sys.stderr)
    if check and r.returncode != 0:
        err = r.stderr.decode(errors="replace")[-2000:] if capture else ""
        die(f"{name}: `{command[:120]}` failed ({r.returncode}) {err}")
    return r.stdout.decode(errors="replace") if capture else ""


def tar_bytes(files):
    """A tar (uid/gid 0) of {name: (bytes, mode)}; directories implied."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            data, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
