"""The inventory: one YAML file that describes the whole topology.

It is read only from a directory the deployment allows (``allowed_inventory_dirs``) and
validated in two passes: the JSON schema, whose every string field names a type checked
here (``FIELD_TYPES``: IPv4 addresses, absolute paths, http(s) URLs without credentials,
anchored names...), and the cross-field rules a schema cannot express (references between
sections, unique names and ports, Patroni's timing rule). Every problem is reported as
``inventory field <field path>: <problem>``, all before any host is reached.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator, FormatChecker

# Templates, SQL, the schema and the host-side programs ship as package data (pgha.include).
INCLUDE_DIR = Path(str(files("pgha.include")))
SCHEMA_PATH = INCLUDE_DIR / "inventory.schema.json"
DEFAULT_INVENTORY = INCLUDE_DIR / "inventory.yml"
INVENTORY_ENV = "PGHA_INVENTORY"  # the deployment's inventory file
INVENTORY_DIR_ENV = "PGHA_INVENTORY_DIR"  # where inventories may be read from (os.pathsep-separated)
DEFAULT_INVENTORY_DIRS = ("/etc/pgha",)


def _as_field(problem: str) -> str:
    """``inventory field <path>: ...`` for a problem with a field path; file and YAML problems as they are."""
    return problem if problem.startswith(("(", "line ")) else f"inventory field {problem}"


class InventoryError(ValueError):
    """Raised with every problem found, one ``field: problem`` per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {_as_field(p)}" for p in problems)
        super().__init__(f"invalid inventory {source}:\n{lines}")


# ---------------------------------------------------------------- field types
#
# Every string in the inventory has a type (the schema's "format"); the checks below are the
# only ones that accept it. Values end up in shell commands, systemd units, YAML, INI and
# HAProxy files, so each type is a conservative character set matched in full (fullmatch: a
# pattern ending in `$` would let a trailing newline through), without quotes, `$`, `;`,
# backticks, whitespace or control characters.

NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # an RFC 1123 label, lower case
CONN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")
ABS_PATH = re.compile(r"/[A-Za-z0-9._+@/-]{0,4095}")
DURATION = re.compile(r"[0-9]{1,9}(ms|s)")
VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
NAMESPACE = re.compile(r"/([A-Za-z0-9_-]+/)*")
PG_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
NOTIFIER = re.compile(r"smtp|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PG_SETTING = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
# postgresql.conf values reach Patroni's YAML (as JSON strings), never a shell.
PG_SETTING_VALUE = re.compile(r"[A-Za-z0-9 ._:/,=+*%@\[\]-]{0,1024}")
IPV4_NETWORK = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")
UNIT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9@_.:-]{0,250}")
CRON = re.compile(r"@(hourly|daily|weekly|monthly|yearly|annually|midnight)|[0-9*/,A-Za-z-]+( [0-9*/,A-Za-z-]+){4}")
# A fault command is words: a program and its arguments, {node}/{address} filled in quoted.
# Anything that needs a pipe or quoting belongs in a script on the fault injector.
FAULT_COMMAND = re.compile(r"[A-Za-z0-9._/:=@{}+,-]+( [A-Za-z0-9._/:=@{}+,-]+)*")
URL_CHARACTERS = re.compile(r"[A-Za-z0-9._~:/?@&+,=%-]{1,2048}")
URL_SCHEMES = ("http", "https")
DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class FieldTypeError(ValueError):
    """A value that is not of its field's type; the message completes ``<field>: <value> ...``."""


