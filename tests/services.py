"""Real loopback services for pgha tests: sshd, etcd, PostgreSQL, Patroni, HAProxy, PgBouncer.

Plain helpers (no pytest): each ``start_*`` runs the real binary on 127.0.0.1 with
free ports and returns a small dataclass whose ``stop()`` ends exactly the
processes it started (by recorded pid, never by name pattern).

Only the standard library is used so the module also runs under Debian's
``/usr/bin/python3``: ``python3 tests/services.py ensure-patroni-venv``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL 13 (a migration's older source): Debian 11's postgresql-13 and the bullseye libraries it
# needs, unpacked (dpkg -x) by .ci/install-deps into this root; its binaries run with its libraries.
PG13_ROOT = Path(os.environ.get("PGHA_PG13_ROOT", "/var/cache/pgha-test/pg13"))
PG13_BIN_DIR = PG13_ROOT / "usr/lib/postgresql/13/bin"
PG13_LIB_DIR = PG13_ROOT / "usr/lib/x86_64-linux-gnu"
ETCD_BIN = Path("/usr/bin/etcd")
HAPROXY_BIN = Path("/usr/sbin/haproxy")
PGBOUNCER_BIN = Path("/usr/sbin/pgbouncer")
SSHD_BIN = Path("/usr/sbin/sshd")
SSH_KEYGEN_BIN = Path("/usr/bin/ssh-keygen")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PATRONI_VERSION = "4.1.5"
PATRONI_VENV = Path(os.environ.get("PGHA_PATRONI_VENV", "/opt/pgha-test/patroni"))
PATRONI_REQUIREMENT = f"patroni[etcd3,psycopg2-binary]=={PATRONI_VERSION}"
PG_OS_USER = "postgres"
SSHD_PRIVSEP_DIR = Path("/run/sshd")
# Where the postgres-owned scratch dirs go (/tmp is world-traversable, pytest's tmp is not).
SCRATCH_ROOT = Path(os.environ.get("PGHA_TEST_SCRATCH", "/tmp"))
SCRATCH_PREFIX = "pgha-test-"

_INSTALL_HINT = "run `bash .ci/install-deps` (as root) to install the test dependencies"


class ServiceError(RuntimeError):
    """A test service could not be started or stopped."""


# --------------------------------------------------------------------------- utilities

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


# Below Linux's ephemeral range (32768-60999), so an outgoing connection's source port can
# never take a port between our check and the service's bind.
PORT_RANGE = (20000, 32767)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """Return a free TCP port on ``host`` (outside the ephemeral range), never twice per process."""
    return free_port_on([host])


def worker_port_range() -> tuple[int, int]:
    """This pytest-xdist worker's share of PORT_RANGE: two workers never pick the same port in the
    moment between "free" and a server's bind (a postgres once failed with "Address already in use")."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % count
    size = (PORT_RANGE[1] - PORT_RANGE[0] + 1) // count
    low = PORT_RANGE[0] + index * size
    return low, low + size - 1


def free_port_on(hosts: list[str]) -> int:
    """A port free on every address in ``hosts`` (members that share one port number)."""
    rng = secrets.SystemRandom()
    with _ports_lock:
        for _ in range(500):
            port = rng.randint(*worker_port_range())
            if port not in _ports_handed_out and all(_port_free(h, port) for h in hosts):
                _ports_handed_out.add(port)
                return port
    raise ServiceError(f"could not find a port in {PORT_RANGE} free on {hosts}")


def require_binary(path: Path | str, apt_package: str) -> Path:
    """Fail with a clear message when a required executable is missing."""
    path = Path(path)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServiceError(f"{path} not found (apt package {apt_package}); {_INSTALL_HINT}")
    return path


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.1, check: Callable[[], None] | None = None) -> None:
    """Poll ``predicate`` until true; ``check`` may raise early (e.g. process died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - a not-yet-ready service may raise anything
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_request(url: str, method: str = "GET", body: Any = None, *,
                 auth: tuple[str, str] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """Plain HTTP request on loopback (proxies ignored); returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | str, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file (for error messages)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- processes

def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All current descendant pids of ``pid`` (children first)."""
    tree, out, todo = _ppid_map(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _wait_gone(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate(pid: int, proc: subprocess.Popen[bytes] | None = None, *,
              sig: int = signal.SIGTERM, timeout: float = 15.0,
              kill_descendants: bool = True) -> None:
    """Stop ``pid`` with ``sig``, escalating to SIGKILL; then its remaining descendants."""
    kids = descendants(pid) if kill_descendants else []
    if (proc is not None and proc.poll() is None) or (proc is None and pid_alive(pid)):
        _signal(pid, sig)
        if not _wait_gone(pid, timeout, proc):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0, proc)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    for kid in kids:
        if pid_alive(kid):
            _signal(kid, signal.SIGTERM)
    for kid in kids:
        if not _wait_gone(kid, 5.0):
            _signal(kid, signal.SIGKILL)
            _wait_gone(kid, 2.0)


def _postgres_ids() -> tuple[int, int, list[int]]:
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError as exc:
        raise ServiceError(f"OS user {PG_OS_USER!r} missing (apt package postgresql-15); "
                           f"{_INSTALL_HINT}") from exc
    return entry.pw_uid, entry.pw_gid, os.getgrouplist(PG_OS_USER, entry.pw_gid)


def spawn(argv: list[str], log_file: Path, *, as_postgres: bool = False,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_file``."""
    kwargs: dict[str, Any] = {}
    if as_postgres:
        uid, gid, groups = _postgres_ids()
        kwargs.update(user=uid, group=gid, extra_groups=groups)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=cwd, close_fds=True, **kwargs)


