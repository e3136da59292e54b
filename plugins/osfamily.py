"""Everything that differs between OS families, as data in one place.

Detected from /etc/os-release (``ID`` and ``ID_LIKE``). Rocky's
AppStream PostgreSQL keeps binaries in /usr/bin, Debian in
/usr/lib/postgresql/<major>/bin; package names differ too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class PgBouncerOs:
    """Where a family's PgBouncer package puts things, and who runs it."""

    packages: tuple[str, ...]
    service: str
    config: str
    auth_file: str
    hba_file: str
    socket_dir: str
    user: str  # runs PgBouncer; also its only admin user (peer on the Unix socket)
    psql: str  # reaches the admin console on the host


@dataclass(frozen=True)
class OsFamily:
    name: str
    install_cmd: str  # takes the package list appended
    package_query: str  # prints "<name> installed" for each installed package in {packages}
    refresh_cmd: str  # refreshes package lists before an install
    module_enable_cmd: str  # enables a module stream {stream} ("" where the family has none)
    module_state_file: str  # where the package manager keeps a module's state ({module})
    postgres_packages: tuple[str, ...]
    postgres_bin_dir: str
    postgres_data_dir: str
    postgres_service: str  # the distribution's own unit, disabled: Patroni runs PostgreSQL
    postgres_module: str  # module stream to enable before the install ("" if none)
    postgres_preconfig: tuple[tuple[str, str], ...]  # files written before the install: (path, content)
    etcd_packages: tuple[str, ...]
    etcd_binary: str
    etcdctl_binary: str
    haproxy_packages: tuple[str, ...]
    python_packages: tuple[str, ...]
    python: str
    firewall: str  # "firewalld" or "none"
    pgbouncer: PgBouncerOs

    def postgres_bin(self, major: int) -> str:
        return self.postgres_bin_dir.format(major=major)

    def postgres_data(self, major: int) -> str:
        return self.postgres_data_dir.format(major=major)

    def packages_for(self, component: str, major: int) -> list[str]:
        names = getattr(self, f"{component}_packages")
        return [name.format(major=major) for name in names]

    def postgres_stream(self, major: int) -> str | None:
        """The module stream PostgreSQL ``major`` comes from (None: the family has no module streams)."""
        return f"{self.postgres_module}:{major}" if self.postgres_module else None

    def install_command(self, packages: list[str]) -> str:
        return f"{self.install_cmd} {' '.join(shlex.quote(p) for p in packages)}"

    def package_query_command(self, packages: list[str]) -> str:
        return self.package_query.format(packages=" ".join(shlex.quote(p) for p in packages))

    def module_enable_command(self, stream: str) -> str:
        return self.module_enable_cmd.format(stream=shlex.quote(stream))


def installed_packages(query_output: str) -> set[str]:
    """The packages a ``package_query`` printed as installed."""
    return {fields[0] for fields in map(str.split, query_output.splitlines()) if fields[1:] == ["installed"]}


DEBIAN = OsFamily(
    name="debian",
    # A retry of a killed task waits for the dpkg lock the killed install may still hold.
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600",
    package_query="dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' -- {packages}",
    refresh_cmd="apt-get update -q -o DPkg::Lock::Timeout=600",
    module_enable_cmd="",
    module_state_file="",
    postgres_packages=("postgresql-{major}", "postgresql-client-{major}"),
    postgres_bin_dir="/usr/lib/postgresql/{major}/bin",
    postgres_data_dir="/var/lib/postgresql/{major}/main",
    postgres_service="postgresql",
    postgres_module="",
    postgres_preconfig=(("/etc/postgresql-common/createcluster.d/50-pgha.conf", "create_main_cluster = false\n"),),
    etcd_packages=("etcd-server", "etcd-client"),
    etcd_binary="/usr/bin/etcd",
    etcdctl_binary="/usr/bin/etcdctl",
    haproxy_packages=("haproxy", "socat"),
    python_packages=("python3", "python3-venv"),
    python="/usr/bin/python3",
    firewall="none",
    pgbouncer=PgBouncerOs(
        packages=("pgbouncer", "postgresql-client"), service="pgbouncer.service",
        config="/etc/pgbouncer/pgbouncer.ini", auth_file="/etc/pgbouncer/userlist.txt",
        hba_file="/etc/pgbouncer/pgbouncer_hba.conf", socket_dir="/var/run/postgresql", user="postgres",
        psql="/usr/bin/psql",
    ),
)

RHEL = OsFamily(
    name="rhel",
    install_cmd="dnf install -y -q",
    package_query="rpm -q --queryformat '%{{NAME}} installed\\n' {packages}",
    refresh_cmd="dnf makecache -q",
    module_enable_cmd="dnf module enable -y -q {stream}",
    module_state_file="/etc/dnf/modules.d/{module}.module",
    postgres_packages=("postgresql-server", "postgresql-contrib"),
    postgres_bin_dir="/usr/bin",
    postgres_data_dir="/var/lib/pgsql/{major}/data",
    postgres_service="postgresql",
    postgres_module="postgresql",
    postgres_preconfig=(),
    etcd_packages=("etcd",),
    etcd_binary="/usr/local/bin/etcd",
    etcdctl_binary="/usr/local/bin/etcdctl",
    haproxy_packages=("haproxy", "socat"),
    python_packages=("python3", "python3-pip"),
    python="/usr/bin/python3",
    firewall="firewalld",
    pgbouncer=PgBouncerOs(  # the PGDG/EPEL package: its unit runs PgBouncer as user pgbouncer
        packages=("pgbouncer", "postgresql"), service="pgbouncer.service",
        config="/etc/pgbouncer/pgbouncer.ini", auth_file="/etc/pgbouncer/userlist.txt",
        hba_file="/etc/pgbouncer/pgbouncer_hba.conf", socket_dir="/run/pgbouncer", user="pgbouncer",
        psql="/usr/bin/psql",
    ),
)

FAMILIES = {"debian": DEBIAN, "rhel": RHEL}
_ID_TO_FAMILY = {"debian": "debian", "ubuntu": "debian", "rhel": "rhel", "rocky": "rhel", "almalinux": "rhel",
                 "centos": "rhel", "fedora": "rhel"}


def parse_os_release(text: str) -> dict[str, str]:
    """/etc/os-release as a dict (values unquoted)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value.strip().strip('"').strip("'")
    return values


def detect_family(os_release: str) -> OsFamily:
    """The OsFamily for the text of /etc/os-release; ValueError names an unsupported OS."""
    values = parse_os_release(os_release)
    for candidate in [values.get("ID", ""), *values.get("ID_LIKE", "").split()]:
        family = _ID_TO_FAMILY.get(candidate.lower())
        if family:
            return FAMILIES[family]
    pretty = values.get("PRETTY_NAME") or values.get("ID") or "unknown"
    raise ValueError(f"unsupported operating system {pretty!r}: pgha supports Debian/Ubuntu and RHEL/Rocky 9")


def parse_module_state(text: str) -> dict[str, str]:
    """A dnf ``modules.d/<module>.module`` file (INI, one section) as a dict: stream, state, ..."""
    return {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in text.splitlines())
            if sep and not key.startswith(("#", "["))}
