"""Everything that differs between OS families, as data in one place.

Detected from /etc/os-release (``ID``, ``ID_LIKE`` and, on the RHEL family,
the major of ``VERSION_ID``). Debian keeps PostgreSQL in
/usr/lib/postgresql/<major>/bin from its own packages; on the RHEL family pgha
installs PostgreSQL from the PostgreSQL project's repository (PGDG), which
keeps it in /usr/pgsql-<major>/bin, and etcd/Patroni packages from that
repository's "extras". docs/rhel-plan.md says what of this is tested live and
what only on paper.
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
    module_disable_cmd: str  # disables a module {module} ("" where the family has none)
    postgres_packages: tuple[str, ...]
    # pg_dump/pg_restore of a major (``{major}``), beside an older source server: the copy uses the
    # cluster's major's tools on the source host (pgha.operators.postgres.copy_bin_dir).
    postgres_client_packages: tuple[str, ...]
    postgres_bin_dir: str
    postgres_data_dir: str
    postgres_service: str  # the unit of a source server installed from the distribution (restarted for logical)
    postgres_module: str  # module stream to enable before the install ("" if none)
    postgres_preconfig: tuple[tuple[str, str], ...]  # files written before the install: (path, content)
    etcd_packages: tuple[str, ...]
    etcd_binary: str  # where the etcd package puts it
    etcdctl_binary: str
    haproxy_packages: tuple[str, ...]
    python_packages: tuple[str, ...]
    python: str
    firewall: str  # "firewalld" or "none"
    pgbouncer: PgBouncerOs
    release: str = ""  # the major release the data is for ("" when it does not matter)
    postgres_unit: str = "postgresql"  # the installed PostgreSQL's unit ({major}), disabled: Patroni runs PostgreSQL
    # Where the source server's binaries are ("" as on the cluster's nodes): the runbook's source is the
    # distribution's PostgreSQL, which the RHEL family keeps in /usr/bin (runbook correction C17).
    source_postgres_bin_dir: str = ""
    # The package repository PostgreSQL (and the extras) come from: (package name, where to install it from).
    postgres_repo: tuple[str, str] | None = None
    modules_to_disable: tuple[str, ...] = ()  # dnf modules that would shadow the repository's packages
    extras_repo: str = ""  # a disabled repository enabled for the etcd and Patroni packages only
    # Debian's patroni only recommends its DCS clients (and pgha installs without recommends): without
    # python3-etcd it finds no etcd ("Available implementations: consul, kubernetes").
    patroni_packages: tuple[str, ...] = ("patroni", "python3-etcd")
    # Release tarballs are ours, never the package manager's: they go where no package writes.
    etcd_tarball_dir: str = "/usr/local/bin"
    selinux: bool = False  # SELinux may be enforcing: ports get labels, booleans are set
    selinux_packages: tuple[str, ...] = ()  # what provides semanage
    # Where HAProxy may create its stats socket ("" anywhere): RHEL's package creates no /run/haproxy,
    # and SELinux lets HAProxy create sockets only in its own /var/lib/haproxy (haproxy_var_lib_t).
    haproxy_socket_dir: str = ""

    def postgres_bin(self, major: int) -> str:
        return self.postgres_bin_dir.format(major=major)

    def source_postgres_bin(self, major: int) -> str:
        return (self.source_postgres_bin_dir or self.postgres_bin_dir).format(major=major)

    def copy_postgres_bin(self, source_major: int, cluster_major: int) -> str:
        """Where the pg_dump/pg_restore that copy a ``source_major`` source into a ``cluster_major`` cluster
        are: the cluster's major's (``postgres_client`` packages) when it is newer, a pg_dump reads older
        servers but never newer ones; the source server's own otherwise."""
        if cluster_major > source_major:
            return self.postgres_bin(cluster_major)
        return self.source_postgres_bin(source_major)

    def postgres_data(self, major: int) -> str:
        return self.postgres_data_dir.format(major=major)

    def packages_for(self, component: str, major: int) -> list[str]:
        names = getattr(self, f"{component}_packages")
        return [name.format(major=major) for name in names]

    def etcd_bin(self, method: str) -> str:
        """Where etcd is for an install ``method`` ("package" or "tarball")."""
        return f"{self.etcd_tarball_dir}/etcd" if method == "tarball" else self.etcd_binary

    def postgres_unit_name(self, major: int) -> str:
        return self.postgres_unit.format(major=major)

    def repo_for(self, component: str) -> str | None:
        """The disabled repository to enable when installing ``component``'s packages (None: the enabled ones)."""
        return (self.extras_repo or None) if component in ("etcd", "patroni") else None

    def postgres_stream(self, major: int) -> str | None:
        """The module stream PostgreSQL ``major`` comes from (None: the family has no module streams)."""
        return f"{self.postgres_module}:{major}" if self.postgres_module else None

    def install_command(self, packages: list[str], repo: str | None = None) -> str:
        enable = f" --enablerepo={shlex.quote(repo)}" if repo else ""
        return f"{self.install_cmd}{enable} {' '.join(shlex.quote(p) for p in packages)}"

    def package_query_command(self, packages: list[str]) -> str:
        return self.package_query.format(packages=" ".join(shlex.quote(p) for p in packages))

    def module_disable_command(self, module: str) -> str:
        return self.module_disable_cmd.format(module=shlex.quote(module))

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
    module_disable_cmd="",
    postgres_packages=("postgresql-{major}", "postgresql-client-{major}"),
    postgres_client_packages=("postgresql-client-{major}",),
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
        packages=("pgbouncer", "postgresql-client", "procps"), service="pgbouncer.service",  # procps: pkill
        config="/etc/pgbouncer/pgbouncer.ini", auth_file="/etc/pgbouncer/userlist.txt",
        hba_file="/etc/pgbouncer/pgbouncer_hba.conf", socket_dir="/var/run/postgresql", user="postgres",
        psql="/usr/bin/psql",
    ),
)