def run_checked(argv: list[str], *, as_postgres: bool = False, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a short command to completion; raise ServiceError with its output on failure."""
    kwargs: dict[str, Any] = {}
    if as_postgres:
        uid, gid, groups = _postgres_ids()
        kwargs.update(user=uid, group=gid, extra_groups=groups)
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=timeout, **kwargs)
    if res.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


def _postgres_env(home: Path, bin_dir: Path = PG_BIN_DIR, lib_dir: Path | None = None) -> dict[str, str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": PG_OS_USER, "LOGNAME": PG_OS_USER}
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    return env


def pg13_missing() -> str | None:
    """Why PostgreSQL 13 cannot run here (None: it can)."""
    for tool in ("initdb", "postgres"):
        if not os.access(PG13_BIN_DIR / tool, os.X_OK):
            return (f"no PostgreSQL 13 binaries at {PG13_BIN_DIR} (Debian 11's postgresql-13 unpacked by "
                    f"`bash .ci/install-deps`; PGHA_PG13_ROOT moves it)")
    return None


def make_postgres_dir(kind: str) -> Path:
    """Create ``/tmp/pgha-test-<kind>-<random>`` owned by postgres, mode 0700."""
    uid, gid, _ = _postgres_ids()
    path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-", dir=SCRATCH_ROOT))
    os.chown(path, uid, gid)
    path.chmod(0o700)
    return path


def write_postgres_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a file readable only by the postgres OS user."""
    uid, gid, _ = _postgres_ids()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def _read_postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _is_postmaster(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: a live postgres process whose cwd is ``data_dir``."""
    argv = _cmdline(pid)
    if not argv or Path(argv[0]).name not in ("postgres", "postmaster") or not pid_alive(pid):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir.resolve()
    except OSError:
        return True


def stop_postmaster(data_dir: Path, known_pid: int | None = None, timeout: float = 30.0) -> None:
    """Fast-shutdown the postmaster of ``data_dir`` (pid from postmaster.pid and ``known_pid``)."""
    pids = {p for p in (_read_postmaster_pid(data_dir), known_pid) if p}
    for pid in pids:
        if not _is_postmaster(pid, data_dir):
            continue
        kids = descendants(pid)
        _signal(pid, signal.SIGINT)  # fast shutdown
        if not _wait_gone(pid, timeout):
            _signal(pid, signal.SIGQUIT)  # immediate shutdown
            if not _wait_gone(pid, 5.0):
                _signal(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
        for kid in kids:
            if pid_alive(kid):
                _signal(kid, signal.SIGKILL)


# live services, stopped at interpreter exit if a test run is interrupted
_live: dict[int, Callable[[], None]] = {}


def _register(obj: Any) -> None:
    _live[id(obj)] = obj.stop


def _unregister(obj: Any) -> None:
    _live.pop(id(obj), None)


@atexit.register
def _stop_leftovers() -> None:
    for stop in reversed(list(_live.values())):
        with contextlib.suppress(Exception):
            stop()


# --------------------------------------------------------------------------- sshd

@dataclass
class SshdService:
    """A running ``sshd -D`` accepting the generated client key for root."""

    host: str
    port: int
    username: str
    key_file: Path
    host_key: str
    pid: int
    public_key: str
    config_file: Path
    log_file: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Stop sshd and any session processes it forked."""
        terminate(self.pid, self.proc)
        _unregister(self)


def _keygen(path: Path, comment: str) -> str:
    run_checked([str(SSH_KEYGEN_BIN), "-q", "-t", "ed25519", "-N", "", "-C", comment,
                 "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def _ssh_banner(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0) as sock:
        return sock.recv(64).startswith(b"SSH-")


def start_sshd(workdir: Path | str, timeout: float = 15.0, extra_config: list[str] | None = None) -> SshdService:
    """Start sshd on a free 127.0.0.1 port with fresh host and client ed25519 keys."""
    require_binary(SSHD_BIN, "openssh-server")
    require_binary(SSH_KEYGEN_BIN, "openssh-client")
    workdir = Path(workdir).resolve()
    port = free_port()
    home = workdir / f"sshd-{port}"
    home.mkdir(parents=True, mode=0o700)
    SSHD_PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key_file = home / "ssh_host_ed25519_key"
    host_pub = _keygen(host_key_file, "pgha-test-host")
    key_file = home / "client_ed25519"
    client_pub = _keygen(key_file, "pgha-test-client")
    authorized = home / "authorized_keys"
    authorized.write_text(client_pub + "\n")
    authorized.chmod(0o600)
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        f"ListenAddress {LOOPBACK}",
        f"HostKey {host_key_file}",
        f"PidFile {home / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "AcceptEnv LANG LC_*",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
        *(extra_config or []),
        "",
    ]))
    run_checked([str(SSHD_BIN), "-t", "-f", str(config)])
    log_file = home / "sshd.log"
    proc = spawn([str(SSHD_BIN), "-D", "-e", "-f", str(config)], log_file)
    svc = SshdService(host=LOOPBACK, port=port, username="root", key_file=key_file,
                      host_key=" ".join(host_pub.split()[:2]), pid=proc.pid, public_key=client_pub,
                      config_file=config, log_file=log_file, workdir=home, proc=proc)
    _register(svc)

    def check() -> None:
        if proc.poll() is not None:
            svc.stop()
            raise ServiceError(f"sshd exited with {proc.returncode}:\n{log_tail(log_file)}")

    try:
        wait_until(lambda: _ssh_banner(LOOPBACK, port), timeout, f"sshd on port {port}",
                   check=check)
    except BaseException:
        svc.stop()
        raise
    return svc


# --------------------------------------------------------------------------- etcd

@dataclass
class EtcdMember:
    """One etcd member process."""

    name: str
    client_url: str
    peer_url: str
    pid: int
    data_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Stop this member only (SIGTERM, then SIGKILL)."""
        terminate(self.pid, self.proc)

    def healthy(self) -> bool:
        """True if ``/health`` reports healthy."""
        try:
            status, body = http_request(f"{self.client_url}/health", timeout=1.0)
        except OSError:
            return False
        return status == 200 and isinstance(body, dict) and str(body.get("health")) == "true"


@dataclass
class EtcdCluster:
    """A real etcd 3.4 cluster on loopback (v3 API only)."""

    members: list[EtcdMember]
    endpoints: list[str]
    token: str
    workdir: Path

    @property
    def hosts(self) -> list[str]:
        """``host:port`` of each client URL (Patroni ``etcd3.hosts`` format)."""
        return [url.split("://", 1)[1] for url in self.endpoints]

    def stop(self) -> None:
        """Stop every member."""
        for member in self.members:
            member.stop()
        _unregister(self)


def _etcd_specs(size: int, members: list[tuple[str, str]] | None) -> list[tuple[str, str, int, int]]:
    """(name, address, client port, peer port) per member: free ports on 127.0.0.1, or one
    client and one peer port shared by members on their own addresses."""
    if members is None:
        return [(f"etcd{i}", LOOPBACK, free_port(), free_port()) for i in range(1, size + 1)]
    addresses = [address for _, address in members]
    client, peer = free_port_on(addresses), free_port_on(addresses)
    return [(name, address, client, peer) for name, address in members]


def start_etcd_cluster(workdir: Path | str, size: int = 3, timeout: float = 30.0, *,
                       heartbeat_ms: int = 100, election_ms: int = 1000,
                       members: list[tuple[str, str]] | None = None) -> EtcdCluster:
    """Start a ``size``-member etcd cluster (members started concurrently); wait until healthy.

    ``members`` ((name, address) pairs, e.g. on 127.0.0.11-13) replaces ``size``: every
    member then listens on its own address with the same client and peer ports, like hosts.
    """
    require_binary(ETCD_BIN, "etcd-server")
    if size < 1:
        raise ValueError("size must be >= 1")
    workdir = Path(workdir).resolve()
    token = f"pgha-test-{secrets.token_hex(4)}"
    home = workdir / f"etcd-{token}"
    home.mkdir(parents=True, mode=0o700)
    specs = _etcd_specs(size, members)
    initial = ",".join(f"{name}=http://{address}:{peer}" for name, address, _, peer in specs)
    cluster = EtcdCluster(members=[], endpoints=[f"http://{a}:{c}" for _, a, c, _ in specs],
                          token=token, workdir=home)
    _register(cluster)
    try:
        for name, address, client, peer in specs:
            data_dir = home / name
            log_file = home / f"{name}.log"
            proc = spawn([
                str(ETCD_BIN), "--name", name, "--data-dir", str(data_dir),
                "--listen-client-urls", f"http://{address}:{client}",
                "--advertise-client-urls", f"http://{address}:{client}",
                "--listen-peer-urls", f"http://{address}:{peer}",
                "--initial-advertise-peer-urls", f"http://{address}:{peer}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--heartbeat-interval", str(heartbeat_ms), "--election-timeout", str(election_ms),
                "--logger", "zap", "--log-outputs", "stderr",
            ], log_file, cwd=home)
            cluster.members.append(EtcdMember(
                name=name, client_url=f"http://{address}:{client}",
                peer_url=f"http://{address}:{peer}", pid=proc.pid, data_dir=data_dir,
                log_file=log_file, proc=proc))

        def check() -> None:
            for m in cluster.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise ServiceError(f"etcd member {m.name} exited with {m.proc.returncode}:\n"
                                       f"{log_tail(m.log_file)}")

        wait_until(lambda: all(m.healthy() for m in cluster.members), timeout,
                   f"{size}-member etcd cluster to be healthy", check=check)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------- PostgreSQL

@dataclass
class PostgresService:
    """A plain PostgreSQL 15 instance run by the postgres OS user."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    socket_dir: Path
    base_dir: Path
    log_file: Path
    pid: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    bin_dir: Path = PG_BIN_DIR  # the server's own binaries (PG13_BIN_DIR for a PostgreSQL 13)
    lib_dir: Path | None = None  # LD_LIBRARY_PATH for them (PG13_LIB_DIR)

    @property
    def env(self) -> dict[str, str]:
        """The environment its postgres runs with (a restart uses it)."""
        return _postgres_env(self.base_dir, self.bin_dir, self.lib_dir)

    @property
    def dsn(self) -> str:
        """libpq key/value connection string (TCP, password auth; values quoted by libpq's rules)."""
        from psycopg2.extensions import make_dsn

        return make_dsn(host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres")

    def postmaster_pid(self) -> int | None:
        """Pid in ``postmaster.pid`` (None when not running)."""
        return _read_postmaster_pid(self.data_dir)

    def stop(self, remove: bool = True) -> None:
        """Fast-shutdown the postmaster found in postmaster.pid, then remove ``base_dir``."""
        stop_postmaster(self.data_dir, self.pid)
        if self.proc is not None:
            terminate(self.proc.pid, self.proc, sig=signal.SIGINT, kill_descendants=False)
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        _unregister(self)


def _pg_ready(host: str, port: int) -> bool:
    res = subprocess.run([str(PG_BIN_DIR / "pg_isready"), "-q", "-h", host, "-p", str(port),
                          "-t", "1"], capture_output=True)
    return res.returncode == 0


def start_postgres(workdir: Path | str, password: str, timeout: float = 60.0, *, bin_dir: Path = PG_BIN_DIR,
                   lib_dir: Path | None = None) -> PostgresService:
    """initdb + start a PostgreSQL 15 (or the one in ``bin_dir``, its libraries in ``lib_dir``) on a free
    127.0.0.1 port (scram-sha-256 for TCP)."""
    for tool in ("initdb", "postgres"):
        require_binary(bin_dir / tool, "postgresql-15" if bin_dir == PG_BIN_DIR else str(bin_dir))
    require_binary(PG_BIN_DIR / "pg_isready", "postgresql-15")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = make_postgres_dir("pg")
    data_dir, socket_dir = base / "data", base / "sock"
    uid, gid, _ = _postgres_ids()
    socket_dir.mkdir(mode=0o700)
    os.chown(socket_dir, uid, gid)
    port = free_port()
    log_file = workdir / f"postgres-{port}.log"
    env = _postgres_env(base, bin_dir, lib_dir)
    try:
        pwfile = write_postgres_file(base / "pwfile", password + "\n")
        try:
            run_checked([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                         f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                         *(["--no-instructions"] if bin_dir == PG_BIN_DIR else [])],  # 14+
                        as_postgres=True, env=env, cwd=base)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# pgha test settings\n"
                       f"listen_addresses = '{LOOPBACK}'\n"
                       f"port = {port}\n"
                       f"unix_socket_directories = '{socket_dir}'\n"
                       "password_encryption = 'scram-sha-256'\n"
                       "fsync = off\n"
                       "synchronous_commit = off\n"
                       "full_page_writes = off\n"
                       "max_connections = 50\n"
                       "shared_buffers = 32MB\n")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    proc = spawn([str(bin_dir / "postgres"), "-D", str(data_dir)], log_file,
                 as_postgres=True, env=env, cwd=base)
    svc = PostgresService(host=LOOPBACK, port=port, user="postgres", password=password,
                          data_dir=data_dir, socket_dir=socket_dir, base_dir=base,
                          log_file=log_file, pid=proc.pid, proc=proc, bin_dir=bin_dir, lib_dir=lib_dir)
    _register(svc)

    def check() -> None:
        if proc.poll() is not None:
            raise ServiceError(f"postgres exited with {proc.returncode}:\n{log_tail(log_file)}")

    try:
        wait_until(lambda: _pg_ready(LOOPBACK, port), timeout, f"postgres on port {port}",
                   check=check)
    except BaseException:
        svc.stop()
        raise
    return svc


# --------------------------------------------------------------------------- Patroni

def _patroni_venv_ok(venv: Path) -> bool:
    site = list((venv / "lib").glob("python3*/site-packages"))
    if not site or not (venv / "bin" / "patroni").is_file():
        return False
    wanted = (f"patroni-{PATRONI_VERSION}.dist-info", "psycopg2_binary-*.dist-info",
              "python_etcd-*.dist-info")
    return all(any(s.glob(pattern) for s in site) for pattern in wanted)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_patroni_venv(venv: Path | str = PATRONI_VENV) -> Path:
    """Create (if missing) a world-readable Patroni venv (Debian python3); return bin/patroni."""
    venv = Path(venv)
    exe = venv / "bin" / "patroni"
    if _patroni_venv_ok(venv):
        return exe
    require_binary(SYSTEM_PYTHON, "python3")
    with _file_lock(venv.parent / ".patroni-venv.lock"):
        if _patroni_venv_ok(venv):
            return exe
        venv.parent.chmod(0o755)
        if not (venv / "bin" / "pip").exists():
            try:
                run_checked([str(SYSTEM_PYTHON), "-m", "venv", "--clear", str(venv)], timeout=300)
            except ServiceError as exc:
                raise ServiceError(f"{exc}\n(apt package python3-venv); {_INSTALL_HINT}") from exc
        run_checked([str(venv / "bin" / "pip"), "install", "--quiet", PATRONI_REQUIREMENT],
                    timeout=900)
        for root, dirs, files in os.walk(venv):
            for name in dirs + files:
                p = Path(root, name)
                if not p.is_symlink():
                    mode = p.stat().st_mode
                    p.chmod(mode | 0o044 | (0o011 if mode & 0o100 or p.is_dir() else 0))
        venv.chmod(0o755)
    if not _patroni_venv_ok(venv):
        raise ServiceError(f"Patroni venv at {venv} is incomplete after install")
    return exe


@dataclass
class PatroniService:
    """A single-node Patroni cluster (etcd3 DCS) run by the postgres OS user."""

    name: str
    scope: str
    rest_url: str
    pg_host: str
    pg_port: int
    data_dir: Path
    pid: int
    rest_user: str
    rest_password: str
    superuser_password: str
    replication_password: str
    config_file: Path
    base_dir: Path
    log_file: Path
    etcd_hosts: list[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    pid_file: Path | None = None  # members started by `patroni-ctl` (the pid changes on restart)

    @property
    def dsn(self) -> str:
        """libpq connection string for the superuser over TCP (values quoted by libpq's rules)."""
        from psycopg2.extensions import make_dsn

        return make_dsn(host=self.pg_host, port=self.pg_port, user="postgres", password=self.superuser_password,
                        dbname="postgres")

    def postmaster_pid(self) -> int | None:
        """Pid in ``postmaster.pid`` (None when not running)."""
        return _read_postmaster_pid(self.data_dir)

    def current_pid(self) -> int | None:
        """Patroni's pid now (from ``pid_file`` when a member is restarted by ``patroni-ctl``)."""
        return _read_pid_file(self.pid_file) if self.pid_file else self.pid

    def stop(self, remove: bool = True) -> None:
        """SIGTERM Patroni and wait, then make sure its postmaster is gone; remove ``base_dir``."""
        pm_pid = self.postmaster_pid()
        pid = self.current_pid()
        if pid:
            terminate(pid, None if self.pid_file else self.proc, timeout=60.0)
        stop_postmaster(self.data_dir, pm_pid)
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        _unregister(self)


def patroni_config(*, name: str, scope: str, rest_port: int, pg_port: int, base: Path,
                   etcd_hosts: list[str], rest_user: str, rest_password: str,
                   superuser_password: str, replication_password: str, address: str = LOOPBACK,
                   hba_network: str = f"{LOOPBACK}/32", dcs: dict[str, Any] | None = None,
                   parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Patroni config dict used by :func:`start_patroni` and :func:`start_patroni_cluster`.

    ``dcs`` and ``parameters`` override the bootstrap DCS settings and the local
    PostgreSQL parameters (e.g. ``synchronous_mode``, ``synchronous_commit``).
    """
    return {
        "scope": scope,
        "name": name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"{address}:{rest_port}",
            "connect_address": f"{address}:{rest_port}",
            "authentication": {"username": rest_user, "password": rest_password},
        },
        "etcd3": {"hosts": etcd_hosts, "protocol": "http"},
        "bootstrap": {
            "dcs": {
                "ttl": 20, "loop_wait": 2, "retry_timeout": 5,
                "maximum_lag_on_failover": 1048576,
                "postgresql": {
                    "use_pg_rewind": True,
                    "parameters": {"wal_level": "replica", "hot_standby": "on",
                                   "max_wal_senders": 5, "max_replication_slots": 5,
                                   "wal_log_hints": "on"},
                },
                **(dcs or {}),
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "no-sync"],
        },
        "postgresql": {
            "listen": f"{address}:{pg_port}",
            "connect_address": f"{address}:{pg_port}",
            "data_dir": str(base / "data"),
            "bin_dir": str(PG_BIN_DIR),
            "pgpass": str(base / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": superuser_password},
                "replication": {"username": "replicator", "password": replication_password},
            },
            "parameters": {
                "unix_socket_directories": str(base / "sock"),
                "password_encryption": "scram-sha-256",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "shared_buffers": "32MB",
                "max_connections": 50,
                **(parameters or {}),
            },
            "pg_hba": [
                "local all all trust",
                "local replication all trust",
                f"host all all {hba_network} scram-sha-256",
                f"host replication replicator {hba_network} scram-sha-256",
            ],
        },
    }


def _patroni_base() -> Path:
    """A postgres-owned scratch dir for one member, with its socket dir."""
    base = make_postgres_dir("patroni")
    uid, gid, _ = _postgres_ids()
    (base / "sock").mkdir(mode=0o700)
    os.chown(base / "sock", uid, gid)
    return base


def start_patroni(workdir: Path | str, etcd: EtcdCluster, rest_user: str, rest_password: str,
                  superuser_password: str, replication_password: str, *,
                  name: str = "pgha-node1", scope: str | None = None,
                  timeout: float = 90.0) -> PatroniService:
    """Bootstrap a single-node Patroni 4.1.5 cluster (unique scope) and wait until it leads."""
    for tool in ("initdb", "postgres", "pg_ctl"):
        require_binary(PG_BIN_DIR / tool, "postgresql-15")
    exe = ensure_patroni_venv()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scope = scope or f"pgha-test-{secrets.token_hex(4)}"
    base = _patroni_base()
    rest_port, pg_port = free_port(), free_port()
    cfg = patroni_config(name=name, scope=scope, rest_port=rest_port, pg_port=pg_port, base=base,
                         etcd_hosts=etcd.hosts, rest_user=rest_user, rest_password=rest_password,
                         superuser_password=superuser_password,
                         replication_password=replication_password)
    # JSON is valid YAML, so no YAML library is needed here.
    config_file = write_postgres_file(base / "patroni.yml", json.dumps(cfg, indent=2))
    log_file = workdir / f"patroni-{scope}-{name}.log"
    proc = spawn([str(exe), str(config_file)], log_file, as_postgres=True,
                 env=_postgres_env(base), cwd=base)
    svc = PatroniService(name=name, scope=scope, rest_url=f"http://{LOOPBACK}:{rest_port}",
                         pg_host=LOOPBACK, pg_port=pg_port, data_dir=base / "data", pid=proc.pid,
                         rest_user=rest_user, rest_password=rest_password,
                         superuser_password=superuser_password,
                         replication_password=replication_password, config_file=config_file,
                         base_dir=base, log_file=log_file, etcd_hosts=list(etcd.hosts), proc=proc)
    _register(svc)

    def check() -> None:
        if proc.poll() is not None:
            raise ServiceError(f"patroni exited with {proc.returncode}:\n{log_tail(log_file)}")

    try:
        wait_until(lambda: http_request(f"{svc.rest_url}/leader", timeout=1.0)[0] == 200,
                   timeout, f"patroni {scope}/{name} to become leader", interval=0.25,
                   check=check)
    except BaseException as exc:
        svc.stop()
        if isinstance(exc, ServiceError) and "timed out" in str(exc):
            raise ServiceError(f"{exc}\n{log_tail(log_file)}") from exc
        raise
    return svc


PATRONI_CTL_STATE = "ctl.json"


def _read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def patroni_ctl(verb: str, base: Path | str) -> int:
    """``systemctl VERB patroni`` for a member made by :func:`start_patroni_cluster`.

    ``start`` spawns Patroni detached (pid in ``patroni.pid``); ``stop`` sends SIGTERM to
    Patroni only and waits (``KillMode=process``: Patroni stops its postmaster itself);
    ``is-active`` answers with the exit code; ``crash`` SIGKILLs Patroni, the postmaster and
    every child at once (a host crash, as far as the cluster can tell). Also a CLI, so a test
    ``systemctl`` stand-in reached over ssh drives the same code: ``services.py patroni-ctl VERB BASE``.
    """
    base = Path(base)
    ctl = json.loads((base / PATRONI_CTL_STATE).read_text())
    pid_file = base / "patroni.pid"
    pid = _read_pid_file(pid_file)
    running = pid is not None and pid_alive(pid)
    if verb == "is-active":
        return 0 if running else 3
    if verb == "start" and not running:
        proc = spawn([ctl["exe"], ctl["config"]], Path(ctl["log"]), as_postgres=True,
                     env=_postgres_env(base), cwd=base)
        pid_file.write_text(f"{proc.pid}\n")
    elif verb == "stop" and running:
        assert pid is not None
        terminate(pid, timeout=60.0, kill_descendants=False)
    elif verb == "crash":
        _kill_all([pid] if running and pid else [], base / "data")
    elif verb not in ("start", "stop"):
        print(f"patroni-ctl: unsupported verb {verb!r}", file=sys.stderr)
        return 1
    return 0


def _kill_all(pids: list[int], data_dir: Path) -> None:
    """SIGKILL ``pids``, the postmaster of ``data_dir`` and all their descendants at once."""
    postmaster = _read_postmaster_pid(data_dir)
    if postmaster and _is_postmaster(postmaster, data_dir):
        pids = [*pids, postmaster]
    victims = pids + [kid for pid in pids for kid in descendants(pid)]
    for victim in victims:
        _signal(victim, signal.SIGKILL)
    for victim in victims:
        _wait_gone(victim, 5.0)


@dataclass
class PatroniClusterService:
    """Patroni members on their own loopback addresses, all with the same two ports."""

    scope: str
    members: list[PatroniService]
    pg_port: int
    rest_port: int

    def member(self, name: str) -> PatroniService:
        return next(m for m in self.members if m.name == name)

    def cluster(self) -> dict[str, Any]:
        """GET /cluster from the first member that answers ({} if none does)."""
        for member in self.members:
            with contextlib.suppress(OSError):
                status, body = http_request(f"{member.rest_url}/cluster", timeout=1.0)
                if status == 200 and isinstance(body, dict):
                    return body
        return {}

    def healthy(self, sync: bool = True) -> bool:
        """One leader and every other member streaming (one of them synchronous)."""
        members = self.cluster().get("members", [])
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        streaming = [m for m in members if m.get("state") == "streaming"]
        synced = [m for m in streaming if m.get("role") == "sync_standby"]
        return len(leaders) == 1 and len(streaming) == len(self.members) - 1 and (synced or not sync)

    def stop(self) -> None:
        """Stop every member at once (each waits for its own Patroni and postmaster)."""
        threads = [threading.Thread(target=member.stop) for member in self.members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _unregister(self)


def start_patroni_cluster(workdir: Path | str, etcd: EtcdCluster, nodes: list[tuple[str, str]],
                          rest_user: str, rest_password: str, superuser_password: str,
                          replication_password: str, *, dcs: dict[str, Any] | None = None,
                          parameters: dict[str, Any] | None = None,
                          timeout: float = 120.0) -> PatroniClusterService:
    """Bootstrap a Patroni cluster of ``nodes`` ((name, address) pairs, e.g. 127.0.0.11-13).

    Every member listens on its own address with the same PostgreSQL and REST ports, as
    hosts sharing one inventory would. The first member bootstraps; the others join; returns
    once one leads and the others stream (one synchronously with ``synchronous_mode``).
    Members are started and stopped through :func:`patroni_ctl` (pid files).
    """
    exe = ensure_patroni_venv()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scope = f"pgha-test-{secrets.token_hex(4)}"
    addresses = [address for _, address in nodes]
    pg_port, rest_port = free_port_on(addresses), free_port_on(addresses)
    cluster = PatroniClusterService(scope=scope, members=[], pg_port=pg_port, rest_port=rest_port)
    _register(cluster)
    secrets_ = {"rest_user": rest_user, "rest_password": rest_password,
                "superuser_password": superuser_password, "replication_password": replication_password}
    try:
        for name, address in nodes:
            base = _patroni_base()
            cfg = patroni_config(name=name, scope=scope, rest_port=rest_port, pg_port=pg_port,
                                 base=base, etcd_hosts=etcd.hosts, address=address,
                                 hba_network="127.0.0.0/8", dcs=dcs, parameters=parameters,
                                 **secrets_)
            config_file = write_postgres_file(base / "patroni.yml", json.dumps(cfg, indent=2))
            log_file = workdir / f"patroni-{scope}-{name}.log"
            (base / PATRONI_CTL_STATE).write_text(json.dumps(
                {"exe": str(exe), "config": str(config_file), "log": str(log_file)}))
            cluster.members.append(PatroniService(
                name=name, scope=scope, rest_url=f"http://{address}:{rest_port}", pg_host=address,
                pg_port=pg_port, data_dir=base / "data", pid=0, config_file=config_file,
                base_dir=base, log_file=log_file, etcd_hosts=list(etcd.hosts),
                pid_file=base / "patroni.pid", **secrets_))
        first = cluster.members[0]
        run_checked([sys.executable, __file__, "patroni-ctl", "start", str(first.base_dir)])
        wait_until(lambda: http_request(f"{first.rest_url}/leader", timeout=1.0)[0] == 200,
                   timeout, f"patroni {scope}/{first.name} to bootstrap", interval=0.25)
        for member in cluster.members[1:]:
            run_checked([sys.executable, __file__, "patroni-ctl", "start", str(member.base_dir)])
        wait_until(lambda: cluster.healthy(sync=bool((dcs or {}).get("synchronous_mode"))),
                   timeout, f"{len(nodes)}-member Patroni cluster {scope} to stream", interval=0.25)
    except BaseException as exc:
        logs = "\n".join(f"--- {m.name}\n{log_tail(m.log_file, 15)}" for m in cluster.members)
        cluster.stop()
        if isinstance(exc, ServiceError):
            raise ServiceError(f"{exc}\n{logs}") from exc
        raise
    return cluster


# --------------------------------------------------------------------------- HAProxy

@dataclass
class HAProxyService:
    """HAProxy in master-worker mode (``-W -db``) with a master CLI socket."""

    pid: int
    config_path: Path
    master_socket: Path
    log_file: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _own_socket_dir: Path | None = field(default=None, repr=False, compare=False)

    def master_command(self, command: str, timeout: float = 5.0) -> str:
        """Send a command to the master CLI (e.g. ``show proc``)."""
        return haproxy_command(self.master_socket, command, timeout=timeout)

    def processes(self) -> dict[str, Any]:
        """Parsed ``show proc``: master reload counters and current worker pids."""
        return _parse_show_proc(self.master_command("show proc"))

    def worker_pids(self) -> list[int]:
        """Pids of the current (not old) workers."""
        return self.processes()["workers"]

    def stop(self) -> None:
        """Hard-stop master and workers (SIGTERM to master, leftovers killed by pid)."""
        terminate(self.pid, self.proc)
        if self._own_socket_dir is not None:
            shutil.rmtree(self._own_socket_dir, ignore_errors=True)
        _unregister(self)


def haproxy_command(socket_path: Path | str, command: str, timeout: float = 5.0) -> str:
    """Send one command to an HAProxy unix CLI socket (stats or master) and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(command.rstrip("\n").encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the master CLI answers only after end of input
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _parse_show_proc(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"master": None, "reloads": 0, "failed": 0, "workers": [], "old": []}
    section = "master"
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            header = stripped.lstrip("#").strip().lower()
            section = {"workers": "workers", "old workers": "old"}.get(
                header, "master" if header.startswith("<pid>") else "other")
            continue
        parts = stripped.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if section == "master" and parts[1] == "master":
            out["master"] = int(parts[0])
            out["reloads"] = int(parts[2])
            if "[failed:" in stripped:
                out["failed"] = int(stripped.split("[failed:", 1)[1].split("]")[0])
        elif section in ("workers", "old"):
            out[section].append(int(parts[0]))
    return out


def haproxy_check_config(config_path: Path | str) -> None:
    """Validate a config with ``haproxy -c``; raise ServiceError with HAProxy's message."""
    run_checked([str(HAPROXY_BIN), "-c", "-f", str(config_path)])


def start_haproxy(config_path: Path | str, workdir: Path | str,
                  timeout: float = 15.0) -> HAProxyService:
    """Run ``haproxy -W -db -f config_path`` as root and wait until a worker is up."""
    require_binary(HAPROXY_BIN, "haproxy")
    config_path = Path(config_path).resolve()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    haproxy_check_config(config_path)
    tag = secrets.token_hex(3)
    own_dir: Path | None = None
    master_socket = workdir / f"haproxy-master-{tag}.sock"
    if len(str(master_socket)) > 97:  # HAProxy refuses a socket path longer than 97 bytes
        own_dir = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}haproxy-", dir=SCRATCH_ROOT))
        master_socket = own_dir / "master.sock"
    log_file = workdir / f"haproxy-{tag}.log"
    proc = spawn([str(HAPROXY_BIN), "-W", "-db", "-S", f"{master_socket},mode,600",
                  "-f", str(config_path)], log_file, cwd=workdir)
    svc = HAProxyService(pid=proc.pid, config_path=config_path, master_socket=master_socket,
                         log_file=log_file, workdir=workdir, proc=proc, _own_socket_dir=own_dir)
    _register(svc)

    def check() -> None:
        if proc.poll() is not None:
            raise ServiceError(f"haproxy exited with {proc.returncode}:\n{log_tail(log_file)}")

    try:
        wait_until(lambda: bool(svc.worker_pids()), timeout, "haproxy worker", check=check)
    except BaseException:
        svc.stop()
        raise
    return svc


def haproxy_reload(service: HAProxyService, timeout: float = 15.0) -> list[int]:
    """Validate the config, SIGUSR2 the master and wait for the new worker; return worker pids."""
    haproxy_check_config(service.config_path)
    before = service.processes()
    old_workers = set(before["workers"])
    os.kill(service.pid, signal.SIGUSR2)
    state: dict[str, Any] = {}

    def reloaded() -> bool:
        state.update(service.processes())
        return state["reloads"] > before["reloads"] and bool(set(state["workers"]) - old_workers)

    def check() -> None:
        if service.proc is not None and service.proc.poll() is not None:
            raise ServiceError("haproxy master exited during reload:\n"
                               + log_tail(service.log_file))
        if state.get("failed", before["failed"]) > before["failed"]:
            raise ServiceError(f"haproxy reload failed:\n{log_tail(service.log_file)}")

    wait_until(reloaded, timeout, "haproxy reload", check=check)
    return list(state["workers"])


# --------------------------------------------------------------------------- PgBouncer

@dataclass
class PgBouncerService:
    """PgBouncer run by the postgres OS user on 127.0.0.1, its files in ``base_dir`` (postgres, 0700)."""

    host: str
    port: int
    base_dir: Path
    socket_dir: Path
    config_path: Path
    log_file: Path
    pid: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def path(self, name: str) -> Path:
        return self.base_dir / name

    def write(self, name: str, text: str) -> None:
        """Replace one of its files (readable by the postgres user only)."""
        write_postgres_file(self.base_dir / name, text)

    def stop(self) -> None:
        """SIGINT (PgBouncer's fast shutdown), then what is left by pid; removes ``base_dir``."""
        terminate(self.pid, self.proc, sig=signal.SIGINT)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        _unregister(self)


def start_pgbouncer(workdir: Path | str, files: Callable[[Path, int], dict[str, str]],
                    timeout: float = 15.0) -> PgBouncerService:
    """
    Run ``pgbouncer pgbouncer.ini`` as the postgres OS user on a free 127.0.0.1 port.

    ``files(base_dir, port)`` gives the files to write into ``base_dir`` (``pgbouncer.ini``
    among them), so the config can name its own paths and port; its Unix socket directory
    is ``base_dir/sock``.
    """
    require_binary(PGBOUNCER_BIN, "pgbouncer")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = make_postgres_dir("pgbouncer")
    socket_dir = base / "sock"
    uid, gid, _ = _postgres_ids()
    socket_dir.mkdir(mode=0o700)
    os.chown(socket_dir, uid, gid)
    port = free_port()
    try:
        for name, text in files(base, port).items():
            write_postgres_file(base / name, text)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    log_file = workdir / f"pgbouncer-{port}.log"
    config = base / "pgbouncer.ini"
    proc = spawn([str(PGBOUNCER_BIN), str(config)], log_file, as_postgres=True, env=_postgres_env(base), cwd=base)
    svc = PgBouncerService(host=LOOPBACK, port=port, base_dir=base, socket_dir=socket_dir, config_path=config,
                           log_file=log_file, pid=proc.pid, proc=proc)
    _register(svc)

    def check() -> None:
        if proc.poll() is not None:
            raise ServiceError(f"pgbouncer exited with {proc.returncode}:\n{log_tail(log_file)}")

    try:
        wait_until(lambda: tcp_accepts(LOOPBACK, port), timeout, f"pgbouncer on port {port}", check=check)
    except BaseException:
        svc.stop()
        raise
    return svc


# --------------------------------------------------------------------------- CLI

def _main(argv: list[str]) -> int:
    if argv[1:] == ["ensure-patroni-venv"]:
        print(ensure_patroni_venv())
        return 0
    if len(argv) == 4 and argv[1] == "patroni-ctl":
        return patroni_ctl(argv[2], argv[3])
    print(f"usage: {argv[0]} ensure-patroni-venv | patroni-ctl start|stop|is-active|crash BASE_DIR",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
