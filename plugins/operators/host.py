"""Preflight and phase 1: the inventory, the hosts, names, packages sources, firewall."""

from __future__ import annotations

import shlex
import time
from typing import Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException
from pgha.render import plain_http_hosts, render
from pgha.runtime import InventoryMixin

from pgha.operators.base import HostOperator, PghaOperator

HOSTS_BEGIN = "# BEGIN pgha managed hosts"
HOSTS_END = "# END pgha managed hosts"
DB_PORTS_FIELDS = ("postgres.port", "patroni.rest_port", "etcd.client_port", "etcd.peer_port")
MAX_CLOCK_SKEW_S = 2.0
NEIGHBOUR_SYSCTL = "/etc/sysctl.d/60-pgha-neighbour.conf"
NEIGHBOUR_UNIT_PATH = "/etc/systemd/system/pgha-neighbour.service"
# A peer's ARP entry goes stale 1-3 s after its last sign of life and is probed 1 s later, 3 x 200 ms:
# a connect to a dead peer then fails with "No route to host" instead of running into its timeout.
NEIGHBOUR_SETTINGS = {"base_reachable_time_ms": 2000, "delay_first_probe_time": 1, "retrans_time_ms": 200,
                      "ucast_solicit": 3, "mcast_solicit": 3}


def replace_block(text: str, block: str, begin: str = HOSTS_BEGIN, end: str = HOSTS_END) -> str:
    """``text`` with the lines between ``begin`` and ``end`` replaced by ``block`` (appended if absent)."""
    lines = text.splitlines()
    if begin in lines and end in lines[lines.index(begin):]:
        start = lines.index(begin)
        stop = lines.index(end, start)
        lines[start : stop + 1] = [begin, *block.splitlines(), end]
    else:
        lines += [begin, *block.splitlines(), end]
    return "\n".join(lines) + "\n"


class ValidateInventoryOperator(PghaOperator):
    """
    The first task: validates the inventory and that every connection it
    names exists, before any host is touched.
    """

    ui_color = "#f6e3db"

    def run(self, context: Any) -> Any:
        inv = self.inventory
        self.log.info("inventory %s is valid", inv.path)
        needed = {h.ssh_conn_id: f"SSH to {h.name}" for h in inv.hosts if h.name in inv.managed_host_names}
        needed.update(
            {
                inv.source.conn_id: "source database",
                inv.postgres.superuser_conn_id: "cluster superuser",
                inv.postgres.replication_conn_id: "replication user",
                inv.postgres.app_conn_id: f"{inv.postgres.owner} (Airflow's login)",
                inv.patroni.rest_conn_id: "Patroni REST API",
            }
        )
        missing = []
        for conn_id, purpose in needed.items():
            try:
                BaseHook.get_connection(conn_id)
            except Exception:
                missing.append(f"{conn_id} ({purpose})")
        if missing:
            raise AirflowException("missing Airflow connections: " + ", ".join(missing))
        return {"hosts": inv.managed_host_names, "database_nodes": list(inv.database_nodes)}


