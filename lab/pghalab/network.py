"""Infrastructure on the outer machine: the bridge, the nftables table, and the services
bound to the bridge address (apt proxy, wheel server, the drill's fault injector).
"""

import fcntl
import json
import os
import stat
from pathlib import Path

from .topology import (
    AIRFLOW_HOSTS, APT_PROXY_PORT, BRIDGE, BRIDGE_IP, FAULT_GATE_NODES, FAULT_GATE_PORT, HOSTS, OUTER_PORTS,
    PREFIX, WHEEL_PORT,
)
from .settings import BRIDGE_OWNER, CACHE, FAULT_GATE_VERBS, LAB_COMMAND, LOGS, NFT_TABLE, RECORD, REPO_DIR, STATE
from .common import die, log, run
from .record import save_record
from .procs import alive, port_open, spawn, wait_port
from .ssh import fault_gate_host_key, fault_gate_key, pubkey


def link_exists(dev):
    return run("ip", "link", "show", dev, check=False, capture=True).returncode == 0


def veth(name):
    return f"vb-{name}"  # host side of nspawn's --network-bridge veth pair


def nft_ruleset():
    ports = ", ".join(str(p) for p in OUTER_PORTS)
    veths = ", ".join(f'"{veth(n)}"' for n in HOSTS)
    gate_clients = ", ".join(HOSTS[n]["ip"] for n in AIRFLOW_HOSTS)
    return f"""
table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname "{BRIDGE}" oifname != "{BRIDGE}" counter drop comment "lab hosts never leave the bridge"
    oifname "{BRIDGE}" iifname != "{BRIDGE}" counter drop comment "nothing is routed onto the bridge"
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname {{ {veths} }} counter drop comment "isolated host (port taken off the bridge)"
    iifname "{BRIDGE}" ct state established,related accept
    iifname "{BRIDGE}" icmp type echo-request accept
    iifname "{BRIDGE}" tcp dport {{ {ports} }} accept
    iifname "{BRIDGE}" ip saddr {{ {gate_clients} }} tcp dport {FAULT_GATE_PORT} accept comment "drill fault injector"
    iifname "{BRIDGE}" counter drop comment "hosts reach only the apt proxy and the wheelhouse"
  }}
}}
"""


def nft_table_exists():
    return run("nft", "list", "table", "inet", NFT_TABLE, check=False, capture=True).returncode == 0


def recorded_processes(rec):
    return [ref for ref in list(rec.get("procs", {}).values())
            + [h.get(k) for h in rec.get("hosts", {}).values() for k in ("nspawn", "leader")] if ref]


def lab_command_busy(lock):
    """Whether a lab/lab command of that checkout holds its lock now (an `up` between its steps, say)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # released: its own `down` takes it next
    return False


def untrusted_part(path):
    """The first of ``path`` (resolved) and its parents that someone other than root could change, or None.
    Root runs another checkout's lab/lab only when no one else could have swapped it."""
    resolved = Path(path).resolve()
    for part in [resolved, *resolved.parents]:
        st = part.stat()
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX  # /tmp: others cannot swap root's entries
        if st.st_uid != 0 or (st.st_mode & 0o022 and not sticky):
            return part
    return None


def reclaim_stale_lab():
    """The bridge is another checkout's. If none of the processes its record names still runs (its
    session was killed, not stopped), that checkout's own `lab/lab down` cleans it up; else refuse."""
    owner = json.loads(BRIDGE_OWNER.read_text()) if BRIDGE_OWNER.exists() else {}
    record = Path(owner.get("state", "/nonexistent")) / "run.json"
    if not record.exists() or record.resolve() == RECORD:
        die(f"bridge {BRIDGE} exists but no lab record owns it (this lab's is {RECORD}); if no lab runs, "
            f"remove it by hand: nft delete table inet {NFT_TABLE}; ip link delete {BRIDGE}")
    if lab_command_busy(record.parent / "lock"):
        die(f"bridge {BRIDGE} belongs to {owner['lab']}, whose lab/lab is running now (it holds its lock)")
    if any(alive(ref) for ref in recorded_processes(json.loads(record.read_text()))):
        die(f"bridge {BRIDGE} belongs to the running lab of {owner['lab']} (run its `lab/lab down`)")
    if (part := untrusted_part(owner["lab"])) is not None:
        die(f"bridge {BRIDGE} belongs to {owner['lab']}, but {part} is not root's alone (owner uid "
            f"{part.stat().st_uid}, mode {part.stat().st_mode & 0o7777:o}): not running it as root; run its "
            f"`lab/lab down` yourself")
    log(f"reclaiming a stale lab: {owner['lab']} made {BRIDGE} and none of its processes runs; "
        "running its `lab/lab down`")
    run(owner["lab"], "down", env={**os.environ, "PGHA_LAB_STATE": owner["state"]})
    if link_exists(BRIDGE):
        die(f"bridge {BRIDGE} is still there after {owner['lab']} down")


