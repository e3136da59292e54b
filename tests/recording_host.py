"""A recording fake of one host, standing where RemoteHook stands.

``FakeHost`` simulates a Debian 12 or a Rocky 9 host in memory (packages,
files with owner and mode, systemd units, users, sysctl, firewalld ports,
hostname, os-release) and answers the commands HostHook and the operators
send, by a rule table. It records every command in order, marking the ones
that change the host. A command no rule knows is recorded and fails the test
(``UnknownCommand``), so a new command is noticed and given a rule here.

``fleet`` (pytest fixture) makes ``InventoryMixin.connect_remote(host)`` return the
fleet's FakeHost for that host name, so operators and HostHook run unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pgha.hooks.remote import CommandFailed, CommandResult, FileChange
from pgha.runtime import InventoryMixin

DEBIAN_12 = "debian12"
ROCKY_9 = "rocky9"

OS_RELEASE = {
    DEBIAN_12: 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
    ROCKY_9: 'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
             'VERSION_ID="9.4"\nPRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n',
}
PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin")
ETCD_TARBALL_URL = "https://releases.example/etcd-v3.5.9-linux-amd64.tar.gz"
ETCD_TARBALL_SHA256 = hashlib.sha256(b"etcd-v3.5.9").hexdigest()


def etcd_version(version: str) -> str:
    return f"etcd Version: {version}\nGit SHA: 0000000\nGo Version: go1.19\nGo OS/Arch: linux/amd64\n"


@dataclass(frozen=True)
class Package:
    binaries: dict[str, str] = field(default_factory=dict)  # path -> what `path --version` prints
    units: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # unit -> (enabled, active) after install
    files: dict[str, str] = field(default_factory=dict)
    users: tuple[str, ...] = ()


def _postgres_debian(major: int) -> Package:
    return Package(
        binaries={f"/usr/lib/postgresql/{major}/bin/postgres": f"postgres (PostgreSQL) {major}.14 (Debian {major}.14-0+deb12u1)"},
        units={"postgresql.service": (True, True)}, users=("postgres",),
    )


CATALOGUE: dict[str, dict[str, Package]] = {
    DEBIAN_12: {
        "postgresql-15": _postgres_debian(15),
        "postgresql-client-15": Package(binaries={"/usr/lib/postgresql/15/bin/psql": "psql (PostgreSQL) 15.14"}),
        "etcd-server": Package(binaries={"/usr/bin/etcd": etcd_version("3.4.23")},
                               units={"etcd.service": (True, True)}, users=("etcd",)),
        "etcd-client": Package(binaries={"/usr/bin/etcdctl": "etcdctl version: 3.4.23\nAPI version: 3.4"}),
        "haproxy": Package(binaries={"/usr/sbin/haproxy": "HAProxy version 2.6.12-1+deb12u1 2023/12/16 - "
                                                          "https://haproxy.org/\nStatus: long-term supported branch"},
                           units={"haproxy.service": (True, True)},
                           files={"/etc/haproxy/haproxy.cfg": "global\n\tlog /dev/log local0\n"}, users=("haproxy",)),
        "socat": Package(binaries={"/usr/bin/socat": "socat by Gerhard Rieger and contributors - see www.dest-unreach.org"}),
        "python3": Package(binaries={"/usr/bin/python3": "Python 3.11.2"}),
        "python3-venv": Package(),
        "patroni": Package(binaries={"/usr/bin/patroni": "patroni 3.0.2"}, units={"patroni.service": (True, False)}),
        "python3-etcd": Package(),
    },
    ROCKY_9: {
        "postgresql-server": Package(units={"postgresql.service": (False, False)}, users=("postgres",)),  # + stream
        "postgresql-contrib": Package(),
        "haproxy": Package(binaries={"/usr/sbin/haproxy": "HAProxy version 2.4.22-f8e3218 2023/02/14 - "
                                                          "https://haproxy.org/\nStatus: long-term supported branch"},
                           units={"haproxy.service": (False, False)},
                           files={"/etc/haproxy/haproxy.cfg": "global\n    log 127.0.0.1 local2\n"}, users=("haproxy",)),
        "socat": Package(binaries={"/usr/bin/socat": "socat by Gerhard Rieger and contributors - see www.dest-unreach.org"}),
        "python3": Package(binaries={"/usr/bin/python3": "Python 3.9.18"}),
        "python3-pip": Package(),
    },
}
ROCKY_DEFAULT_POSTGRES_STREAM = "13"
PGDG_MAJORS = (13, 15, 16, 17)
PGDG_REPO_RPM_9 = "https://download.postgresql.org/pub/repos/yum/reporpms/EL-9-x86_64/pgdg-redhat-repo-latest.noarch.rpm"
PGDG_EXTRAS_9 = "pgdg-rhel9-extras"


def _postgres_pgdg(major: int) -> Package:
    return Package(binaries={f"/usr/pgsql-{major}/bin/postgres": f"postgres (PostgreSQL) {major}.6"},
                   units={f"postgresql-{major}.service": (False, False)}, users=("postgres",))


# PGDG on Rocky 9: the repository package (installed from its URL), the server packages of each major,
# and in the extras repository (disabled by default) etcd and Patroni.
CATALOGUE[ROCKY_9].update({
    "pgdg-redhat-repo": Package(files={"/etc/yum.repos.d/pgdg-redhat-all.repo": "[pgdg-common]\nenabled=1\n"
                                                                                "[pgdg-rhel9-extras]\nenabled=0\n"}),
    **{f"postgresql{major}-server": _postgres_pgdg(major) for major in PGDG_MAJORS},
    **{f"postgresql{major}-contrib": Package() for major in PGDG_MAJORS},
    "etcd": Package(binaries={"/usr/bin/etcd": etcd_version("3.5.21"), "/usr/bin/etcdctl": "etcdctl version: 3.5.21"},
                    units={"etcd.service": (False, False)}, users=("etcd",)),
    "patroni": Package(binaries={"/usr/bin/patroni": "patroni 4.0.6"}, units={"patroni.service": (False, False)}),
    "patroni-etcd": Package(),
    "policycoreutils-python-utils": Package(binaries={"/usr/sbin/semanage": "semanage"}),
})
# Where each Rocky 9 package comes from: PGDG's packages need its repository package; the extras also
# need --enablerepo. The rest is in BaseOS/AppStream.
PACKAGE_REPOS = {**{name: "pgdg" for name in CATALOGUE[ROCKY_9] if name.startswith("postgresql") and name[10:12].isdigit()},
                 "etcd": PGDG_EXTRAS_9, "patroni": PGDG_EXTRAS_9, "patroni-etcd": PGDG_EXTRAS_9}
PACKAGE_URLS = {PGDG_REPO_RPM_9.replace("EL-9", f"EL-{release}"): "pgdg-redhat-repo" for release in (8, 9, 10)}
# A few of RHEL 9's targeted policy's TCP port types (semanage port -l), the ones pgha's ports meet.
SELINUX_POLICY_PORTS = {80: "http_port_t", 443: "http_port_t", 8008: "http_port_t", 8009: "http_port_t",
                        5432: "postgresql_port_t", 7000: "gatekeeper_port_t", 5000: "commplex_main_port_t"}


class UnknownCommand(AssertionError):
    """A command no rule of the fake knows: add a rule (and check the command is meant)."""


@dataclass
class FakeFile:
    content: str
    owner: str = "root"
    group: str = "root"
    mode: str = "644"


@dataclass
class Unit:
    enabled: bool = False
    active: bool = False


@dataclass(frozen=True)
class Recorded:
    command: str
    mutating: bool
    exit_code: int
    killable: bool = False


Handler = Callable[["FakeHost", "re.Match[str]", "str | None"], tuple[int, str, str]]


class FakeHost:
    """One simulated host; see the module docstring."""

    login = "root"

    def __init__(self, name: str, os: str = DEBIAN_12, address: str = "10.0.0.1", interface: str = "eth0") -> None:
        self.host_name = name
        self.os = os
        self.address = address
        self.files: dict[str, FakeFile] = {"/etc/os-release": FakeFile(OS_RELEASE[os]),
                                           "/etc/hosts": FakeFile("127.0.0.1\tlocalhost\n")}
        self.dirs: dict[str, tuple[str, str, str]] = {d: ("root", "root", "755") for d in
                                                      ("/", "/etc", "/var", "/var/lib", "/opt", "/run", "/usr")}
        self.packages: set[str] = set()
        self.units: dict[str, Unit] = {}
        self.users: set[str] = {"root"}
        self.interfaces = {address: interface}
        self.sysctl: dict[str, str] = {f"net.ipv4.neigh.{interface}.{k}": v for k, v in
                                       (("retrans_time_ms", "1000"), ("base_reachable_time_ms", "30000"))}
        self.firewalld_ports: set[int] = set()
        self.selinux = "Disabled"  # getenforce on a RHEL-family host
        self.selinux_ports: dict[int, str] = dict(SELINUX_POLICY_PORTS)
        self.selinux_booleans: dict[str, bool] = {"haproxy_connect_any": False}
        self.hostname = "localhost"
        self.binaries: dict[str, str] = {}
        self.free_mb = 20480
        self.listeners = ""  # `ss -Htlnp` output
        self.haproxy_valid: Callable[[str], bool] = lambda text: "INVALID" not in text
        self.haproxy_stat = ""  # `show stat` CSV answered on the stats socket
        self.haproxy_servers_state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n"  # `show servers state`
        self.downloads = {ETCD_TARBALL_URL: (ETCD_TARBALL_SHA256, {"etcd": etcd_version("3.5.9"),
                                                                   "etcdctl": "etcdctl version: 3.5.9"})}
        self.python_modules: set[str] = set()  # what `<python> -c 'import X'` finds, for every interpreter
        self.transient: dict[str, list[str]] = {}  # systemd-run unit -> its command line
        self.on_start: dict[str, Callable[[], None]] = {}  # unit -> what (re)starting it does outside the fake
        self.postgres: Any = None  # a pgdata.Endpoint: the real server `runuser -u postgres -- psql` reaches
        self.commands: list[Recorded] = []
        self.warnings: list[str] = []
        self._stale_units: set[str] = set()
        self._secrets: set[str] = set()
        if os == ROCKY_9:
            self.files["/etc/dnf/dnf.conf"] = FakeFile("[main]\ngpgcheck=1\ninstallonly_limit=3\n")
            self.units["firewalld.service"] = Unit(enabled=True, active=True)
            self.binaries["/usr/bin/firewall-cmd"] = "1.3.4"
            self.binaries["/usr/sbin/getenforce"] = "getenforce"
            self.selinux = "Enforcing"
            self.hostname = "localhost.localdomain"

    # ------------------------------------------------------------ what the tests read

    def mutations(self) -> list[str]:
        return [c.command for c in self.commands if c.mutating]

    def ran(self, pattern: str) -> list[str]:
        """Recorded commands matching a regex (searched)."""
        return [c.command for c in self.commands if re.search(pattern, c.command)]

    def forget(self) -> None:
        """Start a new recording (the host's state stays)."""
        self.commands.clear()

    # ------------------------------------------------------------ RemoteHook's interface

    @property
    def running(self) -> list[Any]:
        return []

    def kill_running(self, grace: int = 10) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def add_secret(self, *secrets: str | None) -> None:
        self._secrets.update(s for s in secrets if s)

    def mask(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def run(self, command: str, *, sudo: bool = True, stdin: str | bytes | None = None, timeout: float | None = None,
            check: bool = True, log_as: str | None = None, quiet: bool = False,
            killable: bool = False) -> CommandResult:
        for pattern, rule_mutates, handler in RULES:
            match = pattern.fullmatch(command)
            if match:
                stdin_text = stdin.decode() if isinstance(stdin, bytes) else stdin
                exit_code, out, err = handler(self, match, stdin_text)
                mutating = rule_mutates if rule_mutates is not None else not reads_only(stdin_text or "")
                break
        else:
            self.commands.append(Recorded(command, True, -1, killable))
            raise UnknownCommand(f"[{self.host_name}] no rule for: {command}")
        shown = self.mask(log_as or command)
        self.commands.append(Recorded(shown, mutating, exit_code, killable))
        result = CommandResult(self.host_name, shown, exit_code, self.mask(out), self.mask(err), 0.0)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def read_file(self, path: str) -> str | None:
        result = self.run(f"cat {shlex.quote(path)}", check=False, quiet=True)
        return result.stdout if result.ok else None

    def put_file(self, path: str, content: str, *, owner: str = "root", group: str | None = None,
                 mode: str = "0644", secret: bool = False) -> FileChange:
        group = group or owner
        new = FakeFile(content, owner, group, f"{int(mode, 8):o}")
        old = self.files.get(path)
        changed = old != new
        self._require_parent(path)
        if changed:
            self.files[path] = new
            if path.startswith("/etc/systemd/system/"):
                self._stale_units.add(path.rsplit("/", 1)[1])
        self.commands.append(Recorded(f"put_file {path} ({owner}:{group} {mode})", changed, 0))
        digest = hashlib.sha256(content.encode()).hexdigest()
        return FileChange(self.host_name, path, changed, hashlib.sha256(old.content.encode()).hexdigest() if old else None,
                          digest)

    # ------------------------------------------------------------ state helpers

    def install_package(self, name: str) -> None:
        """Install as the package manager would (also for preparing a host in a test)."""
        package = CATALOGUE[self.os][name]
        self.packages.add(name)
        self.binaries.update(package.binaries)
        for path, content in package.files.items():
            self.files.setdefault(path, FakeFile(content))
        self.users.update(package.users)
        for unit, (enabled, active) in package.units.items():
            self.units[unit] = Unit(enabled, active)
        if name == "postgresql-server":
            stream = self._module_stream("postgresql") or ROCKY_DEFAULT_POSTGRES_STREAM
            self.binaries["/usr/bin/postgres"] = f"postgres (PostgreSQL) {stream}.20"
        if name.startswith("postgresql-") and self.os == DEBIAN_12 and name[11:].isdigit():
            conf = self.files.get("/etc/postgresql-common/createcluster.d/50-pgha.conf")
            if not conf or "create_main_cluster = false" not in conf.content:  # Debian creates "main" and starts it
                major = name[11:]
                self.files[f"/var/lib/postgresql/{major}/main/PG_VERSION"] = FakeFile(f"{major}\n", "postgres", "postgres")

    def apply_sysctl_unit(self, unit: str) -> None:
        """A oneshot unit that runs ``sysctl -p FILE`` applies FILE's settings."""
        text = self.files.get(f"/etc/systemd/system/{unit}", FakeFile("")).content
        match = re.search(r"^ExecStart=\S*sysctl .*-p (\S+)$", text, re.M)
        if match and match[1] in self.files:
            for line in self.files[match[1]].content.splitlines():
                key, sep, value = line.partition("=")
                if sep and not key.startswith("#") and key.strip() in self.sysctl:
                    self.sysctl[key.strip()] = value.strip()

    def _repo_offers(self, package: str, enabled: set[str]) -> bool:
        """A Rocky 9 package is offered by an enabled repository (PGDG's only once its repository package is in)."""
        repo = PACKAGE_REPOS.get(package)
        if repo is None:
            return True
        return "pgdg-redhat-repo" in self.packages and (repo == "pgdg" or repo in enabled)

    def _module_stream(self, module: str) -> str | None:
        state = self.files.get(f"/etc/dnf/modules.d/{module}.module")
        if state and "state=enabled" in state.content:
            return re.search(r"^stream=(\S+)$", state.content, re.M).group(1)  # type: ignore[union-attr]
        return None

    def _require_parent(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        while parent not in self.dirs:
            self.dirs[parent] = ("root", "root", "755")
            parent = parent.rsplit("/", 1)[0] or "/"

    def unit(self, name: str) -> Unit | None:
        name = name if "." in name else f"{name}.service"
        if name in self.units:
            return self.units[name]
        if f"/etc/systemd/system/{name}" in self.files:
            self.units[name] = Unit()
            return self.units[name]
        return None

    def which(self, program: str) -> str | None:
        if program.startswith("/"):
            return program if program in self.binaries else None
        return next((f"{d}/{program}" for d in PATH_DIRS if f"{d}/{program}" in self.binaries), None)


# ---------------------------------------------------------------- the rule table

RULES: list[tuple[re.Pattern[str], bool | None, Handler]] = []
# SQL that only reads: a SELECT or SHOW calling none of the functions that change the server.
WRITING_FUNCTIONS = re.compile(r"\bpg_(drop|create|reload|terminate|cancel|promote|switch)\w*\(", re.I)


def reads_only(sql_text: str) -> bool:
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", sql_text).split(";") if s.strip()]
    return all(re.match(r"(SELECT|SHOW)\b", s, re.I) for s in statements) and not WRITING_FUNCTIONS.search(sql_text)


def rule(pattern: str, *, mutating: bool | None) -> Callable[[Handler], Handler]:
    """Register a handler; ``mutating`` None: the SQL on stdin decides (``reads_only``)."""
    def register(handler: Handler) -> Handler:
        RULES.append((re.compile(pattern, re.S), mutating, handler))
        return handler
    return register


def args(text: str) -> list[str]:
    return shlex.split(text)


NOT_FOUND = (127, "", "bash: command not found\n")


@rule(r"cat (\S+)", mutating=False)
def _cat(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[1])[0]
    if path in h.files:
        return 0, h.files[path].content, ""
    return 1, "", f"cat: {path}: No such file or directory\n"


@rule(r"dpkg-query -W -f='\$\{Package\} \$\{db:Status-Status\}\\n' -- (.+)", mutating=False)
def _dpkg_query(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.os != DEBIAN_12:
        return NOT_FOUND
    wanted = args(m[1])
    out = "".join(f"{p} installed\n" for p in wanted if p in h.packages)
    missing = [p for p in wanted if p not in h.packages]
    return (1 if missing else 0), out, "".join(f"dpkg-query: no packages found matching {p}\n" for p in missing)


@rule(r"rpm -q --queryformat '%\{NAME\} installed\\n' (.+)", mutating=False)
def _rpm_query(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.os != ROCKY_9:
        return NOT_FOUND
    wanted = args(m[1])
    out = "".join(f"{p} installed\n" if p in h.packages else f"package {p} is not installed\n" for p in wanted)
    return len([p for p in wanted if p not in h.packages]), out, ""


@rule(r"apt-get update -q -o DPkg::Lock::Timeout=600", mutating=True)
@rule(r"dnf makecache -q", mutating=True)
def _refresh(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    manager = "apt-get" if h.os == DEBIAN_12 else "dnf"
    return (0, "", "") if m[0].startswith(manager) else NOT_FOUND


@rule(r"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
      r"-o DPkg::Lock::Timeout=600 (.+)", mutating=True)
@rule(r"dnf install -y -q (.+)", mutating=True)
def _install(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if ("apt-get" in m[0]) != (h.os == DEBIAN_12):
        return NOT_FOUND
    words = args(m[1])
    enabled = {w.split("=", 1)[1] for w in words if w.startswith("--enablerepo=")}
    wanted = [PACKAGE_URLS.get(w, w) for w in words if not w.startswith("--")]
    unknown = [p for p in wanted if p not in CATALOGUE[h.os] or (h.os == ROCKY_9 and not h._repo_offers(p, enabled))]
    if unknown:
        return (100, "", f"E: Unable to locate package {unknown[0]}\n") if h.os == DEBIAN_12 else \
            (1, "", f"Error: Unable to find a match: {' '.join(unknown)}\n")
    for name in wanted:
        h.install_package(name)
    return 0, "", ""


@rule(r"dnf module enable -y -q (\S+)", mutating=True)
def _module_enable(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.os != ROCKY_9:
        return NOT_FOUND
    module, stream = args(m[1])[0].split(":")
    current = h._module_stream(module) or (ROCKY_DEFAULT_POSTGRES_STREAM if f"{module}-server" in h.packages else None)
    if current and current != stream and f"{module}-server" in h.packages:
        return 1, "", (f"The operation would result in switching of module '{module}' stream '{current}' "
                       f"to stream '{stream}'\nError: It is not possible to switch enabled streams of a module "
                       "unless explicitly enabled via configuration option module_stream_switch.\n")
    h.files[f"/etc/dnf/modules.d/{module}.module"] = FakeFile(
        f"[{module}]\nname={module}\nstream={stream}\nprofiles=\nstate=enabled\n")
    return 0, "", ""


@rule(r"dnf -qy module disable (\S+)", mutating=True)
def _module_disable(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.os != ROCKY_9:
        return NOT_FOUND
    module = args(m[1])[0]
    h.files[f"/etc/dnf/modules.d/{module}.module"] = FakeFile(
        f"[{module}]\nname={module}\nstream=\nprofiles=\nstate=disabled\n")
    return 0, "", ""


@rule(r"getenforce", mutating=False)
def _getenforce(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return (0, h.selinux + "\n", "") if h.which("getenforce") else NOT_FOUND


@rule(r"semanage port -l", mutating=False)
def _semanage_list(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.which("semanage") is None:
        return NOT_FOUND
    by_type: dict[str, list[int]] = {}
    for port, kind in h.selinux_ports.items():
        by_type.setdefault(kind, []).append(port)
    lines = ["SELinux Port Type              Proto    Port Number", "",
             f"{'unreserved_port_t':<30} tcp      61001-65535, 1024-32767"]
    lines += [f"{kind:<30} tcp      {', '.join(map(str, sorted(ports)))}" for kind, ports in sorted(by_type.items())]
    return 0, "\n".join(lines) + "\n", ""


@rule(r"semanage port (-a|-m) -t (\S+) -p tcp (\d+)", mutating=True)
def _semanage_port(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.which("semanage") is None:
        return NOT_FOUND
    port = int(m[3])
    if m[1] == "-a" and port in h.selinux_ports:
        return 1, "", f"ValueError: Port tcp/{port} already defined\n"
    if m[1] == "-m" and port not in h.selinux_ports:
        return 1, "", f"ValueError: Port tcp/{port} is not defined\n"
    h.selinux_ports[port] = args(m[2])[0]
    return 0, "", ""


@rule(r"getsebool (\S+)", mutating=False)
def _getsebool(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    name = args(m[1])[0]
    if name not in h.selinux_booleans:
        return 1, "", f"Error getting active value for {name}\n"
    return 0, f"{name} --> {'on' if h.selinux_booleans[name] else 'off'}\n", ""


@rule(r"setsebool -P (\S+) 1", mutating=True)
def _setsebool(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    name = args(m[1])[0]
    if name not in h.selinux_booleans:
        return 1, "", f"Could not change boolean {name}\n"
    h.selinux_booleans[name] = True
    return 0, "", ""


@rule(r"systemctl (is-active|is-enabled) --quiet (\S+)", mutating=False)
def _unit_query(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    unit = h.unit(args(m[2])[0])
    state = unit and (unit.active if m[1] == "is-active" else unit.enabled)
    return (0 if state else (3 if m[1] == "is-active" else 1)), "", ""


@rule(r"systemctl daemon-reload", mutating=True)
def _daemon_reload(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    h._stale_units.clear()
    return 0, "", ""


@rule(r"systemctl (start|restart|reload|stop|enable|disable)( --no-block| --now)?( --quiet)? (\S+)", mutating=True)
def _unit_change(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    verb, name = m[1], args(m[4])[0]
    unit = h.unit(name)
    if unit is None:
        return 5, "", f"Failed to {verb} {name}: Unit {name} not found.\n"
    full = name if "." in name else f"{name}.service"
    if full in h._stale_units:
        h.warnings.append(f"{verb} {full}: unit file changed on disk, 'systemctl daemon-reload' recommended")
    if verb == "reload" and not unit.active:
        return 1, "", f"{full} is not active, cannot reload.\n"
    if verb in ("start", "restart"):
        unit.active = True
        h.apply_sysctl_unit(full)
        if full in h.on_start:
            h.on_start[full]()
    elif verb == "stop":
        unit.active = False
    elif verb == "enable":
        unit.enabled = True
    elif verb == "disable":
        unit.enabled = False
        unit.active = unit.active and m[2] != " --now"
    return 0, "", ""


@rule(r"stat -c '%F %U:%G:%a' (\S+)", mutating=False)
def _stat(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[1])[0]
    if path in h.dirs:
        owner, group, mode = h.dirs[path]
        return 0, f"directory {owner}:{group}:{mode}\n", ""
    if path in h.files:
        f = h.files[path]
        return 0, f"regular file {f.owner}:{f.group}:{f.mode}\n", ""
    return 1, "", f"stat: cannot statx '{path}': No such file or directory\n"


@rule(r"install -d -o (\S+) -g (\S+) -m (\S+) (\S+)", mutating=True)
def _install_dir(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    owner, group, mode, path = (args(x)[0] for x in (m[1], m[2], m[3], m[4]))
    for who in (owner, group):
        if who not in h.users:
            return 1, "", f"install: invalid user '{who}'\n"
    h._require_parent(path)
    h.dirs[path] = (owner, group, f"{int(mode, 8):o}")
    return 0, "", ""


@rule(r"test -([edfx]) (\S+)", mutating=False)
def _test(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[2])[0]
    found = {"d": path in h.dirs, "e": path in h.dirs or path in h.files or path in h.binaries,
             "f": path in h.files, "x": path in h.binaries}[m[1]]
    return (0 if found else 1), "", ""


@rule(r"id -u (\S+)", mutating=False)
def _id(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    name = args(m[1])[0]
    return (0, "999\n", "") if name in h.users else (1, "", f"id: '{name}': no such user\n")


@rule(r"useradd --system --home-dir (\S+) --shell /usr/sbin/nologin (\S+)", mutating=True)
def _useradd(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    name = args(m[2])[0]
    if name in h.users:
        return 9, "", f"useradd: user '{name}' already exists\n"
    h.users.add(name)
    return 0, "", ""


@rule(r"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p (\d+) -d (\S+) -f -", mutating=None)
def _psql(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    """psql as the postgres OS user: runs stdin on the real server ``h.postgres`` stands for, -At output."""
    import psycopg2

    if "postgres" not in h.users or h.postgres is None:
        return 1, "", "runuser: user postgres does not exist\n" if "postgres" not in h.users else \
            'psql: error: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed\n'
    endpoint = h.postgres
    try:
        conn = psycopg2.connect(host=endpoint.host, port=endpoint.port, user=endpoint.user,
                                password=endpoint.password, dbname=args(m[2])[0])
    except psycopg2.OperationalError as exc:
        return 2, "", f"psql: error: {exc}"
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(stdin or "")
            rows = cur.fetchall() if cur.description else []
    except psycopg2.Error as exc:
        return 3, "", f"psql:<stdin>: ERROR:  {str(exc).strip()}\n"
    finally:
        conn.close()
    text = {True: "t", False: "f", None: ""}
    return 0, "".join("|".join(text.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v) for v in row)
                      + "\n" for row in rows), ""


@rule(r"runuser -u (\S+) -- (.+)", mutating=False)
def _runuser(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    user, argv = args(m[1])[0], args(m[2])
    if user not in h.users:
        return 1, "", f"runuser: user {user} does not exist\n"
    if h.which(argv[0]) is None:
        return 127, "", f"runuser: failed to execute {argv[0]}: No such file or directory\n"
    if "--validate-config" in argv and argv[-1] not in h.files:
        return 1, "", f"{argv[-1]}: No such file\n"
    return 0, "", ""


@rule(r"sysctl -n (\S+)", mutating=False)
def _sysctl(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    key = args(m[1])[0]
    if key in h.sysctl:
        return 0, h.sysctl[key] + "\n", ""
    return 255, "", f"sysctl: cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory\n"


@rule(r"firewall-cmd --permanent --(add)-port=(\d+)/tcp", mutating=True)
@rule(r"firewall-cmd --permanent --(query)-port=(\d+)/tcp", mutating=False)
def _firewall_port(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.which("firewall-cmd") is None:
        return NOT_FOUND
    port = int(m[2])
    if m[1] == "add":
        h.firewalld_ports.add(port)
        return 0, "success\n", ""
    return (0, "yes\n", "") if port in h.firewalld_ports else (1, "no\n", "")


@rule(r"firewall-cmd --reload", mutating=True)
def _firewall_reload(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return (0, "success\n", "") if h.which("firewall-cmd") else NOT_FOUND


@rule(r"hostname", mutating=False)
def _hostname(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return 0, h.hostname + "\n", ""


@rule(r"hostnamectl set-hostname (\S+) \|\| hostname (\S+)", mutating=True)
def _set_hostname(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    h.hostname = args(m[1])[0]
    return 0, "", ""


@rule(r"ip -o -4 addr show to (\S+)", mutating=False)
def _ip_addr(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    address = args(m[1])[0].split("/")[0]
    interface = h.interfaces.get(address)
    if not interface:
        return 0, "", ""
    return 0, (f"2: {interface}    inet {address}/24 brd 10.0.0.255 scope global {interface}\\"
               "       valid_lft forever preferred_lft forever\n"), ""


@rule(r"(\S+) (--version|-v)", mutating=False)
def _version(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = h.which(args(m[1])[0])
    if path is None:
        return 127, "", f"bash: {m[1]}: No such file or directory\n"
    return 0, h.binaries[path] + "\n", ""


@rule(r"id -un", mutating=False)
def _whoami(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return 0, h.login + "\n", ""


@rule(r"df -Pm (\S+)", mutating=False)
def _df(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return 0, ("Filesystem     1048576-blocks  Used Available Capacity Mounted on\n"
               f"/dev/sda1               40960  {40960 - h.free_mb}  {h.free_mb}      50% /\n"), ""


@rule(r"date \+%s\.%N", mutating=False)
def _date(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return 0, f"{time.time():.9f}\n", ""


@rule(r"ss -Htlnp", mutating=False)
def _ss(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    return 0, h.listeners, ""


@rule(r"set -e; tmp=\$\(mktemp -d\); trap 'rm -rf \"\$tmp\"' EXIT; curl -fsSL(?: --proxy \S+)? "
      r"-o \"\$tmp/release.tgz\" (\S+); echo ('[^']*')\"\$tmp/release.tgz\" \| sha256sum -c --quiet; "
      r"tar -xzf \"\$tmp/release.tgz\" -C \"\$tmp\" --strip-components=1; install -m 0755 (.+) (\S+)/", mutating=True)
def _release_tarball(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    url, wanted_sum, target = args(m[1])[0], args(m[2])[0].strip(), args(m[4])[0]
    if url not in h.downloads:
        return 22, "", f"curl: (22) The requested URL returned error: 404 ({url})\n"
    real_sum, binaries = h.downloads[url]
    if wanted_sum != real_sum:
        return 1, "", "sha256sum: WARNING: 1 computed checksum did NOT match\n"
    for name in (part.split("/")[-1] for part in args(m[3])):
        h.binaries[f"{target}/{name}"] = binaries[name]
    return 0, "", ""


@rule(r"(\S+) -m venv (\S+)", mutating=True)
def _venv(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    if h.which(args(m[1])[0]) is None:
        return 127, "", f"bash: {m[1]}: No such file or directory\n"
    if h.os == DEBIAN_12 and "python3-venv" not in h.packages:
        return 1, "", "The virtual environment was not created successfully because ensurepip is not available.\n"
    venv = args(m[2])[0]
    h.binaries[f"{venv}/bin/pip"] = "pip 23.0.1"
    h.binaries[f"{venv}/bin/python"] = "Python 3"
    return 0, "", ""


@rule(r"(\S+)/bin/pip install -q --disable-pip-version-check (\S+)", mutating=True)
def _pip_install(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    venv, requirement = m[1], args(m[2])[0]
    if f"{venv}/bin/pip" not in h.binaries:
        return 127, "", f"bash: {venv}/bin/pip: No such file or directory\n"
    name, _, version = requirement.partition("==")
    if name.split("[")[0] == "patroni":
        h.binaries[f"{venv}/bin/patroni"] = f"patroni {version}"
    return 0, "", ""


@rule(r"haproxy -c -f (\S+)", mutating=False)
def _haproxy_check(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[1])[0]
    if h.which("haproxy") is None:
        return NOT_FOUND
    if path not in h.files or not h.haproxy_valid(h.files[path].content):
        return 1, "", f"[ALERT]    (1) : config : parsing [{path}:2] : unknown keyword\n"
    return 0, "Configuration file is valid\n", ""


@rule(r"echo (.+) \| socat -t 5 stdio (\S+)", mutating=False)
def _stats_socket(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    command = args(m[1])[0]
    if not any(u.active for n, u in h.units.items() if n.startswith("haproxy")):
        return 1, "", "socat: connect(5, AF=1 ...): No such file or directory\n"
    if command.split()[:3] == ["show", "servers", "state"]:
        return 0, h.haproxy_servers_state, ""
    if command == "show stat":
        return 0, h.haproxy_stat, ""
    return 0, "Unknown command.\n", ""


@rule(r"rm -f (\S+)", mutating=True)
def _rm(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    for path in [p for p in h.files if fnmatch.fnmatchcase(p, args(m[1])[0])]:  # a glob too
        h.files.pop(path)
    return 0, "", ""


@rule(r"ls (\S+)", mutating=False)
def _ls(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    pattern = args(m[1])[0]
    found = sorted(p for p in h.files if fnmatch.fnmatchcase(p, pattern))
    return (0, "".join(f"{p}\n" for p in found), "") if found else (2, "", f"ls: cannot access '{pattern}'\n")


@rule(r"if \[ -f (\S+) \]; then cp -p \S+ \S+\.pgha-bak-\$\(date \+%Y%m%dT%H%M%S\); fi; mv -f (\S+) \S+", mutating=True)
def _replace_file(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path, staged = args(m[1])[0], args(m[2])[0]
    if staged not in h.files:
        return 1, "", f"mv: cannot stat '{staged}': No such file or directory\n"
    if path in h.files:
        h.files[f"{path}.pgha-bak-20260101T000000"] = h.files[path]
    h.files[path] = h.files.pop(staged)
    return 0, "", ""


@rule(r"cat (\S+) 2>/dev/null \|\| true", mutating=False)
def _cat_or_nothing(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[1])[0]
    return 0, h.files[path].content if path in h.files else "", ""


@rule(r"stat -c ('%U %G %a'|'%U %G'|%U) (\S+)", mutating=False)
def _stat_owner(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    path = args(m[2])[0]
    if path not in h.files:
        return 1, "", f"stat: cannot statx '{path}': No such file or directory\n"
    f = h.files[path]
    fields = {"%U": f.owner, "%G": f.group, "%a": f.mode}
    return 0, " ".join(fields[k] for k in args(m[1])[0].split()) + "\n", ""


@rule(r"install -d -m (\S+) ((?:\S+ ?)+)", mutating=True)
def _install_dirs(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    mode = f"{int(args(m[1])[0], 8):o}"
    for path in args(m[2]):
        h._require_parent(path)
        h.dirs[path] = ("root", "root", mode)
    return 0, "", ""


@rule(r"(\S+) -c 'import (\S+)'", mutating=False)
def _python_import(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    python, module = args(m[1])[0], m[2]
    if h.which(python) is None:
        return 127, "", f"bash: {python}: No such file or directory\n"
    if module not in h.python_modules:
        return 1, "", f"ModuleNotFoundError: No module named '{module.split('.')[0]}'\n"
    return 0, "", ""


@rule(r"systemctl show -P ExecStart (\S+)", mutating=False)
def _exec_start(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    """ExecStart of a unit file under /etc/systemd/system, shown as systemd shows it."""
    name = args(m[1])[0]
    name = name if "." in name else f"{name}.service"
    unit = h.files.get(f"/etc/systemd/system/{name}")
    found = re.search(r"^ExecStart=(\S+)(.*)$", unit.content, re.M) if unit else None
    if not found:
        return 0, "\n", ""
    return 0, (f"{{ path={found[1]} ; argv[]={found[1]}{found[2]} ; ignore_errors=no ; start_time=[n/a] ; "
               "stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n"), ""


@rule(r"systemd-run --quiet --collect --unit=(\S+) (.+)", mutating=True)
def _systemd_run(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    """A transient unit (a timer first when --on-active= is given); its command line is kept in ``transient``."""
    name = args(m[1])[0]
    if h.unit(name) is not None and h.unit(name).active:  # type: ignore[union-attr]
        return 1, "", f"Failed to start transient service unit: Unit {name}.service already exists.\n"
    argv = args(m[2])
    program = next(a for a in argv if not a.startswith("--"))
    if h.which(program) is None:
        return 1, "", f"Failed to find executable {program}: No such file or directory\n"
    h.units[f"{name}.service"] = Unit(enabled=False, active=True)
    h.transient[name] = argv
    return 0, "", ""


@rule(r"systemctl list-units --all --plain --no-legend (\S+)$", mutating=False)
def _list_units(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    prefix = args(m[1])[0].rstrip("*")
    return 0, "".join(f"{name} loaded active running\n" for name in h.units if name.startswith(prefix)), ""


# ---------------------------------------------------------------- fleet and fixture


class Fleet:
    """The fake hosts of one test, by inventory host name."""

    def __init__(self) -> None:
        self.hosts: dict[str, FakeHost] = {}

    def add(self, name: str, os: str = DEBIAN_12, address: str = "10.0.0.1") -> FakeHost:
        self.hosts[name] = FakeHost(name, os, address)
        return self.hosts[name]

    def for_inventory(self, raw: dict[str, Any], os: str) -> Fleet:
        """One fake host per inventory host, all of ``os``, at the inventory's addresses (kept if there)."""
        for entry in raw["hosts"]:
            if entry["name"] not in self.hosts:
                self.add(entry["name"], os, entry["address"])
        return self

    def __getitem__(self, name: str) -> FakeHost:
        if name not in self.hosts:
            raise AssertionError(f"the test's fleet has no host {name!r} (hosts: {sorted(self.hosts)})")
        return self.hosts[name]

    def forget(self) -> None:
        for host in self.hosts.values():
            host.forget()


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """Operators reach the fleet's FakeHosts wherever they would open SSH (``InventoryMixin.connect_remote``)."""
    fleet = Fleet()
    monkeypatch.setattr(InventoryMixin, "connect_remote", lambda self, name: fleet[name])
    yield fleet


NODES = [("psg1", "127.0.0.41"), ("psg2", "127.0.0.42"), ("psg3", "127.0.0.43")]
LB = ("vm1", "127.0.0.40")


def fleet_inventory(fleet: Fleet, tmp_path: Any, os: str, *, lb_address: str = LB[1],
                    edit: Callable[[dict[str, Any]], None] | None = None, **sections: Any) -> str:
    """A valid inventory of three database nodes and a load balancer, all fake hosts of ``os``.

    The addresses are on loopback where nothing listens, so a hook that asks etcd or
    Patroni over HTTP is refused at once instead of waiting for a timeout.
    ``lb_address`` 127.0.0.1 puts HAProxy's ports where a test's loopback PostgreSQL
    listens; ``edit`` changes the raw inventory before it is written (more hosts...).
    """
    from pgha_testing import loopback_inventory, write_inventory

    raw = loopback_inventory(NODES, lb_host=LB[0], **sections)
    raw["hosts"][0]["address"] = lb_address
    if edit:
        edit(raw)
    fleet.for_inventory(raw, os)
    return write_inventory(tmp_path, raw)


# ---------------------------------------------------------------- the cluster's REST APIs (real HTTP)


@dataclass(frozen=True)
class ApiRequest:
    node: str
    api: str  # "patroni" or "etcd"
    method: str
    path: str
    body: Any
    auth: str | None


def _healthy_members() -> list[dict[str, Any]]:
    return [{"name": "psg1", "role": "leader", "state": "running", "timeline": 1},
            {"name": "psg2", "role": "sync_standby", "state": "streaming", "lag": 0},
            {"name": "psg3", "role": "replica", "state": "streaming", "lag": 0}]


class ClusterApis:
    """Patroni's REST API and etcd's v3 JSON gateway on every database node's address, over real HTTP.

    State a test sets: ``members`` (GET /cluster), ``config`` (GET /config), ``history``,
    ``etcd_leader``, ``patch_answer`` (refuse PATCH /config). Every request that changes
    something is kept in ``requests``; ``stop_patroni(node)`` makes a node's REST API refuse
    connections, ``start_patroni(node)`` brings it back.
    """

    def __init__(self, nodes: list[tuple[str, str]] = NODES) -> None:
        from services import free_port_on

        self.nodes = dict(nodes)
        self.patroni_port = free_port_on(list(self.nodes.values()))
        self.etcd_port = free_port_on(list(self.nodes.values()))
        self.members = _healthy_members()
        self.config: dict[str, Any] = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10,
                                       "maximum_lag_on_failover": 1048576, "primary_start_timeout": 300,
                                       "synchronous_mode": True, "synchronous_mode_strict": False,
                                       "postgresql": {"parameters": {"max_connections": 100}}}
        self.history: list[list[Any]] = []
        self.etcd_leader = "psg1"
        self.patch_answer: tuple[int, str] | None = None
        self.requests: list[ApiRequest] = []
        self._servers: dict[tuple[str, str], Any] = {}
        for node in self.nodes:
            self.start_patroni(node)
            self._serve(node, "etcd", self.etcd_port)

    def sections(self) -> dict[str, Any]:
        """The inventory sections that point pgha at these APIs."""
        return {"patroni": {"rest_port": self.patroni_port}, "etcd": {"client_port": self.etcd_port}}

    def member_id(self, node: str) -> str:
        return str(1000 + list(self.nodes).index(node))

    def changes(self) -> list[ApiRequest]:
        return [r for r in self.requests if r.method != "GET" and not r.path.startswith("/v3/maintenance/status")
                and r.path != "/v3/cluster/member/list"]

    def start_patroni(self, node: str) -> None:
        self._serve(node, "patroni", self.patroni_port)

    def stop_patroni(self, node: str) -> None:
        server = self._servers.pop((node, "patroni"))
        server.shutdown()
        server.server_close()

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def _serve(self, node: str, api: str, port: int) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        apis = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                request = ApiRequest(node, api, self.command, self.path, body, self.headers.get("Authorization"))
                apis.requests.append(request)
                status, answer = (apis._patroni if api == "patroni" else apis._etcd)(request)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((self.nodes[node], port), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self._servers[(node, api)] = server

    def _patroni(self, r: ApiRequest) -> tuple[int, Any]:
        if r.method == "GET":
            answers = {"/cluster": {"members": self.members}, "/config": self.config, "/history": self.history,
                       "/health": {"state": "running"}}
            return (200, answers[r.path]) if r.path in answers else (404, "")
        if r.auth is None:
            return 401, "no auth header received"
        if (r.method, r.path) == ("PATCH", "/config"):
            if self.patch_answer:
                return self.patch_answer
            self.config.update(r.body)
            return 200, self.config
        if (r.method, r.path) == ("POST", "/switchover"):
            return 200, "Successfully switched over"
        return 404, ""

    def _etcd(self, r: ApiRequest) -> tuple[int, Any]:
        if r.path == "/health":
            return 200, {"health": "true"}
        if r.path == "/v3/maintenance/status":
            return 200, {"header": {"member_id": self.member_id(r.node)}, "leader": self.member_id(self.etcd_leader),
                         "version": "3.5.9"}
        if r.path == "/v3/cluster/member/list":
            return 200, {"members": [{"ID": self.member_id(n), "name": n} for n in self.nodes]}
        if r.path == "/v3/maintenance/transfer-leadership":
            if r.node != self.etcd_leader:
                return 500, {"error": "etcdserver: not leader", "code": 2}
            self.etcd_leader = next(n for n in self.nodes if self.member_id(n) == str(r.body["targetID"]))
            return 200, {"header": {}}
        return 404, ""


@pytest.fixture
def apis() -> Iterator[ClusterApis]:
    """Patroni and etcd REST stand-ins on the fleet inventory's database node addresses."""
    stand_ins = ClusterApis()
    try:
        yield stand_ins
    finally:
        stand_ins.close()
