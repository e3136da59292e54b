"""One host's system state: packages, systemd units, files, users, sysctl, firewall, hostname.

Built on RemoteHook (the SSH transport and its audit log). Every value that
reaches a shell is quoted here; what differs between OS families comes from
``pgha.osfamily``. Queries never change the host; each ``ensure_*`` changes it
only when it differs and says whether it did, so operators can report
changed/unchanged and a second run plans no change.
"""

from __future__ import annotations

import shlex
import time
from functools import cached_property

from pgha.compat import AirflowException, BaseHook

from pgha import airflowenv
from pgha.hooks.remote import CommandResult, FileChange, RemoteHook
from pgha.osfamily import OsFamily, detect_family, installed_packages, parse_module_state, parse_selinux_ports

UNIT_DIR = "/etc/systemd/system"
KEEP_BACKUPS = 5  # the newest replaced copies of a config HostHook.replace_file keeps (they may hold a secret)


def q(value: object) -> str:
    return shlex.quote(str(value))


class HostHook(BaseHook):
    """
    System state of one host, over its RemoteHook.

    :param remote: the host's RemoteHook (or anything that stands where it stands).
    :param family: the host's OS family; detected from /etc/os-release on first use if None.
    """

    hook_name = "pgha host"

    def __init__(self, remote: RemoteHook, family: OsFamily | None = None) -> None:
        super().__init__()
        self.remote = remote
        self._family = family

    def get_conn(self) -> RemoteHook:
        return self.remote

    @property
    def name(self) -> str:
        return self.remote.host_name

    @property
    def dry_run(self) -> bool:
        """The host is seen through a dry run (``pgha.hooks.dryrun``): changes are planned, not made."""
        return bool(getattr(self.remote, "dry_run", False))

    def run(self, command: str, **kwargs: object) -> CommandResult:
        return self.remote.run(command, **kwargs)  # type: ignore[arg-type]

    def succeeds(self, command: str) -> bool:
        """True when ``command`` exits 0 (a query: never logged above debug when it does)."""
        return self.remote.run(command, check=False, quiet=True).ok

    @cached_property
    def family(self) -> OsFamily:
        if self._family:
            return self._family
        try:
            return detect_family(self.remote.run("cat /etc/os-release", quiet=True).stdout)
        except ValueError as exc:
            raise AirflowException(f"[{self.name}] {exc}") from exc

    # ---------------------------------------------------------------- packages

    def missing_packages(self, packages: list[str]) -> list[str]:
        result = self.remote.run(self.family.package_query_command(packages), check=False, quiet=True)
        installed = installed_packages(result.stdout)
        return [p for p in packages if p not in installed]

    def ensure_packages(self, packages: list[str], *, repo: str | None = None) -> bool:
        """
        Install the missing ones of ``packages``; True if it installed.
        ``repo``: a disabled repository to enable for this install only.

        Not killable on purpose: a package transaction stopped half-way leaves the
        package database to repair by hand; a retry waits for its lock instead.
        """
        missing = self.missing_packages(packages)
        if not missing:
            return False
        self.remote.run(self.family.refresh_cmd, timeout=900)
        self.remote.run(self.family.install_command(missing, repo), timeout=1800)
        if self.dry_run:  # planned, not installed: nothing to verify
            return True
        still = self.missing_packages(missing)
        if still:
            raise AirflowException(f"[{self.name}] the package manager succeeded but {still} are not installed")
        return True

    def ensure_repo_package(self, name: str, source: str) -> bool:
        """The package ``name`` that configures a repository, installed from ``source`` (a URL) if missing."""
        if not self.missing_packages([name]):
            return False
        self.remote.run(self.family.install_command([source]), timeout=900)
        if not self.dry_run and self.missing_packages([name]):
            raise AirflowException(f"[{self.name}] installing {source} did not install {name}")
        return True

    def ensure_modules_disabled(self, modules: list[str]) -> list[str]:
        """dnf ``modules`` disabled (their streams no longer shadow a repository's packages); the ones it disabled."""
        changed = []
        for module in modules:
            state = parse_module_state(self.read_file(self.family.module_state_file.format(module=module)) or "")
            if state.get("state") != "disabled":
                self.remote.run(self.family.module_disable_command(module), timeout=900)
                changed.append(module)
        return changed

    def ensure_module_stream(self, stream: str) -> bool:
        """Enable a module stream (``postgresql:15``) unless it already is; True if it enabled."""
        module, _, wanted = stream.partition(":")
        text = self.read_file(self.family.module_state_file.format(module=module)) or ""
        state = parse_module_state(text)
        if state.get("stream") == wanted and state.get("state") == "enabled":
            return False
        self.remote.run(self.family.module_enable_command(stream), timeout=900)
        return True

    # ---------------------------------------------------------------- systemd units

    def unit_active(self, unit: str) -> bool:
        return self.succeeds(f"systemctl is-active --quiet {q(unit)}")

    def unit_enabled(self, unit: str) -> bool:
        return self.succeeds(f"systemctl is-enabled --quiet {q(unit)}")

    def units_matching(self, pattern: str) -> list[str]:
        """Names of the loaded units (transient ones included) that match a glob such as ``pgha-cutover-*``."""
        listing = self.remote.run(f"systemctl list-units --all --plain --no-legend {q(pattern)}", quiet=True).stdout
        return [line.split()[0] for line in listing.splitlines() if line.strip()]

    def unit_exists(self, unit: str) -> bool:
        return self.succeeds(f"systemctl cat {q(unit)} >/dev/null")

    def unit_environment(self, unit: str) -> dict[str, str]:
        """The environment ``unit``'s main process runs with; for a stopped unit, what its
        Environment= and EnvironmentFile= settings would give it."""
        pid = self.remote.run(f"systemctl show -P MainPID {q(unit)}", quiet=True).stdout.strip()
        if pid.isdigit() and pid != "0":
            environ = self.remote.run(f"cat /proc/{int(pid)}/environ", quiet=True, check=False)
            if environ.ok:
                return airflowenv.parse_environ(environ.stdout)
        assignments = self.remote.run(f"systemctl show -P Environment {q(unit)}", quiet=True).stdout
        listed = self.remote.run(f"systemctl show -P EnvironmentFiles {q(unit)}", quiet=True).stdout
        paths = [line.split()[0] for line in listed.splitlines() if line.strip()]
        files = {path: self.remote.read_file(path) or "" for path in paths}
        return airflowenv.parse_unit_environment(assignments, files)

    def unit_user_home(self, unit: str) -> str:
        """The home directory of the user ``unit`` runs as (root when it names none)."""
        user = self.remote.run(f"systemctl show -P User {q(unit)}", quiet=True).stdout.strip() or "root"
        entry = self.remote.run(f"getent passwd {q(user)}", quiet=True).stdout.strip().split(":")
        if len(entry) < 6:
            raise AirflowException(f"[{self.name}] {unit} runs as {user!r}, which has no passwd entry")
        return entry[5]

    def daemon_reload(self) -> None:
        self.remote.run("systemctl daemon-reload")

    def start(self, unit: str, *, no_block: bool = False, timeout: float | None = None) -> None:
        self.remote.run(f"systemctl start {'--no-block ' if no_block else ''}{q(unit)}", timeout=timeout)

    def restart(self, unit: str, *, no_block: bool = False, timeout: float | None = None) -> None:
        self.remote.run(f"systemctl restart {'--no-block ' if no_block else ''}{q(unit)}", timeout=timeout)

    def reload(self, unit: str) -> None:
        self.remote.run(f"systemctl reload {q(unit)}")

    def stop(self, unit: str) -> None:
        self.remote.run(f"systemctl stop {q(unit)}")

    def enable(self, unit: str) -> bool:
        """Enable ``unit`` at boot unless it is; True if it enabled it."""
        if self.unit_enabled(unit):
            return False
        self.remote.run(f"systemctl enable --quiet {q(unit)}")
        return True

    def ensure_started(self, unit: str) -> bool:
        """Start ``unit`` unless it is active; True if it started it."""
        if self.unit_active(unit):
            return False
        self.start(unit)
        return True

    def disable_now(self, unit: str) -> bool:
        """Disable and stop ``unit`` if it is enabled or running; True if it did."""
        if not self.unit_enabled(unit) and not self.unit_active(unit):
            return False
        self.remote.run(f"systemctl disable --now --quiet {q(unit)}")
        return True

    def install_unit(self, name: str, content: str) -> bool:
        """Put a unit file under /etc/systemd/system and reload systemd if it changed."""
        changed = self.put_file(f"{UNIT_DIR}/{name}", content).changed
        if changed:
            self.daemon_reload()
        return changed

    # ---------------------------------------------------------------- files and users

    def read_file(self, path: str) -> str | None:
        return self.remote.read_file(path)

    def put_file(self, path: str, content: str, *, owner: str = "root", group: str | None = None,
                 mode: str = "0644", secret: bool = False) -> FileChange:
        return self.remote.put_file(path, content, owner=owner, group=group, mode=mode, secret=secret)

    def exists(self, path: str) -> bool:
        return self.succeeds(f"test -e {q(path)}")

    def ensure_directory(self, path: str, *, owner: str = "root", group: str | None = None,
                         mode: str = "0755") -> bool:
        """``path`` is a directory with this owner, group and mode; True if it changed anything."""
        group = group or owner
        wanted = f"directory {owner}:{group}:{int(mode, 8):o}"
        current = self.remote.run(f"stat -c '%F %U:%G:%a' {q(path)}", check=False, quiet=True)
        if current.ok and current.stdout.strip() == wanted:
            return False
        if current.ok and current.stdout.startswith("symbolic link"):  # install -d would chown its target
            raise AirflowException(f"[{self.name}] refusing {path}: it is a symbolic link; nothing was changed")
        self.remote.run(f"install -d -o {q(owner)} -g {q(group)} -m {q(mode)} {q(path)}")
        return True

    def file_state(self, path: str) -> str | None:
        """``<type> <owner>:<group>:<mode>`` of ``path`` (e.g. ``regular file postgres:postgres:600``), None if absent."""
        current = self.remote.run(f"stat -c '%F %U:%G:%a' {q(path)}", check=False, quiet=True)
        return current.stdout.strip() if current.ok else None

    def replace_file(self, path: str, staged: str) -> list[str]:
        """Move ``staged`` over ``path``, keeping the previous file as ``<path>.pgha-bak-<timestamp>`` (its
        mode and owner kept: a config with a secret stays 0600); only the newest KEEP_BACKUPS stay. Returns
        the backups removed."""
        self.remote.run(
            f"if [ -f {q(path)} ]; then cp -p {q(path)} {q(path)}.pgha-bak-$(date +%Y%m%dT%H%M%S); fi; "
            f"mv -f {q(staged)} {q(path)}"
        )
        return self.prune_backups(path)

    def prune_backups(self, path: str, keep: int = KEEP_BACKUPS) -> list[str]:
        """Remove all but the newest ``keep`` of ``<path>.pgha-bak-*`` (their timestamps sort by age)."""
        listed = self.remote.run(f"ls {q(path)}.pgha-bak-*", check=False, quiet=True)
        prefix = f"{path}.pgha-bak-"
        backups = sorted(line for line in listed.stdout.splitlines() if line.startswith(prefix)) if listed.ok else []
        old = backups[:-keep] if keep else backups
        for backup in old:
            self.remote.run(f"rm -f {q(backup)}")
        return old

    def remove(self, path: str) -> None:
        self.remote.run(f"rm -f {q(path)}")

    def ensure_system_user(self, name: str, *, home: str) -> bool:
        """A system user without a login shell; True if it created it."""
        if self.succeeds(f"id -u {q(name)}"):
            return False
        self.remote.run(f"useradd --system --home-dir {q(home)} --shell /usr/sbin/nologin {q(name)}")
        return True

    def run_as(self, user: str, argv: list[str]) -> CommandResult:
        return self.remote.run(f"runuser -u {q(user)} -- " + " ".join(q(a) for a in argv))

    # ---------------------------------------------------------------- kernel, network, identity

    def sysctl(self, key: str) -> str | None:
        """The live value of a kernel parameter, or None when it does not exist."""
        result = self.remote.run(f"sysctl -n {q(key)}", check=False, quiet=True)
        return result.stdout.strip() if result.ok else None

    def firewalld_active(self) -> bool:
        return self.family.firewall == "firewalld" and self.unit_active("firewalld")

    def open_ports(self, ports: list[int]) -> list[int] | None:
        """
        Open TCP ``ports`` in firewalld (permanent, then reloaded) where firewalld runs.
        Returns the ports it opened, or None when the host has no active firewalld.
        """
        if not self.firewalld_active():
            return None
        opened = [p for p in ports if not self.succeeds(f"firewall-cmd --permanent --query-port={int(p)}/tcp")]
        for port in opened:
            self.remote.run(f"firewall-cmd --permanent --add-port={int(port)}/tcp")
        if opened:
            self.remote.run("firewall-cmd --reload")
        return opened

    def selinux_enforcing(self) -> bool:
        """SELinux is enforcing (``getenforce``); never on a family without SELinux."""
        if not self.family.selinux:
            return False
        result = self.remote.run("getenforce", check=False, quiet=True)
        return result.ok and result.stdout.strip() == "Enforcing"

    def ensure_port_labels(self, labels: dict[int, str]) -> list[str]:
        """
        TCP ports labelled with SELinux types (``{5433: "postgresql_port_t"}``); what
        it changed: ``port:type`` per label (and the package providing semanage if it installed it). A port the policy already defines on
        its own is modified (``semanage port -a`` would fail "already defined"),
        any other one added; a port that has its type already is left alone.
        """
        if not labels:
            return []
        changed = [f"{p} installed" for p in self.family.selinux_packages] \
            if self.ensure_packages(list(self.family.selinux_packages)) else []
        current = parse_selinux_ports(self.remote.run("semanage port -l", quiet=True, timeout=300).stdout)
        for port, wanted in sorted(labels.items()):
            if current.get(port) == wanted:
                continue
            verb = "-m" if port in current else "-a"
            self.remote.run(f"semanage port {verb} -t {q(wanted)} -p tcp {int(port)}", timeout=300)
            changed.append(f"{port}:{wanted}")
        return changed

    def ensure_selinux_boolean(self, name: str) -> bool:
        """The SELinux boolean ``name`` on, persistently; True if it turned it on."""
        current = self.remote.run(f"getsebool {q(name)}", quiet=True).stdout.split()
        if current[-1:] == ["on"]:
            return False
        self.remote.run(f"setsebool -P {q(name)} 1", timeout=300)
        return True

    def hostname(self) -> str:
        return self.remote.run("hostname", quiet=True).stdout.strip()

    def ensure_hostname(self, name: str) -> bool:
        """Set the hostname (hostnamectl; plain ``hostname`` where there is no systemd-hostnamed)."""
        if self.hostname() == name:
            return False
        self.remote.run(f"hostnamectl set-hostname {q(name)} || hostname {q(name)}")
        return True

    def interface_of(self, address: str) -> str:
        """The one network interface that carries IPv4 ``address``."""
        listing = self.remote.run(f"ip -o -4 addr show to {q(address + '/32')}", quiet=True).stdout
        interfaces = sorted({line.split()[1] for line in listing.splitlines() if len(line.split()) > 1})
        if len(interfaces) != 1:
            raise AirflowException(f"[{self.name}] no single interface carries {address} ({interfaces})")
        return interfaces[0]

    def version(self, command: str, *, check: bool = True) -> str | None:
        """
        The first line a version command prints (stdout, else stderr), read here
        rather than with ``| head`` (SIGPIPE under pipefail). None if it fails and
        ``check`` is off.
        """
        result = self.remote.run(command, check=check, quiet=not check)
        if not result.ok:
            return None
        lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
        return lines[0].strip() if lines else ""

    def whoami(self) -> str:
        return self.remote.run("id -un", quiet=True).stdout.strip()

    def free_mb(self, path: str) -> int:
        """Free space in MB of the file system holding ``path``."""
        lines = self.remote.run(f"df -Pm {q(path)}", quiet=True).stdout.strip().splitlines()
        return int(lines[-1].split()[3]) if len(lines) > 1 else 0

    def clock_skew(self) -> float:
        """Seconds the host's clock is ahead of this worker's (network delay halved out)."""
        before = time.time()
        remote_now = float(self.remote.run("date +%s.%N", quiet=True).stdout.strip())
        after = time.time()
        return remote_now - (before + after) / 2

    def listeners(self) -> dict[int, str]:
        """TCP port -> the ``ss`` line of what listens on it."""
        listing = self.remote.run("ss -Htlnp", check=False, quiet=True).stdout
        ports: dict[int, str] = {}
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rsplit(":", 1)[-1].isdigit():
                ports.setdefault(int(fields[3].rsplit(":", 1)[-1]), line)
        return ports

    # ---------------------------------------------------------------- software outside the package manager

    def install_release_tarball(self, *, url: str, sha256: str, binaries: list[str], target_dir: str,
                                proxy: str | None = None) -> None:
        """Download a release tarball, verify its sha256, install ``binaries`` from it (killable)."""
        curl = "curl -fsSL" + (f" --proxy {q(proxy)}" if proxy else "")
        files = " ".join(f'"$tmp"/{q(b)}' for b in binaries)
        self.remote.run(
            'set -e; tmp=$(mktemp -d); trap \'rm -rf "$tmp"\' EXIT; '
            f'{curl} -o "$tmp/release.tgz" {q(url)}; '
            f'echo {q(sha256 + "  ")}"$tmp/release.tgz" | sha256sum -c --quiet; '
            'tar -xzf "$tmp/release.tgz" -C "$tmp" --strip-components=1; '
            f"install -m 0755 {files} {q(target_dir)}/",
            timeout=900,
            killable=True,
        )

    def ensure_venv(self, venv: str, python: str) -> bool:
        """A Python virtualenv at ``venv``; True if it created it."""
        if self.succeeds(f"test -x {q(venv + '/bin/pip')}"):
            return False
        self.remote.run(f"{q(python)} -m venv {q(venv)}")
        return True

    def pip_install(self, venv: str, requirement: str) -> None:
        self.remote.run(f"{q(venv + '/bin/pip')} install -q --disable-pip-version-check {q(requirement)}",
                        timeout=1800, killable=True)