def _matches(pattern: re.Pattern[str], what: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not pattern.fullmatch(value):
            raise FieldTypeError(f"is not {what}")
    return check


def _check_ipv4(value: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise FieldTypeError("is not an IP address") from None
    if address.version != 4 or str(address) != value:
        # pg_hba rules (<address>/32) and URLs (http://<address>:<port>) are written for IPv4.
        raise FieldTypeError("is not an IPv4 address in dotted form (IPv6 is not supported)")


def _check_network(value: str) -> None:
    try:
        if not IPV4_NETWORK.fullmatch(value):
            raise ValueError(value)
        ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise FieldTypeError("is not an IPv4 network in CIDR form (e.g. 192.168.83.0/24)") from None


def _check_abs_path(value: str) -> None:
    if not ABS_PATH.fullmatch(value):
        raise FieldTypeError("is not an absolute path of letters, digits and . _ + @ / - (no spaces, quotes or $)")
    if ".." in value.split("/"):
        raise FieldTypeError("is not an absolute path without '..'")


def _check_url(value: str) -> None:
    if not URL_CHARACTERS.fullmatch(value):
        raise FieldTypeError("is not a URL of letters, digits and . _ ~ : / ? @ & + , = % - "
                             "(no whitespace, quotes, $, ; or backticks)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise FieldTypeError(f"is not a URL ({exc})") from None
    if parts.scheme not in URL_SCHEMES:
        raise FieldTypeError("is not an http:// or https:// URL")
    if not parts.hostname:
        raise FieldTypeError("is not a URL with a host")
    if "@" in parts.netloc:
        raise FieldTypeError("is a URL with credentials: keep secrets out of the inventory")


FIELD_TYPES: dict[str, Callable[[str], None]] = {
    "pgha-name": _matches(NAME, "a name (lower-case letters, digits and '-', at most 63, RFC 1123)"),
    "pgha-conn-id": _matches(CONN_ID, "an Airflow connection id (letters, digits, '_', '.', '-')"),
    "pgha-ipv4": _check_ipv4,
    "pgha-dns-name": _matches(DNS_NAME, "a DNS name (letters, digits, '-' and dots)"),
    "pgha-network": _check_network,
    "pgha-abs-path": _check_abs_path,
    "pgha-url": _check_url,
    "pgha-duration": _matches(DURATION, "a duration such as 250ms or 3s"),
    "pgha-version": _matches(VERSION, "a version (digits, letters, '.', '+', '-')"),
    "pgha-sha256": _matches(SHA256, "a sha256 digest (64 lower-case hex digits)"),
    "pgha-token": _matches(TOKEN, "a token (letters, digits, '_', '.', '-')"),
    "pgha-namespace": _matches(NAMESPACE, "a namespace such as /airflow/"),
    "pgha-pg-identifier": _matches(PG_IDENTIFIER, "a PostgreSQL name (lower-case letters, digits, '_')"),
    "pgha-pg-setting": _matches(PG_SETTING, "a PostgreSQL setting name"),
    "pgha-pg-setting-value": _matches(
        PG_SETTING_VALUE, "a setting value of letters, digits, spaces and . _ : / , = + * % @ [ ] -"),
    "pgha-unit": _matches(UNIT, "a systemd unit name (letters, digits, @ _ . : -)"),
    "pgha-notifier": _matches(NOTIFIER, "smtp or module.path:ClassName"),
    "pgha-email": _matches(EMAIL, "an e-mail address"),
    "pgha-identifier": _matches(IDENTIFIER, "a Python identifier"),
    "pgha-cron": _matches(CRON, "a cron schedule (five fields) or @daily, @hourly, ..."),
    "pgha-fault-command": _matches(
        FAULT_COMMAND, "a command of plain words (letters, digits, . _ / : = @ { } + , -) separated by "
                       "single spaces; put pipes or quoting in a script on the fault injector"),
}


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, check in FIELD_TYPES.items():
        def checks(value: Any, check: Callable[[str], None] = check) -> bool:
            if isinstance(value, str):
                check(value)
            return True
        checker.checks(name, raises=FieldTypeError)(checks)
    return checker


@dataclass(frozen=True)
class Install:
    method: str = "package"
    version: str | None = None
    url: str | None = None
    sha256: str | None = None
    venv: str | None = None


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    ssh_conn_id: str
    os_family: str | None = None


@dataclass(frozen=True)
class Cluster:
    name: str = "airflow-cluster"
    namespace: str = "/airflow/"
    network: str = "192.168.83.0/24"


@dataclass(frozen=True)
class Ssh:
    allow_unverified_host_keys: bool = False
    command_timeout: int = 600


@dataclass(frozen=True)
class Source:
    host: str
    conn_id: str = "pgha_source_db"
    major: int = 13


# Set on the cluster unless postgres.parameters says otherwise. A standby whose primary went away
# retries every wal_retrieve_retry_interval (default 5 s): after the primary restarted in place, the
# sync standby came back 5 s late, commits stalled, and Patroni dropped synchronous replication meanwhile.
DEFAULT_PARAMETERS: dict[str, Any] = {"wal_retrieve_retry_interval": "500ms"}


@dataclass(frozen=True)
class Postgres:
    major: int = 15
    port: int = 5432
    database: str = "airflow_db"
    owner: str = "airflow_user"
    data_dir: str | None = None
    superuser_conn_id: str = "pgha_pg_superuser"
    replication_conn_id: str = "pgha_pg_replication"
    app_conn_id: str = "pgha_airflow_db"
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster_parameters(self) -> dict[str, Any]:
        """What the cluster runs with: pgha's defaults, then the inventory's parameters."""
        return {**DEFAULT_PARAMETERS, **self.parameters}


@dataclass(frozen=True)
class EtcdAuth:
    """etcd RBAC (applies when tls.enabled: passwords never cross the network in clear). Each Connection holds
    one etcd user's login and password: root (login ``root``), Patroni's user (read-write on its keys only)
    and pgha's own (reads Patroni's keys; health, status and members need no grant)."""

    enabled: bool = True
    root_conn_id: str = "pgha_etcd_root"
    patroni_conn_id: str = "pgha_etcd_patroni"
    pgha_conn_id: str = "pgha_etcd_pgha"


@dataclass(frozen=True)
class Etcd:
    client_port: int = 2379
    peer_port: int = 2380
    token: str = "etcd-cluster-airflow"
    data_dir: str = "/var/lib/etcd/pgha"  # not the package's own /var/lib/etcd/default
    install: Install = field(default_factory=Install)
    auth: EtcdAuth = field(default_factory=EtcdAuth)


@dataclass(frozen=True)
class Patroni:
    rest_port: int = 8008
    rest_conn_id: str = "pgha_patroni_api"
    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10
    maximum_lag_on_failover: int = 1048576
    primary_start_timeout: int = 300
    synchronous_mode: str = "true"
    synchronous_mode_strict: bool = False
    # Database nodes learn within ~0.6 s that a peer's address is dead (ARP), instead of waiting out
    # Patroni's hard-coded 2 s probe of the former leader in every leader race (README, "Failover tuning").
    fast_peer_failure: bool = False
    install: Install = field(default_factory=lambda: Install(method="pip", version="4.1.5", venv="/opt/patroni"))


@dataclass(frozen=True)
class HAProxy:
    host: str
    write_port: int = 5433
    read_port: int = 5434
    stats_port: int = 7000
    stats_socket: str = "/run/haproxy/admin.sock"
    config: str = "/etc/haproxy/haproxy.cfg"
    state_file: str = "/var/lib/haproxy/server-state"
    inter: str = "3s"
    fall: int = 3
    rise: int = 2
    fastinter: str | None = None  # between the first failed check and `fall` (default: inter)
    downinter: str | None = None  # while a server is DOWN, e.g. a replica waiting to be promoted (default: inter)
    retries: int = 2  # connection attempts HAProxy retries on a refusing server before the client errs
    # HAProxy waits min(connect_timeout, 1 s) before each retry: on a LAN a shorter connect timeout
    # reaches a primary that restarted in place sooner (the runbook's 4s means 1 s steps).
    connect_timeout: str = "4s"
    install: Install = field(default_factory=Install)


@dataclass(frozen=True)
class AirflowHost:
    host: str
    config: str
    units: tuple[str, ...]


@dataclass(frozen=True)
class PgBouncer:
    """Airflow's own PgBouncer on every Airflow host (pgha.pgbouncer). ``enabled`` once Airflow goes through it
    (the migration's pooler pgbouncer): the drill's switchover then holds Airflow's transactions in it (PAUSE)."""

    enabled: bool = False
    port: int = 6432
    pause_timeout: float = 10  # seconds a PAUSE may wait for Airflow's open transactions
    pool_size: int = 20  # server connections per Airflow host (transaction pooling: one per open transaction)
    max_client_conn: int = 500  # Airflow's client connections to it per host


@dataclass(frozen=True)
class Packages:
    apt_proxy: str | None = None
    pip_index_url: str | None = None
    pip_find_links: str | None = None


@dataclass(frozen=True)
class Tls:
    """TLS on every link (pgha.tls): the CA's Connection, node certificates' lifetime and renewal."""

    enabled: bool = True
    ca_conn_id: str = "pgha_ca"
    days: int = 365  # node certificates
    renew_before_days: int = 30  # phase 3 issues a certificate again this long before it expires
    haproxy_names: tuple[str, ...] = ()  # further names clients reach HAProxy by (DNS, a VIP's name)


DRILL_SCENARIOS = ("switchover", "patroni_stop", "host_crash", "host_isolate", "postmaster_kill")
FAULT_PLACEHOLDERS = {"node", "address"}


@dataclass(frozen=True)
class FaultCommands:
    """Shell commands for a fault the cluster's hosts cannot inflict on themselves."""

    inject: str
    heal: str


@dataclass(frozen=True)
class FaultInjector:
    """The machine that runs ``inject_commands`` (hypervisor, cloud CLI box, lab outer machine)."""

    ssh_conn_id: str
    name: str = "fault-injector"


@dataclass(frozen=True)
class Drill:
    """The nightly failover drill (dags/pg_ha_failover_drill.py)."""

    schedule: str | None = "0 3 * * *"
    probe_host: str | None = None  # default: the HAProxy host
    probe_interval_ms: int = 50
    probe_python: str | None = None  # default: /usr/bin/python3, else the Airflow units' python
    probe_conn_id: str | None = None  # default: postgres.app_conn_id (the client Airflow is)
    state_dir: str = "/var/lib/pgha/drill"
    max_lag_bytes: int = 1048576
    rto_slo_s: dict[str, float] = field(default_factory=dict)
    fault_injector: FaultInjector | None = None
    inject_commands: dict[str, FaultCommands] = field(default_factory=dict)


@dataclass(frozen=True)
class Notify:
    """Where alerts go (pgha.notify): an Airflow notifier, ``smtp`` or ``module.path:ClassName``."""

    notifier: str = "smtp"
    conn_id: str | None = None  # smtp: the SMTP connection (default smtp_default)
    to: tuple[str, ...] = ()  # smtp
    from_email: str | None = None  # smtp, `from:` in the inventory (default: the connection's from_email)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the notifier


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[Host, ...]
    database_nodes: tuple[str, ...]
    source: Source
    haproxy: HAProxy
    airflow_hosts: tuple[AirflowHost, ...]
    cluster: Cluster = field(default_factory=Cluster)
    ssh: Ssh = field(default_factory=Ssh)
    postgres: Postgres = field(default_factory=Postgres)
    etcd: Etcd = field(default_factory=Etcd)
    patroni: Patroni = field(default_factory=Patroni)
    packages: Packages = field(default_factory=Packages)
    pgbouncer: PgBouncer = field(default_factory=PgBouncer)
    tls: Tls = field(default_factory=Tls)
    drill: Drill = field(default_factory=Drill)
    notify: Notify | None = None
    path: str = ""

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"host {name!r} is not in the inventory {self.path}")

    @property
    def db_hosts(self) -> list[Host]:
        return [self.host(name) for name in self.database_nodes]

    @property
    def etcd_auth_enabled(self) -> bool:
        """etcd RBAC is on: etcd.auth.enabled and TLS (a password never crosses the network in clear)."""
        return self.etcd.auth.enabled and self.tls.enabled

    @property
    def patroni_key_prefix(self) -> str:
        """Where Patroni keeps this cluster's keys in etcd: ``/<namespace>/<scope>/`` (Patroni's own rule:
        slashes collapsed), e.g. ``/airflow/airflow-cluster/``."""
        return re.sub("/+", "/", f"/{self.cluster.namespace}/{self.cluster.name}/")

    @property
    def managed_host_names(self) -> list[str]:
        """Every host the migration touches, in inventory order."""
        used = set(self.database_nodes) | {self.haproxy.host, self.source.host}
        used |= {a.host for a in self.airflow_hosts}
        return [h.name for h in self.hosts if h.name in used]

    def airflow_host(self, name: str) -> AirflowHost:
        for airflow_host in self.airflow_hosts:
            if airflow_host.host == name:
                return airflow_host
        raise KeyError(f"{name!r} is not an Airflow host in the inventory {self.path}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _schema_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()), format_checker=_format_checker())


def _field_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: Any) -> str:
    """A jsonschema error as ``field: problem`` in an operator's words."""
    where = _field_path(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{_field_path([*error.absolute_path, missing])}: is required"
    if error.validator == "additionalProperties":
        return f"{where}: unknown field(s) {error.message.split('(')[-1].rstrip(')')}"
    if error.validator == "format" and isinstance(error.cause, FieldTypeError):
        return f"{where}: {error.instance!r} {error.cause}"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} has the wrong format (expected {error.validator_value})"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"{where}: {error.instance!r} is not of type {error.validator_value}"
    return f"{where}: {error.message}"


def _check_references(raw: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    names = [h["name"] for h in raw["hosts"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(f"hosts[{i}].name: duplicate host name {name!r}")
    addresses = [h["address"] for h in raw["hosts"]]
    for i, address in enumerate(addresses):
        if addresses.index(address) != i:
            problems.append(f"hosts[{i}].address: {address!r} is already used by {names[addresses.index(address)]!r}")
    known = set(names)
    for i, node in enumerate(raw["database_nodes"]):
        if node not in known:
            problems.append(f"database_nodes[{i}]: {node!r} is not a host in 'hosts'")
    if len(raw["database_nodes"]) % 2 == 0:
        problems.append(f"database_nodes: etcd needs an odd number of members, got {len(raw['database_nodes'])}")
    for section in ("source", "haproxy"):
        if raw[section]["host"] not in known:
            problems.append(f"{section}.host: {raw[section]['host']!r} is not a host in 'hosts'")
    for i, airflow_host in enumerate(raw["airflow"]["hosts"]):
        if airflow_host["host"] not in known:
            problems.append(f"airflow.hosts[{i}].host: {airflow_host['host']!r} is not a host in 'hosts'")
    probe_host = (raw.get("drill") or {}).get("probe_host")
    if probe_host is not None and probe_host not in known:
        problems.append(f"drill.probe_host: {probe_host!r} is not a host in 'hosts'")
    return problems


def _check_drill(drill: Drill) -> list[str]:
    """Fault commands use only known placeholders and have somewhere to run."""
    problems = []
    for scenario, commands in drill.inject_commands.items():
        for step in ("inject", "heal"):
            text = getattr(commands, step)
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
            except ValueError as exc:
                problems.append(f"drill.inject_commands.{scenario}.{step}: {exc}")
                continue
            unknown = names - FAULT_PLACEHOLDERS
            if unknown:
                problems.append(f"drill.inject_commands.{scenario}.{step}: unknown placeholder(s) "
                                f"{sorted(unknown)} (use {{node}} or {{address}})")
    if drill.inject_commands and drill.fault_injector is None:
        problems.append("drill.fault_injector: is required when drill.inject_commands is set "
                        "(the SSH connection those commands run on)")
    return problems


def _check_ports(inv: Inventory, pgbouncer_set: bool = False) -> list[str]:
    """No two services on one host share a port; ``pgbouncer_set``: the inventory has a ``pgbouncer:`` section,
    and every Airflow host's PgBouncer (127.0.0.1 on ``pgbouncer.port``) is one of them."""
    db_ports = {
        "postgres.port": inv.postgres.port,
        "patroni.rest_port": inv.patroni.rest_port,
        "etcd.client_port": inv.etcd.client_port,
        "etcd.peer_port": inv.etcd.peer_port,
    }
    lb_ports = {
        "haproxy.write_port": inv.haproxy.write_port,
        "haproxy.read_port": inv.haproxy.read_port,
        "haproxy.stats_port": inv.haproxy.stats_port,
    }
    if inv.haproxy.host in inv.database_nodes:
        lb_ports.update(db_ports)
    problems = []
    for ports in (db_ports, lb_ports):
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen and seen[port] != name:
                problems.append(f"{name}: port {port} is already used by {seen[port]}")
            seen.setdefault(port, name)
    if pgbouncer_set:
        for host in dict.fromkeys(a.host for a in inv.airflow_hosts):
            on_host = dict(lb_ports) if host == inv.haproxy.host else {}
            if host in inv.database_nodes:
                on_host.update(db_ports)
            problems += [f"pgbouncer.port: port {port} is already used by {name} on {host} (an Airflow host, "
                         "where PgBouncer listens)" for name, port in on_host.items() if port == inv.pgbouncer.port]
    return sorted(set(problems))


def _check_semantics(inv: Inventory, pgbouncer_set: bool = False) -> list[str]:
    """``pgbouncer_set``: the inventory has a ``pgbouncer:`` section (PgBouncer's pools and port are checked
    only then: a site that runs no PgBouncer opens no pool)."""
    problems = _check_ports(inv, pgbouncer_set)
    p = inv.patroni
    if p.loop_wait + 2 * p.retry_timeout > p.ttl:
        problems.append(
            f"patroni.retry_timeout: loop_wait + 2 * retry_timeout = {p.loop_wait + 2 * p.retry_timeout} "
            f"exceeds ttl = {p.ttl} (Patroni would silently lower them)"
        )
    if inv.source.major > inv.postgres.major:
        problems.append(
            f"postgres.major: target {inv.postgres.major} is older than source.major {inv.source.major}; "
            "pg_dump/restore and logical replication only move data to the same or a newer major"
        )
    if p.install.method == "tarball":
        problems.append("patroni.install.method: 'tarball' is not supported for Patroni (use pip or package)")
    if inv.haproxy.install.method != "package":
        problems.append(f"haproxy.install.method: {inv.haproxy.install.method!r} is not supported (use package)")
    if inv.etcd.install.method == "pip":
        problems.append("etcd.install.method: 'pip' is not supported for etcd (use package or tarball)")
    if inv.tls.renew_before_days >= inv.tls.days:
        problems.append(f"tls.renew_before_days: {inv.tls.renew_before_days} is not below tls.days = {inv.tls.days} "
                        "(every run would issue every certificate again)")
    if inv.tls.enabled and inv.haproxy.host in inv.database_nodes:
        problems.append(f"haproxy.host: {inv.haproxy.host!r} is a database node; every session through HAProxy would "
                        "come from a member's address, where the cluster superuser needs no client certificate "
                        "(a password alone would let it in through HAProxy): put HAProxy on a host of its own or "
                        "an Airflow host")
    if inv.tls.enabled:
        for key in inv.postgres.parameters:
            if key == "ssl" or key.startswith("ssl_"):
                problems.append(f"postgres.parameters.{key}: not allowed with tls.enabled (pgha sets PostgreSQL's "
                                "ssl settings from the cluster's certificates)")
    for key in inv.postgres.parameters:
        if key in {"wal_keep_segments", "synchronous_standby_names"}:
            why = "removed in PostgreSQL 13, use wal_keep_size" if key == "wal_keep_segments" else "owned by Patroni"
            problems.append(f"postgres.parameters.{key}: not allowed ({why})")
    pool = _check_pool(inv) if pgbouncer_set else []
    return problems + pool + _check_drill(inv.drill) + _check_notify(inv.notify)


# PostgreSQL's defaults for the settings the pools must fit in (reserved_connections: PostgreSQL 16+)
POOL_LIMITS = {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0}


def _check_pool(inv: Inventory) -> list[str]:
    """Every Airflow host's PgBouncer may open pool_size server connections: together they must fit in the
    cluster's max_connections less the slots kept for superusers (Patroni, pgha) and, on PostgreSQL 16+,
    for roles with pg_use_reserved_connections, or Airflow's transactions would fail with "too many clients"
    once the pools fill. Every problem is named."""
    problems: list[str] = []
    params = inv.postgres.parameters
    limits: dict[str, int] = {}
    for key, default in POOL_LIMITS.items():
        value = params.get(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            limits[key] = int(float(value))  # 200, "200" and "200.0" alike
        except (TypeError, ValueError, OverflowError):
            problems.append(f"postgres.parameters.{key}: {value!r} is not a number (pgbouncer.pool_size must fit "
                            "in max_connections less the reserved connections)")
    pool_size, hosts = inv.pgbouncer.pool_size, len(inv.airflow_hosts)
    if len(limits) == len(POOL_LIMITS):
        superuser, reserved = limits["superuser_reserved_connections"], limits["reserved_connections"]
        less = f"{superuser} superuser_reserved_connections"
        if "reserved_connections" in params:
            less += f" and {reserved} reserved_connections"
        if pool_size * hosts > limits["max_connections"] - superuser - reserved:
            problems.append(f"pgbouncer.pool_size: {pool_size} server connections on each of {hosts} Airflow "
                            f"host(s) = {pool_size * hosts}, more than the cluster's max_connections "
                            f"{limits['max_connections']} less {less}: lower it or raise "
                            "postgres.parameters.max_connections")
    if inv.pgbouncer.max_client_conn < pool_size:
        problems.append(f"pgbouncer.max_client_conn: {inv.pgbouncer.max_client_conn} is below pgbouncer.pool_size "
                        f"{pool_size} (the pool could never fill)")
    return problems


def _check_notify(notify: Notify | None) -> list[str]:
    """The notifier can be imported and built with its arguments (pgha.notify)."""
    if notify is None:
        return []
    from pgha.notify import notify_problems  # imports the notifier's module: only when there is one

    return notify_problems(notify)


def _tls(raw: dict[str, Any] | None) -> Tls:
    values = dict(raw or {})
    values["haproxy_names"] = tuple(values.get("haproxy_names") or ())
    return Tls(**values)


def _install(raw: dict[str, Any] | None, default: Install) -> Install:
    return Install(**raw) if raw else default


def _drill(raw: dict[str, Any] | None) -> Drill:
    values = dict(raw or {})
    if values.get("fault_injector"):
        values["fault_injector"] = FaultInjector(**values["fault_injector"])
    values["inject_commands"] = {k: FaultCommands(**v) for k, v in (values.get("inject_commands") or {}).items()}
    return Drill(**values)


def _notify(raw: dict[str, Any] | None) -> Notify | None:
    if raw is None:
        return None
    values = dict(raw)
    if "from" in values:
        values["from_email"] = values.pop("from")
    values["to"] = tuple(values.get("to") or ())
    return Notify(**values)


def _build(raw: dict[str, Any], source: str) -> Inventory:
    def section(cls: type, key: str, **extra: Any) -> Any:
        values = dict(raw.get(key) or {})
        if "install" in values:
            values["install"] = _install(values["install"], cls().install if key != "haproxy" else Install())
        if key == "etcd" and "auth" in values:
            values["auth"] = EtcdAuth(**values["auth"])
        values.update(extra)
        return cls(**values)

    haproxy_raw = dict(raw["haproxy"])
    if "install" in haproxy_raw:
        haproxy_raw["install"] = Install(**haproxy_raw["install"])
    return Inventory(
        hosts=tuple(Host(**h) for h in raw["hosts"]),
        database_nodes=tuple(raw["database_nodes"]),
        source=Source(**raw["source"]),
        haproxy=HAProxy(**haproxy_raw),
        airflow_hosts=tuple(
            AirflowHost(host=a["host"], config=a["config"], units=tuple(a["units"])) for a in raw["airflow"]["hosts"]
        ),
        cluster=section(Cluster, "cluster"),
        ssh=section(Ssh, "ssh"),
        postgres=section(Postgres, "postgres"),
        etcd=section(Etcd, "etcd"),
        patroni=section(Patroni, "patroni"),
        packages=section(Packages, "packages"),
        pgbouncer=section(PgBouncer, "pgbouncer"),
        tls=_tls(raw.get("tls")),
        drill=_drill(raw.get("drill")),
        notify=_notify(raw.get("notify")),
        path=source,
    )


def parse_inventory(raw: Any, source: str = "<inline>") -> Inventory:
    """Validate an already-parsed YAML document and build the model."""
    if not isinstance(raw, dict):
        raise InventoryError(source, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    errors = sorted(_schema_validator().iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise InventoryError(source, [_describe(e) for e in errors])
    problems = _check_references(raw)
    if problems:
        raise InventoryError(source, problems)
    inventory = _build(raw, source)
    problems = _check_semantics(inventory, pgbouncer_set="pgbouncer" in raw)
    if problems:
        raise InventoryError(source, problems)
    return inventory


def inventory_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The inventory to use: the argument, else $PGHA_INVENTORY, else the shipped default."""
    chosen = path or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY
    chosen = Path(chosen)
    if not chosen.is_absolute():
        chosen = INCLUDE_DIR.parent / chosen
    return chosen


def allowed_inventory_dirs() -> list[Path]:
    """Where an inventory may be read from (symlinks resolved).

    The directories in $PGHA_INVENTORY_DIR (``os.pathsep``-separated; default /etc/pgha), the
    packaged example's directory and the directory of $PGHA_INVENTORY: all set by the
    deployment, never by whoever triggers a run with an ``inventory_path`` Param.
    """
    configured = os.environ.get(INVENTORY_DIR_ENV)
    entries = [d for d in configured.split(os.pathsep) if d] if configured else list(DEFAULT_INVENTORY_DIRS)
    relative = [d for d in entries if not os.path.isabs(d)]
    if relative:
        raise InventoryError(f"${INVENTORY_DIR_ENV}", [f"(environment): {INVENTORY_DIR_ENV} entries must be "
                                                      f"absolute directories, got {relative}"])
    dirs = [Path(d) for d in entries] + [INCLUDE_DIR]
    if os.environ.get(INVENTORY_ENV):
        dirs.append(inventory_path(os.environ[INVENTORY_ENV]).parent)
    return list(dict.fromkeys(d.resolve() for d in dirs))


def _confined(chosen: Path) -> Path:
    """``chosen`` with symlinks and '..' resolved, refused unless it lies in an allowed directory."""
    resolved = chosen.resolve()
    allowed = allowed_inventory_dirs()
    if not any(resolved.is_relative_to(d) for d in allowed):
        shown = repr(str(chosen)) + (f" (resolved: {str(resolved)!r})" if resolved != chosen else "")
        raise InventoryError(str(chosen), [
            f"(inventory_path): {shown} is outside the inventory directories {[str(d) for d in allowed]}; "
            f"put the inventory there or add its directory to {INVENTORY_DIR_ENV} in the Airflow hosts' environment"
        ])
    return resolved


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Read, validate and return the inventory; raises InventoryError naming every problem.

    The file must lie in one of ``allowed_inventory_dirs()``: an ``inventory_path`` Param that
    points elsewhere (directly, through '..' or through a symlink) is refused before it is read.
    """
    resolved = _confined(inventory_path(path))
    try:
        text = resolved.read_text()
    except OSError as exc:
        raise InventoryError(str(resolved), [f"(file): cannot read: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise InventoryError(str(resolved), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    return parse_inventory(raw, str(resolved))