def ensure_network(rec):
    """Bridge and nftables table; existing ones are reused only if this lab made them."""
    if link_exists(BRIDGE) and not rec.get("bridge"):
        reclaim_stale_lab()
    if not link_exists(BRIDGE):
        rec["bridge"] = BRIDGE
        save_record(rec)  # recorded before it exists: `down` cleans a half-made lab
        BRIDGE_OWNER.write_text(json.dumps({"lab": str(LAB_COMMAND), "state": str(STATE)}) + "\n")
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1\n")
        run("ip", "addr", "add", f"{BRIDGE_IP}/{PREFIX}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
    if nft_table_exists():
        if not rec.get("nft_table"):
            die(f"nft table inet {NFT_TABLE} exists but this lab did not create it")
    else:
        rec["nft_table"] = NFT_TABLE
        save_record(rec)
        run("nft", "-f", "-", input=nft_ruleset())


def acng_config():
    conf = STATE / "run" / "apt-cacher-ng"
    conf.mkdir(parents=True, exist_ok=True)
    cache = CACHE / "apt"
    cache.mkdir(parents=True, exist_ok=True)
    (LOGS / "apt-cacher-ng").mkdir(parents=True, exist_ok=True)
    (conf / "acng.conf").write_text(
        f"CacheDir: {cache}\n"
        f"LogDir: {LOGS / 'apt-cacher-ng'}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"BindAddress: {BRIDGE_IP}\n"
        f"Port: {APT_PROXY_PORT}\n"
        f"SocketPath: {conf / 'socket'}\n"
        "ForeGround: 1\n"
        "ReportPage: acng-report.html\n"
        "ExThreshold: 4\n")
    return conf


def fault_gate_config():
    """sshd_config for the drill's fault injector: key only, root only, one forced command."""
    conf = STATE / "run" / "fault-gate"
    conf.mkdir(parents=True, exist_ok=True, mode=0o700)
    gate = {"nodes": list(FAULT_GATE_NODES),
            "verbs": {verb: [str(LAB_COMMAND), verb] for verb in FAULT_GATE_VERBS},
            "log": str(LOGS / "fault-gate-requests.log")}
    (conf / "gate.json").write_text(json.dumps(gate, indent=1) + "\n")
    command = f"/usr/bin/python3 {REPO_DIR / 'include' / 'drill' / 'fault_gate.py'} {conf / 'gate.json'}"
    authorized = conf / "authorized_keys"
    authorized.write_text(f'restrict,command="{command}" {pubkey(fault_gate_key())} pgha-drill\n')
    authorized.chmod(0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    config = conf / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {BRIDGE_IP}:{FAULT_GATE_PORT}", f"HostKey {fault_gate_host_key()}",
        f"PidFile {conf / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}", "AllowUsers root",
        "PermitRootLogin forced-commands-only", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "UseDNS no", "PrintMotd no", "X11Forwarding no",
        "AllowTcpForwarding no", "AllowAgentForwarding no", "PermitTunnel no", "Subsystem sftp /bin/false", ""]))
    run("/usr/sbin/sshd", "-t", "-f", config)
    return config


def ensure_services(rec, wheels):
    """The apt proxy, the wheel server and the fault injector, all bound to the bridge address."""
    services = {
        "apt-proxy": (["/usr/sbin/apt-cacher-ng", "-c", acng_config()], APT_PROXY_PORT),
        "wheels": (["/usr/bin/python3", "-m", "http.server", WHEEL_PORT, "--bind", BRIDGE_IP,
                    "--directory", wheels], WHEEL_PORT),
        "fault-gate": (["/usr/sbin/sshd", "-D", "-e", "-f", fault_gate_config()], FAULT_GATE_PORT),
    }
    served = rec.get("wheels_dir")
    if alive(rec["procs"].get("wheels")) and served and served != str(wheels):
        die(f"the lab's wheel server serves {served}, not {wheels} (PGHA_LAB_AIRFLOW changed since "
            "`lab/lab up`): run `lab/lab down` first")
    rec["wheels_dir"] = str(wheels)
    for name, (argv, port) in services.items():
        if alive(rec["procs"].get(name)):
            continue
        if port_open(BRIDGE_IP, port):
            die(f"{BRIDGE_IP}:{port} is already taken by a process this lab did not start")
        rec["procs"][name] = spawn(argv, LOGS / f"{name}.log")
        save_record(rec)
        if not wait_port(BRIDGE_IP, port):
            die(f"{name} did not listen on {BRIDGE_IP}:{port}, see {LOGS}/{name}.log")