class InventoryHostsOperator(InventoryMixin, BaseOperator):
    """
    Returns the host names of one role, the list mapped tasks expand over.

    :param role: ``database`` (the Patroni/etcd nodes), ``managed`` (every
        host the migration touches) or ``airflow`` (hosts running Airflow units).
    """

    template_fields = ("inventory_path",)
    ROLES = ("database", "managed", "airflow")

    def __init__(self, *, role: str, inventory_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if role not in self.ROLES:
            raise ValueError(f"role must be one of {self.ROLES}, got {role!r}")
        self.role = role
        self.inventory_path = inventory_path

    def execute(self, context: Any) -> list[str]:
        inv = self.inventory
        names = {
            "database": list(inv.database_nodes),
            "managed": inv.managed_host_names,
            "airflow": [a.host for a in inv.airflow_hosts],
        }[self.role]
        self.log.info("%s hosts: %s", self.role, names)
        return names


class HostPreflightOperator(HostOperator):
    """
    Checks one host before anything changes: SSH with a verified host key,
    root or passwordless sudo, a supported OS, free disk, clock skew, and (on
    database nodes) that the cluster's ports are not taken by something else.

    :param host: inventory host name (mapped).
    :param min_free_mb: free space needed under /var.
    """

    def __init__(self, *, min_free_mb: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_free_mb = min_free_mb

    def run(self, context: Any) -> Any:
        remote = self.remote(self.host)
        problems: list[str] = []
        remote.run("true")
        whoami = remote.run("id -un", quiet=True).stdout.strip()
        if whoami != "root":
            problems.append(f"cannot become root (id -un says {whoami!r}): passwordless sudo is required")
        family = self.os_family(self.host)
        free_mb = int(remote.run("df -Pm /var | awk 'NR==2 {print $4}'", quiet=True).stdout.strip() or 0)
        if free_mb < self.min_free_mb:
            problems.append(f"only {free_mb} MB free under /var, need {self.min_free_mb} MB")
        skew = self._clock_skew()
        if abs(skew) > MAX_CLOCK_SKEW_S:
            problems.append(f"clock differs from the Airflow worker by {skew:+.1f}s (limit {MAX_CLOCK_SKEW_S}s)")
        if self.host in self.inventory.database_nodes:
            problems += self._foreign_listeners()
        if problems:
            raise AirflowException(f"[{self.host}] preflight failed:\n  - " + "\n  - ".join(problems))
        self.log.info("[%s] ok: %s, %d MB free, clock skew %+.2fs", self.host, family.name, free_mb, skew)
        return {"os_family": family.name, "free_mb": free_mb, "clock_skew_s": round(skew, 2)}

    def _clock_skew(self) -> float:
        before = time.time()
        remote_now = float(self.remote(self.host).run("date +%s.%N", quiet=True).stdout.strip())
        after = time.time()
        return remote_now - (before + after) / 2

    def _foreign_listeners(self) -> list[str]:
        """Cluster ports held by a process that is not this cluster's etcd/Patroni/PostgreSQL."""
        inv = self.inventory
        ports = {
            inv.postgres.port: ("postgres",),
            inv.patroni.rest_port: ("patroni", "python"),
            inv.etcd.client_port: ("etcd",),
            inv.etcd.peer_port: ("etcd",),
        }
        listing = self.remote(self.host).run("ss -Htlnp", quiet=True, check=False).stdout
        problems = []
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            port = int(fields[3].rsplit(":", 1)[-1])
            if port in ports and not any(f'"{name}' in line for name in ports[port]):
                problems.append(f"port {port} is already in use: {' '.join(fields[5:]) or line}")
        return problems


class PrepareHostOperator(HostOperator):
    """
    Phase 1 on one host: hostname (database nodes), the managed /etc/hosts
    block, the site's package proxy/index, and firewalld ports on RHEL.

    :param host: inventory host name (mapped).
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        remote = self.remote(self.host)
        family = self.os_family(self.host)
        if self.host in inv.database_nodes:
            current = remote.run("hostname", quiet=True).stdout.strip()
            if current != self.host:
                remote.run(f"hostnamectl set-hostname {shlex.quote(self.host)} || hostname {shlex.quote(self.host)}")
            self.note(f"hostname {self.host}", current != self.host)
        hosts_block = render("hosts.j2", hosts=[{"name": h.name, "address": h.address} for h in inv.hosts])
        etc_hosts = replace_block(remote.read_file("/etc/hosts") or "", hosts_block.strip())
        self.note("/etc/hosts managed block", remote.put_file("/etc/hosts", etc_hosts).changed)
        self._package_sources(family.name)
        if family.firewall == "firewalld" and self.host in inv.database_nodes:
            self._open_firewalld()
        if inv.patroni.fast_peer_failure and self.host in inv.database_nodes:
            self._fast_peer_failure()
        return {"os_family": family.name}

    def _fast_peer_failure(self) -> None:
        """Neighbour (ARP) timings on the cluster interface: a dead peer's address fails in ~0.6 s."""
        remote = self.remote(self.host)
        address = self.inventory.host(self.host).address
        interface = remote.run(f"ip -o -4 addr show to {shlex.quote(address)}/32 | awk '{{print $2}}'",
                               quiet=True).stdout.strip()
        if not interface or "\n" in interface:
            raise AirflowException(f"[{self.host}] no single interface carries {address} ({interface!r})")
        conf = render("neighbour-sysctl.conf.j2", interface=interface, settings=NEIGHBOUR_SETTINGS)
        changed = remote.put_file(NEIGHBOUR_SYSCTL, conf).changed
        changed |= remote.put_file(NEIGHBOUR_UNIT_PATH, render("pgha-neighbour.service.j2",
                                                               conf=NEIGHBOUR_SYSCTL)).changed
        if changed:
            remote.run("systemctl daemon-reload && systemctl enable --quiet pgha-neighbour.service")
        live = remote.run(f"sysctl -n net.ipv4.neigh.{interface}.retrans_time_ms", quiet=True).stdout.strip()
        applied = live != str(NEIGHBOUR_SETTINGS["retrans_time_ms"])
        if applied:
            remote.run("systemctl restart pgha-neighbour.service")
        self.note(f"fast peer failure on {interface} ({NEIGHBOUR_SYSCTL})", changed or applied)

    def _package_sources(self, family: str) -> None:
        packages = self.inventory.packages
        remote = self.remote(self.host)
        if packages.apt_proxy and family == "debian":
            content = render("apt-proxy.conf.j2", packages=packages)
            self.note("apt proxy", remote.put_file("/etc/apt/apt.conf.d/90pgha-proxy", content).changed)
        if packages.apt_proxy and family == "rhel":
            result = remote.run(
                f"grep -qx 'proxy={packages.apt_proxy}' /etc/dnf/dnf.conf || "
                f"{{ echo 'proxy={packages.apt_proxy}' >> /etc/dnf/dnf.conf; echo added; }}"
            )
            self.note("dnf proxy", "added" in result.stdout)
        if packages.pip_index_url or packages.pip_find_links:
            content = render("pip.conf.j2", packages=packages, plain_http_hosts=plain_http_hosts(packages))
            self.note("pip index", remote.put_file("/etc/pip.conf", content).changed)

    def _open_firewalld(self) -> None:
        inv = self.inventory
        remote = self.remote(self.host)
        if not remote.run("systemctl is-active --quiet firewalld", check=False).ok:
            self.unchanged("firewalld not running: no ports to open")
            return
        ports = [inv.postgres.port, inv.patroni.rest_port, inv.etcd.client_port, inv.etcd.peer_port]
        opened = []
        for port in ports:
            if not remote.run(f"firewall-cmd --permanent --query-port={port}/tcp", check=False, quiet=True).ok:
                remote.run(f"firewall-cmd --permanent --add-port={port}/tcp")
                opened.append(port)
        if opened:
            remote.run("firewall-cmd --reload")
        self.note(f"firewalld ports {opened or ports}", bool(opened))
