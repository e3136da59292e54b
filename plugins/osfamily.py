"""Everything that differs between OS families, as data in one place.

Detected from /etc/os-release (``ID`` and ``ID_LIKE``). ERRATA 17: Rocky's
AppStream PostgreSQL keeps binaries in /usr/bin, Debian in
/usr/lib/postgresql/<major>/bin; package names differ too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class OsFamily:
    name: str
    install_cmd: str  # takes the package list appended
    installed_query: str  # exits 0 when every package in {packages} is installed
    postgres_packages: tuple[str, ...]
    postgres_bin_dir: str
    postgres_data_dir: str
    postgres_service: str  # the distribution's own unit, disabled: Patroni runs PostgreSQL
    postgres_prepare: str  # runs before the install (no auto-created cluster / module stream)
    refresh_cmd: str  # refreshes package lists before an install
    etcd_packages: tuple[str, ...]
    etcd_binary: str
    etcdctl_binary: str
    haproxy_packages: tuple[str, ...]
    python_packages: tuple[str, ...]
    python: str
    firewall: str  # "firewalld" or "none"

    def postgres_bin(self, major: int) -> str:
        return self.postgres_bin_dir.format(major=major)

    def postgres_data(self, major: int) -> str:
        return self.postgres_data_dir.format(major=major)

    def packages_for(self, component: str, major: int) -> list[str]:
        names = getattr(self, f"{component}_packages")
        return [name.format(major=major) for name in names]

    def prepare_postgres(self, major: int) -> str:
        return self.postgres_prepare.format(major=major)

    def install_command(self, packages: list[str]) -> str:
        return f"{self.install_cmd} {' '.join(shlex.quote(p) for p in packages)}"

    def installed_command(self, packages: list[str]) -> str:
        return self.installed_query.format(packages=" ".join(shlex.quote(p) for p in packages))


DEBIAN = OsFamily(
    name="debian",
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends",
    installed_query="for p in {packages}; do dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null | grep -q 'install ok installed' || exit 1; done",
    postgres_packages=("postgresql-{major}", "postgresql-client-{major}"),
    postgres_bin_dir="/usr/lib/postgresql/{major}/bin",
    postgres_data_dir="/var/lib/postgresql/{major}/main",
    postgres_service="postgresql",
    postgres_prepare=(
        "mkdir -p /etc/postgresql-common/createcluster.d && "
        "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/50-pgha.conf"
    ),
    refresh_cmd="apt-get update -q",
    etcd_packages=("etcd-server", "etcd-client"),
    etcd_binary="/usr/bin/etcd",
    etcdctl_binary="/usr/bin/etcdctl",
    haproxy_packages=("haproxy", "socat"),
    python_packages=("python3", "python3-venv"),
    python="/usr/bin/python3",
    firewall="none",
)

RHEL = OsFamily(
    name="rhel",
    install_cmd="dnf install -y -q",
    installed_query="rpm -q {packages}",
    postgres_packages=("postgresql-server", "postgresql-contrib"),
    postgres_bin_dir="/usr/bin",
    postgres_data_dir="/var/lib/pgsql/{major}/data",
    postgres_service="postgresql",
    postgres_prepare="dnf -qy module enable postgresql:{major}",
    refresh_cmd="dnf makecache -q",
    etcd_packages=("etcd",),
    etcd_binary="/usr/local/bin/etcd",
    etcdctl_binary="/usr/local/bin/etcdctl",
    haproxy_packages=("haproxy", "socat"),
    python_packages=("python3", "python3-pip"),
    python="/usr/bin/python3",
    firewall="firewalld",
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
