"""Preflight and phase 1: the inventory, the hosts, names, packages sources, firewall."""

from __future__ import annotations

import inspect
from typing import Any

from airflow.sdk import BaseOperator
from pgha.compat import AirflowException, BaseHook
from pgha.render import plain_http_hosts, render
from pgha.runtime import InventoryMixin

from pgha.operators.base import HostOperator, PghaOperator

HOSTS_BEGIN = "# BEGIN pgha managed hosts"
HOSTS_END = "# END pgha managed hosts"
MAX_CLOCK_SKEW_S = 2.0
NEIGHBOUR_SYSCTL = "/etc/sysctl.d/60-pgha-neighbour.conf"
NEIGHBOUR_UNIT = "pgha-neighbour.service"
APT_PROXY_CONF = "/etc/apt/apt.conf.d/90pgha-proxy"
DNF_CONF = "/etc/dnf/dnf.conf"
LOGICAL = "logical_replication"
# SELinux port types on a database node (RHEL's targeted policy): Patroni's REST API is HTTP (8008 is
# http_port_t already), PostgreSQL's port postgresql_port_t (5432 is already). etcd has no type of its
# own in the policy and runs unconfined (unconfined_service_t), like Patroni: its ports need no label.
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

    dry_run_mode = "check"  # it only reads: a dry run runs it as any run does

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
        if inv.etcd_auth_enabled:  # etcd RBAC (on by default with TLS): phase 3 creates these users
            auth = inv.etcd.auth
            needed.update({auth.root_conn_id: "etcd's root (etcd.auth)", auth.patroni_conn_id: "Patroni's etcd user",
                           auth.pgha_conn_id: "pgha's etcd user"})
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
    dry_run_mode = "check"  # it only reads the inventory: a dry run runs it as any run does

    def __init__(self, *, role: str, inventory_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**{"doc_md": inspect.getdoc(type(self)), **kwargs})
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

    dry_run_mode = "check"  # it only reads: a dry run runs it as any run does

    def __init__(self, *, min_free_mb: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_free_mb = min_free_mb

    def run(self, context: Any) -> Any:
        host = self.host_hook(self.host)
        problems: list[str] = []
        whoami = host.whoami()
        if whoami != "root":
            problems.append(f"cannot become root (id -un says {whoami!r}): passwordless sudo is required")
        family = host.family
        free_mb = host.free_mb("/var")
        if free_mb < self.min_free_mb:
            problems.append(f"only {free_mb} MB free under /var, need {self.min_free_mb} MB")
        skew = host.clock_skew()
        if abs(skew) > MAX_CLOCK_SKEW_S:
            problems.append(f"clock differs from the Airflow worker by {skew:+.1f}s (limit {MAX_CLOCK_SKEW_S}s)")
        if self.host in self.inventory.database_nodes:
            problems += self._foreign_listeners(host.listeners())
        if problems:
            raise AirflowException(f"[{self.host}] preflight failed:\n  - " + "\n  - ".join(problems))
        self.log.info("[%s] ok: %s, %d MB free, clock skew %+.2fs", self.host, family.name, free_mb, skew)
        return {"os_family": family.name, "free_mb": free_mb, "clock_skew_s": round(skew, 2)}

    def _foreign_listeners(self, listeners: dict[int, str]) -> list[str]:
        """Cluster ports held by a process that is not this cluster's etcd/Patroni/PostgreSQL."""
        inv = self.inventory
        owners = {
            inv.postgres.port: ("postgres",),
            inv.patroni.rest_port: ("patroni", "python"),
            inv.etcd.client_port: ("etcd",),
            inv.etcd.peer_port: ("etcd",),
        }
        return [
            f"port {port} is already in use: {' '.join(listeners[port].split()[5:]) or listeners[port]}"
            for port, names in owners.items()
            if port in listeners and not any(f'"{name}' in listeners[port] for name in names)
        ]


class PrepareHostOperator(HostOperator):
    """
    Phase 1 on one host: hostname (database nodes), the managed /etc/hosts
    block, the site's package proxy/index, and on the RHEL family: PGDG's
    repository (database nodes), the cluster's ports in firewalld where it
    runs and their SELinux labels where SELinux enforces; on the source host,
    its PostgreSQL port when the run's method is logical replication (the
    cluster's subscription connects to it).

    :param host: inventory host name (mapped).
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        inv = self.inventory
        host = self.host_hook(self.host)
        is_db_node = self.host in inv.database_nodes
        if is_db_node:
            self.note(f"hostname {self.host}", host.ensure_hostname(self.host))
        hosts_block = render("hosts.j2", hosts=[{"name": h.name, "address": h.address} for h in inv.hosts])
        etc_hosts = replace_block(host.read_file("/etc/hosts") or "", hosts_block.strip())
        self.note("/etc/hosts managed block", host.put_file("/etc/hosts", etc_hosts).changed)
        self._package_sources()
        if is_db_node:
            self._postgres_repository()
            self._open_cluster_ports()
            self._label_cluster_ports()
        if self.host == inv.source.host and (context.get("params") or {}).get("migration_method") == LOGICAL:
            self._open_source_port()
        if inv.patroni.fast_peer_failure and is_db_node:
            self._fast_peer_failure()
        return {"os_family": host.family.name}

    def _fast_peer_failure(self) -> None:
        """Neighbour (ARP) timings on the cluster interface: a dead peer's address fails in ~0.6 s."""
        host = self.host_hook(self.host)
        interface = host.interface_of(self.inventory.host(self.host).address)
        conf = render("neighbour-sysctl.conf.j2", interface=interface, settings=NEIGHBOUR_SETTINGS)
        changed = host.put_file(NEIGHBOUR_SYSCTL, conf).changed
        changed |= host.install_unit(NEIGHBOUR_UNIT, render("pgha-neighbour.service.j2", conf=NEIGHBOUR_SYSCTL))
        changed |= host.enable(NEIGHBOUR_UNIT)
        live = host.sysctl(f"net.ipv4.neigh.{interface}.retrans_time_ms")
        applied = live != str(NEIGHBOUR_SETTINGS["retrans_time_ms"])
        if applied:
            host.restart(NEIGHBOUR_UNIT)
        self.note(f"fast peer failure on {interface} ({NEIGHBOUR_SYSCTL})", changed or applied)

    def _package_sources(self) -> None:
        packages = self.inventory.packages
        host = self.host_hook(self.host)
        if packages.apt_proxy and host.family.name == "debian":
            content = render("apt-proxy.conf.j2", packages=packages)
            self.note("apt proxy", host.put_file(APT_PROXY_CONF, content).changed)
        if packages.apt_proxy and host.family.name == "rhel":
            current = host.read_file(DNF_CONF) or "[main]\n"
            self.note("dnf proxy", host.put_file(DNF_CONF, with_dnf_proxy(current, packages.apt_proxy)).changed)
        if packages.pip_index_url or packages.pip_find_links:
            content = render("pip.conf.j2", packages=packages, plain_http_hosts=plain_http_hosts(packages))
            self.note("pip index", host.put_file("/etc/pip.conf", content).changed)

    def _postgres_repository(self) -> None:
        """PGDG's repository package, and the dnf modules that would shadow its packages disabled."""
        host = self.host_hook(self.host)
        family = host.family
        if family.postgres_repo:
            name, source = family.postgres_repo
            self.note(f"repository package {name}", host.ensure_repo_package(name, source))
        if family.modules_to_disable:
            disabled = host.ensure_modules_disabled(list(family.modules_to_disable))
            self.note(f"dnf modules disabled: {' '.join(family.modules_to_disable)}", bool(disabled))

    def _open_cluster_ports(self) -> None:
        inv = self.inventory
        self._open([inv.postgres.port, inv.patroni.rest_port, inv.etcd.client_port, inv.etcd.peer_port])

    def _open_source_port(self) -> None:
        port = BaseHook.get_connection(self.inventory.source.conn_id).port or 5432
        self._open([port])

    def _open(self, ports: list[int]) -> None:
        opened = self.host_hook(self.host).open_ports(ports)
        if opened is None:
            self.unchanged("no active firewalld: no ports to open")
        else:
            self.note(f"firewalld ports {opened or ports}", bool(opened))

    def _label_cluster_ports(self) -> None:
        inv = self.inventory
        host = self.host_hook(self.host)
        if not host.selinux_enforcing():
            return
        labels = {inv.patroni.rest_port: "http_port_t", inv.postgres.port: "postgresql_port_t"}
        changed = host.ensure_port_labels(labels)
        self.note(f"SELinux port labels {changed or sorted(labels.items())}", bool(changed))


def with_dnf_proxy(dnf_conf: str, proxy: str) -> str:
    """dnf.conf with ``proxy=`` in [main] set to ``proxy`` (replaced if present, else added)."""
    lines = dnf_conf.splitlines()
    wanted = f"proxy={proxy}"
    for i, line in enumerate(lines):
        if line.replace(" ", "").startswith("proxy="):
            lines[i] = wanted
            return "\n".join(lines) + "\n"
    main = lines.index("[main]") + 1 if "[main]" in lines else 0
    if main == 0:
        lines.insert(0, "[main]")
        main = 1
    lines.insert(main, wanted)
    return "\n".join(lines) + "\n"