PGDG_REPO_RPM = "https://download.postgresql.org/pub/repos/yum/reporpms/EL-{release}-x86_64/pgdg-redhat-repo-latest.noarch.rpm"


def rhel(release: int) -> OsFamily:
    """The RHEL family (RHEL, Rocky, AlmaLinux, CentOS Stream) of one major release.

    PostgreSQL from PGDG: postgresql<major>-server in /usr/pgsql-<major>/bin, the
    unit postgresql-<major>. EL8 and EL9 ship a ``postgresql`` dnf module whose
    streams PGDG's instructions disable first; EL10 has no modules. etcd and
    Patroni come from PGDG's extras repository (disabled by default), etcd in
    /usr/bin like any package; a release tarball goes to /usr/local/bin.
    """
    return OsFamily(
        name="rhel",
        release=str(release),
        install_cmd="dnf install -y -q",
        package_query="rpm -q --queryformat '%{{NAME}} installed\\n' {packages}",
        refresh_cmd="dnf makecache -q",
        module_enable_cmd="dnf module enable -y -q {stream}",
        module_state_file="/etc/dnf/modules.d/{module}.module",
        module_disable_cmd="dnf -qy module disable {module}",
        postgres_packages=("postgresql{major}-server", "postgresql{major}-contrib"),
        # PGDG's client package (/usr/pgsql-{major}/bin); the source host needs the PGDG repository for it
        postgres_client_packages=("postgresql{major}",),
        postgres_bin_dir="/usr/pgsql-{major}/bin",
        postgres_data_dir="/var/lib/pgsql/{major}/data",
        postgres_service="postgresql",
        postgres_unit="postgresql-{major}",
        source_postgres_bin_dir="/usr/bin",
        postgres_module="",
        postgres_preconfig=(),
        postgres_repo=("pgdg-redhat-repo", PGDG_REPO_RPM.format(release=release)),
        modules_to_disable=("postgresql",) if release in (8, 9) else (),
        extras_repo=f"pgdg-rhel{release}-extras",
        etcd_packages=("etcd",),
        etcd_binary="/usr/bin/etcd",
        etcdctl_binary="/usr/bin/etcdctl",
        haproxy_packages=("haproxy", "socat"),
        patroni_packages=("patroni", "patroni-etcd"),
        python_packages=("python3", "python3-pip"),
        python="/usr/bin/python3",
        firewall="firewalld",
        selinux=True,
        selinux_packages=("policycoreutils-python-utils",),
        haproxy_socket_dir="/var/lib/haproxy",
        pgbouncer=PgBouncerOs(  # the PGDG/EPEL package: its unit runs PgBouncer as user pgbouncer
            packages=("pgbouncer", "postgresql", "procps-ng"), service="pgbouncer.service",
            config="/etc/pgbouncer/pgbouncer.ini", auth_file="/etc/pgbouncer/userlist.txt",
            hba_file="/etc/pgbouncer/pgbouncer_hba.conf", socket_dir="/run/pgbouncer", user="pgbouncer",
            psql="/usr/bin/psql",
        ),
    )


RHEL8, RHEL9, RHEL10 = rhel(8), rhel(9), rhel(10)
RHEL = RHEL9  # an inventory's os_family "rhel" without detection: the release pgha plans for
RHEL_RELEASES = {"8": RHEL8, "9": RHEL9, "10": RHEL10}

FAMILIES = {"debian": DEBIAN, "rhel": RHEL}
_ID_TO_FAMILY = {"debian": "debian", "ubuntu": "debian", "rhel": "rhel", "rocky": "rhel", "almalinux": "rhel",
                 "centos": "rhel"}  # Fedora is not listed: the RHEL data (PGDG's EL repositories) is not Fedora's


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
        if family == "rhel":
            release = values.get("VERSION_ID", "").split(".")[0]
            if release not in RHEL_RELEASES:
                break
            return RHEL_RELEASES[release]
        if family:
            return FAMILIES[family]
    pretty = values.get("PRETTY_NAME") or values.get("ID") or "unknown"
    raise ValueError(f"unsupported operating system {pretty!r}: pgha supports Debian/Ubuntu and the RHEL family 8, 9 and 10")


def parse_module_state(text: str) -> dict[str, str]:
    """A dnf ``modules.d/<module>.module`` file (INI, one section) as a dict: stream, state, ..."""
    return {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in text.splitlines())
            if sep and not key.startswith(("#", "["))}


def parse_selinux_ports(listing: str, protocol: str = "tcp") -> dict[int, str]:
    """``semanage port -l`` as port -> type, for the single ports (not ranges) of ``protocol``.

    Only a port defined on its own makes ``semanage port -a`` fail ("already
    defined"); a port inside a range (unreserved_port_t 1024-32767) can be added.
    """
    ports: dict[int, str] = {}
    for line in listing.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[1] == protocol:
            for item in fields[2].replace(" ", "").split(","):
                if item.isdigit():
                    ports.setdefault(int(item), fields[0])
    return ports
