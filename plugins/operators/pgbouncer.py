"""PgBouncer on every Airflow host: install it, move Airflow onto it, and switch its server under a PAUSE.

Three steps, each with its own restart and its own way back:

- InstallPgBouncerOperator: PgBouncer in front of the source (Airflow does not use it yet);
- MoveAirflowOntoPgBouncerOperator: arms the agent that points Airflow's config at 127.0.0.1:<port>
  and restarts its units, outside the task; any failure puts the previous config back and restarts
  them again (AirflowOnPgBouncerSensor waits for its outcome);
- PausedSwitchOperator: PAUSE every PgBouncer, do the work that needs no write in flight
  (catch up, sequences, verify), point each at the cluster behind HAProxy, RESUME. Airflow is
  not restarted: its transactions wait in PgBouncer for the length of the pause.

Why SCRAM verifiers in auth_file and a peer-only admin console: see ``pgha.pgbouncer``.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from pgha.compat import AirflowException, AirflowSkipException
from pgha import airflowcfg, pgbouncer, pgdata, tls
from pgha.hooks.haproxy import (
    HAProxyHook,
    SwitchoverRefused,
    refuse_switchover_to_servers_set_aside,
    switchover_routed,
)
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.pgbouncer import PgBouncerAdminHook, disarm_every, pause_every, resume_every
from pgha.hooks.postgres import node_endpoint, peer_sql
from pgha.osfamily import PgBouncerOs
from pgha.pgbouncer import Backend, PauseTimedOut, ResumeFailed
from pgha.pgdata import Endpoint
from pgha.render import render
from pgha.cutover import BACKUP_DIR, log_path
from pgha.runtime import agent_airflow_settings, arming_task, credentials, repoint_airflow_config

from pgha.operators.base import HostOperator, PghaOperator

STATE_DIR = "/var/lib/pgha"  # root 0700: the check's pgpass, the staged airflow.cfg
CHECK_PGPASS = STATE_DIR + "/pgbouncer-check-{}.pgpass"  # one per check: two tasks on a host never share it
MODES = ("cutover", "switchover")
AGENT_MODULE = "pgha.cutover"  # the agent that restarts Airflow with a way back (role "pooler" for the move)


def role_verifiers(server: Endpoint, roles: list[str]) -> dict[str, str]:
    """Each role's stored SCRAM verifier on ``server`` (a superuser login)."""
    with pgdata.session(server) as conn:
        found = pgdata.rows(conn, pgdata.statement("pgbouncer_role_verifiers.sql", roles=pgdata.lit(roles)))
    return {role: verifier for role, verifier in found}


def host_settings(paths: PgBouncerOs, inv: Any, backend: Backend, port: int,
                  server_tls_ca_file: str | None = None) -> pgbouncer.Settings:
    return pgbouncer.Settings(config=paths.config, auth_file=paths.auth_file, hba_file=paths.hba_file,
                              socket_dir=paths.socket_dir, os_user=paths.user, listen_port=port,
                              database=inv.postgres.database, owner=inv.postgres.owner, backend=backend,
                              pool_size=inv.pgbouncer.pool_size, max_client_conn=inv.pgbouncer.max_client_conn,
                              server_tls_ca_file=server_tls_ca_file)


def ini_text(settings: pgbouncer.Settings) -> str:
    return render("pgbouncer.ini.j2", **pgbouncer.ini_context(settings))


class _PgBouncerTask:
    """What the PgBouncer operators ask of the inventory (mixed into each; no code shared by subclassing
    another operator)."""

    inventory: Any
    listen_port: int | None
    os_family: Any
    remote: Any

    @property
    def port(self) -> int:
        """PgBouncer's port on 127.0.0.1: the operator's ``listen_port``, else the inventory's ``pgbouncer.port``
        (the drill and the logical method's held-back work read the same)."""
        return self.listen_port if self.listen_port is not None else self.inventory.pgbouncer.port

    def skip_unless_pooler(self, context: Any) -> None:
        """In the migration DAG (its ``pooler`` param present): skip unless it is "pgbouncer", which needs
        the logical method (the cutover through the pause only catches up). Used alone: always runs."""
        params = context.get("params") or {}
        if "pooler" not in params:
            return
        if params["pooler"] != "pgbouncer":
            raise AirflowSkipException(f"pooler is {params['pooler']}")
        if params.get("migration_method") != "logical_replication":
            raise AirflowException("pooler pgbouncer needs migration_method logical_replication (the cutover "
                                   "through PgBouncer's pause catches up instead of copying); nothing was changed")

    def once(self, key: str, read: Callable[[], Any]) -> Any:
        """``read()`` the first time, the same value after: a connection lookup is a round trip to the task's
        supervisor, whose heartbeat goes through the very PgBouncers a pause holds; one made inside the pause
        can wait for that heartbeat's timeout (about 36 s, seen on the lab), and the supervisor kills a task
        whose heartbeat failed three times. So every login is read before the PAUSE and reused inside it."""
        cache = self.__dict__.setdefault("_read_once", {})
        if key not in cache:
            cache[key] = read()
        return cache[key]

    def source_backend(self, airflow_host: str) -> Backend:
        """The source as PgBouncer on ``airflow_host`` reaches it."""
        inv = self.inventory
        port = self.source_app().port
        address = "127.0.0.1" if airflow_host == inv.source.host else inv.host(inv.source.host).address
        return Backend(address, port)

    def cluster_backend(self, airflow_host: str) -> Backend:
        """HAProxy's write port as PgBouncer on ``airflow_host`` reaches it."""
        inv = self.inventory
        address = "127.0.0.1" if airflow_host == inv.haproxy.host else inv.host(inv.haproxy.host).address
        return Backend(address, inv.haproxy.write_port)

    def settings_for(self, host: str, backend: Backend) -> pgbouncer.Settings:
        """``host``'s PgBouncer sending to ``backend``: TLS verified against the cluster CA when that is the
        cluster with TLS on (phase 3 installed the CA on every managed host)."""
        inv = self.inventory
        to_cluster = backend == self.cluster_backend(host) and backend != self.source_backend(host)
        ca_file = tls.CA_FILE if to_cluster and inv.tls.enabled else None
        return host_settings(self.os_family(host).pgbouncer, inv, backend, self.port, ca_file)

    def app_login(self, host: str, address: str, port: int, ca_file: str | None = None) -> Any:
        """psql on ``host`` to ``address:port`` as the app login (its password in a root 0600 file for that one
        command; with ``ca_file``, TLS verified against it: verify-full); the result of the command."""
        inv = self.inventory
        app = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}")
        remote = self.remote(host)
        remote.add_secret(app.password)
        self.host_hook(host).ensure_directory(STATE_DIR, mode="0700")
        pgpass = CHECK_PGPASS.format(uuid.uuid4().hex)
        remote.put_file(pgpass, pgdata.pgpass(Endpoint(address, port, app.login, inv.postgres.database,
                                                             app.password)), mode="0600", secret=True)
        tls_env = f"PGSSLMODE=verify-full PGSSLROOTCERT={shlex.quote(ca_file)} " if ca_file else ""
        argv = [self.os_family(host).pgbouncer.psql, "-X", "-At", "-h", address, "-p", str(port),
                "-U", app.login, "-d", inv.postgres.database, "-c",
                "SELECT coalesce(inet_server_addr()::text, 'socket') || ':' || current_setting('port')"]
        try:
            return remote.run(f"PGPASSFILE={shlex.quote(pgpass)} {tls_env}PGCONNECT_TIMEOUT=10 timeout 30 "
                              + shlex.join(argv), check=False)
        finally:
            remote.run(f"rm -f {shlex.quote(pgpass)}")

    def source_app(self) -> Endpoint:
        """The source as the app role (its connection): it sees its own sessions, the ones behind PgBouncer."""
        return self.once("source_app", lambda: node_endpoint(self.inventory.source.conn_id,
                                                              database=self.inventory.postgres.database))

    def source_verifiers(self, roles: list[str]) -> dict[str, str]:
        """The roles' SCRAM verifiers on the source, read by psql on the source host as the postgres OS user
        (peer: the source connection need not be a superuser); the statement goes over stdin."""
        result = self.source_psql("pgbouncer_role_verifiers.sql", "postgres", roles=pgdata.lit(roles))
        # role|verifier: a verifier holds no "|", a role name may
        # Not added to the remote's secrets: it would mask them in the next read. They are never logged
        # (the command's output only on failure, the auth_file as a secret file: no diff).
        return dict(line.rsplit("|", 1) for line in result.stdout.splitlines() if "|" in line)

    def source_psql(self, file: str, database: str, /, check: bool = True, **parts: Any) -> Any:
        """include/sql/<file> (values quoted by psycopg2) run on the source host by psql as the postgres OS
        user (peer: the source connection need not be a superuser)."""
        return peer_sql(self.remote(self.inventory.source.host), self.source_app(), file, database, check=check,
                        **parts)

    def cluster_database(self) -> Endpoint:
        """The cluster's copy of Airflow's database, as the superuser through HAProxy."""
        return self.cluster_admin().on(self.inventory.postgres.database)

    def cluster_admin(self) -> Endpoint:
        inv = self.inventory
        return self.once("cluster_admin", lambda: self.verified(node_endpoint(
            inv.postgres.superuser_conn_id, host=inv.host(inv.haproxy.host).address, port=inv.haproxy.write_port,
            database="postgres")))

    def console(self, host: str, server: Endpoint | None = None) -> PgBouncerAdminHook:
        """The admin console of ``host``'s PgBouncer; ``server``: where to read blocking transactions."""
        return PgBouncerAdminHook.on_host(self.remote(host), self.os_family(host).pgbouncer, self.port, server)


class InstallPgBouncerOperator(_PgBouncerTask, HostOperator):
    """
    PgBouncer on one Airflow host, in front of the source; Airflow keeps its own connection
    until MoveAirflowOntoPgBouncerOperator moves it. Installs the package, writes
    pgbouncer.ini (transaction pooling, listening on 127.0.0.1 only), the auth_file (the app
    role's SCRAM verifier copied from the source's pg_authid: no password in any file) and
    the HBA file (admin console: PgBouncer's OS user by peer on the Unix socket, nobody else),
    starts it (reloads it when a file changed), and proves that the app login reaches the
    source through it. A re-run after the cutover keeps the server PgBouncer uses now.

    :param listen_port: PgBouncer's port on 127.0.0.1 (default: the inventory's ``pgbouncer.port``).
    """

    def __init__(self, *, listen_port: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listen_port = listen_port

    def run(self, context: Any) -> Any:
        self.skip_unless_pooler(context)
        inv = self.inventory
        host = self.host_hook(self.host)
        paths = host.family.pgbouncer
        self.note(f"packages {' '.join(paths.packages)}", host.ensure_packages(list(paths.packages)))
        running = host.unit_active(paths.service)
        console_answers, current = self._current_backend(running)
        backend = current or self.source_backend(self.host)
        verifiers = self.source_verifiers([inv.postgres.owner])
        if inv.postgres.owner not in verifiers:
            raise AirflowException(f"role {inv.postgres.owner!r} does not exist on the source")
        settings = self.settings_for(self.host, backend)
        files = [
            (paths.auth_file, pgbouncer.auth_file(verifiers, admin_user=paths.user), True),
            (paths.hba_file, pgbouncer.hba(settings), False),
            (paths.config, ini_text(settings), False),
        ]
        changed = False
        for path, text, secret in files:
            put = host.put_file(path, text, owner=paths.user, group=paths.user, mode="0640", secret=secret)
            self.note(path, put.changed)
            changed |= put.changed
        self.note(f"{paths.service} enabled", host.enable(paths.service))
        if not running:
            host.start(paths.service)
            self.changed(f"{paths.service} started")
        elif not console_answers:  # running, but not as pgha set it up (the package starts it with its own
            # config, whose console admits no peer login): nothing uses it yet, so a restart reads pgha's files
            host.restart(paths.service)
            self.changed(f"{paths.service} restarted on pgha's files (it ran with a configuration pgha did not write)")
        elif changed:
            self.console(self.host).reload()
            self.changed("pgbouncer reloaded (RELOAD)")
        reached = self._check_login(backend)
        return {"backend": str(backend), "listen": f"127.0.0.1:{self.port}", "reached": reached}

    def _current_backend(self, running: bool) -> tuple[bool, Backend | None]:
        """(its admin console answers pgha, where it sends the database now)."""
        if not running:
            return False, None
        try:
            current = self.console(self.host).backend(self.inventory.postgres.database)
        except Exception as exc:  # noqa: BLE001 - a PgBouncer not set up by pgha yet
            self.log.info("[%s] no current PgBouncer backend read (%s): the source", self.host, exc)
            return False, None
        if current:
            self.log.info("[%s] PgBouncer already sends to %s: kept", self.host, current)
        return True, current

    def _check_login(self, backend: Backend) -> str:
        """The app login through PgBouncer on the host."""
        result = self.app_login(self.host, "127.0.0.1", self.port)
        if not result.ok:
            raise AirflowException(f"[{self.host}] {self.inventory.postgres.owner} cannot log in through PgBouncer "
                                   f"to {backend}: {(result.stderr or result.stdout).strip()} (does the server's "
                                   "pg_hba.conf admit it from this host over TCP with scram-sha-256?)")
        reached = result.stdout.strip()
        self.log.info("[%s] through PgBouncer 127.0.0.1:%d -> %s", self.host, self.port, reached)
        return reached


class MoveAirflowOntoPgBouncerOperator(_PgBouncerTask, HostOperator):
    """
    Its own step, with its own restart and its own rollback, before the migration: points
    Airflow on one host at its local PgBouncer (which sends to the same server Airflow uses
    now). The restart is the work of an agent (``pgha.cutover``, role ``pooler``) armed here as
    a transient systemd unit outside this task (a LocalExecutor task is a child of the scheduler
    the restart stops)::

        systemd-run --quiet --collect --unit=<run id> <python> -m pgha.cutover /etc/pgha/pgbouncer-move.json

    Once Airflow has recorded this task a success, the agent stops the host's units, installs
    the airflow.cfg staged here (``[database] sql_alchemy_conn`` and Celery's ``result_backend``
    on 127.0.0.1:<port>; the previous one kept root-only), runs ``airflow db check`` through
    PgBouncer, starts the units and, on the scheduler's host, waits for a scheduler heartbeat
    read through PgBouncer. Any failure (a crash of the host included) puts the previous
    airflow.cfg back and restarts the units. ``AirflowOnPgBouncerSensor`` reports its outcome.

    :param listen_port: PgBouncer's port on 127.0.0.1 (default: the inventory's ``pgbouncer.port``).
    :param settle_timeout: seconds the scheduler has to heartbeat through PgBouncer after its start.
    """

    SETTINGS = "/etc/pgha/pgbouncer-move.json"
    PGPASS = "/etc/pgha/pgbouncer-move.pgpass"
    STAGED = f"{STATE_DIR}/airflow.cfg.pgbouncer-new"
    STATE_FILE = f"{STATE_DIR}/pgbouncer-move-state.json"
    RESUME_UNIT = "pgha-pgbouncer-move-resume.service"
    LOG_DIR = "/var/log/pgha"
    LOG_PREFIX = ""  # the log is <LOG_DIR>/<run id>.log
    RUN_PREFIX = "pgha-pgbouncer-move-"

    def __init__(self, *, listen_port: int | None = None, settle_timeout: int = 180, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listen_port = listen_port
        self.settle_timeout = settle_timeout

    def run(self, context: Any) -> Any:
        self.skip_unless_pooler(context)
        inv = self.inventory
        airflow_host = inv.airflow_host(self.host)
        remote = self.remote(self.host)
        current, live_url, wanted = repoint_airflow_config(remote, inv, self.host, "127.0.0.1", self.port)
        if wanted == current:
            self.unchanged(f"{airflow_host.config} already points at PgBouncer 127.0.0.1:{self.port}")
            return {"armed": False}
        running = [u for u in self.host_hook(self.host).units_matching(f"{self.RUN_PREFIX}*")
                   if u != self.RESUME_UNIT]
        if running:
            self.unchanged(f"a move onto PgBouncer is already armed or running: {running}")
            return {"armed": False}
        self._same_server(live_url, self.console(self.host).backend(inv.postgres.database))
        run_id = f"{self.RUN_PREFIX}{int(time.time())}"
        settings = self.agent_settings(run_id, arming_task(context))
        self.host_hook(self.host).ensure_directory(STATE_DIR, mode="0700")
        python = settings["python"]
        if not remote.run(f"{shlex.quote(python)} -c 'import {AGENT_MODULE}'", check=False).ok:
            raise AirflowException(f"[{self.host}] {python} cannot import {AGENT_MODULE}: pip-install pgha into "
                                   "the Python of this host's Airflow units")
        app = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}")
        remote.run("install -d -m 0711 /etc/pgha")
        try:
            remote.put_file(self.STAGED, wanted, mode="0600", secret=True)
            remote.put_file(self.SETTINGS, json.dumps(settings, indent=2), mode="0600")
            remote.put_file(self.PGPASS, pgdata.pgpass(Endpoint("127.0.0.1", self.port, app.login,
                                                                inv.postgres.database, app.password)),
                            mode="0600", secret=True)
            remote.run(shlex.join(["systemd-run", "--quiet", "--collect", f"--unit={run_id}", python, "-m",
                                   AGENT_MODULE, self.SETTINGS]))
        except Exception:  # no agent runs to remove them
            remote.run(f"rm -f {shlex.quote(self.PGPASS)} {shlex.quote(self.STAGED)}", check=False)
            raise
        log = str(log_path(settings))
        self.changed(f"agent {run_id} armed: once this task is recorded a success it restarts "
                     f"{', '.join(airflow_host.units)} on PgBouncer 127.0.0.1:{self.port} (or puts "
                     f"{airflow_host.config} back); log {log}")
        return {"armed": True, "run_id": run_id, "log": log}

    def agent_settings(self, run_id: str, task: dict[str, Any] | None) -> dict[str, Any]:
        """The agent's settings (no secret in them): this host's Airflow, and the local PgBouncer as the
        database it checks (the app login, its password in the pgpass file)."""
        inv = self.inventory
        app_login = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}").login
        settings = {
            **agent_airflow_settings(self.remote(self.host), inv, self.host, self.STAGED, BACKUP_DIR),
            "role": "pooler",
            "run_id": run_id,
            "database": inv.postgres.database,
            "owner": inv.postgres.owner,
            "cluster": {"host": "127.0.0.1", "port": self.port, "user": app_login},
            "pgpass": self.PGPASS,
            "record": "log",
            "log_dir": self.LOG_DIR,
            "log_prefix": self.LOG_PREFIX,
            "state_file": self.STATE_FILE,
            "resume_unit_name": self.RESUME_UNIT,
            "health_timeout": self.settle_timeout,
        }
        settings["resume_unit"] = render("pgha-cutover-resume.service.j2", python=settings["python"],
                                         module=AGENT_MODULE, settings=self.SETTINGS,
                                         what="a move of Airflow onto PgBouncer",
                                         units=[u if "." in u else f"{u}.service" for u in settings["units"]])
        if task and "map_index" in task:  # mapped over the Airflow hosts: the agent waits for every one
            task["map_indexes"] = list(range(len(inv.airflow_hosts)))
        if task:
            settings["task"] = task
        return settings

    def _same_server(self, live_url: str, backend: Backend | None) -> None:
        """PgBouncer must send where Airflow goes now: moving Airflow must not move its data."""
        parts = urlsplit(live_url)
        if backend is None:
            raise AirflowException(f"[{self.host}] PgBouncer does not serve {self.inventory.postgres.database}: "
                                   "run InstallPgBouncerOperator first")
        host = {"localhost": "127.0.0.1"}.get(parts.hostname or "", parts.hostname)
        if (host, parts.port or 5432) != (backend.host, backend.port):
            raise AirflowException(f"[{self.host}] Airflow uses {host}:{parts.port or 5432} but PgBouncer sends to "
                                   f"{backend}: nothing was changed")


class PausedSwitchOperator(_PgBouncerTask, PghaOperator):
    """
    Work that must see no write in flight, done while every Airflow host's PgBouncer holds
    Airflow's transactions back (PAUSE), so that Airflow is never restarted.

    ``mode="cutover"`` (logical method). Before anything changes: every
    Airflow host's PgBouncer answers, the cluster's app role carries the source's SCRAM
    verifier (set when not: the same password; pass-through needs the same salt), and no
    transaction on the source is older than ``max_transaction_age`` seconds. Still outside the
    pause, every table is compared on one snapshot of the source, and a change slot on the source
    (test_decoding) records what changes from then on. Then PAUSE on every PgBouncer, each
    bounded by ``pause_timeout`` (a PAUSE that times out is undone and names the sessions that
    held it); while paused: wait until the subscription confirmed the source's last position,
    copy the sequences, compare the tables that changed since or differed before (every table
    without a slot); the slot is dropped however the task ends. Then point each
    PgBouncer at HAProxy's write port (pgbouncer.ini rewritten, RELOAD, checked with SHOW
    DATABASES) and RESUME. A failed attempt puts every PgBouncer back on the source and
    resumes it; after ``attempts`` the task fails with nothing changed.

    ``mode="switchover"`` (a planned switchover, PgBouncer already on the cluster): the same
    checks and PAUSE on HAProxy's write port; while paused, Patroni's switchover and a wait
    until HAProxy routes writes to the new leader; RESUME.

    :param mode: "cutover" or "switchover".
    :param listen_port: PgBouncer's port on 127.0.0.1 (default: the inventory's ``pgbouncer.port``).
    :param pause_timeout: seconds a PAUSE may wait for open transactions (default: the inventory's
        ``pgbouncer.pause_timeout``).
    :param max_transaction_age: a transaction older than this on the source postpones the attempt.
    :param attempts: PAUSE attempts before the task fails.
    :param pause_retry_delay: seconds between attempts.
    :param catch_up_timeout: seconds the subscription has to confirm the source's last position.
    :param switchover_timeout: seconds the new leader has to take HAProxy's write port.
    :param resume_after: seconds after which each Airflow host RESUMEs its PgBouncer on its own when the
        task died inside the pause without undoing it (SIGKILL, worker lost); killed by SIGTERM (marked
        failed, timeout) the task undoes the pause itself (``on_kill``). A pause that would outlast it is
        undone before any switch.
    """

    RECHECK_TRIES = 3  # reads of a table that differed at the check, without the rows changed since

    def __init__(self, *, mode: str = "cutover", listen_port: int | None = None, pause_timeout: float | None = None,
                 max_transaction_age: float = 5, attempts: int = 3, pause_retry_delay: float = 15,
                 catch_up_timeout: float = 60, switchover_timeout: float = 60, resume_after: float = 300,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.listen_port = listen_port
        self.pause_timeout = pause_timeout
        self.max_transaction_age = max_transaction_age
        self.attempts = attempts
        self.pause_retry_delay = pause_retry_delay
        self.catch_up_timeout = catch_up_timeout
        self.switchover_timeout = switchover_timeout
        self.resume_after = resume_after
        self._in_pause = False

    @property
    def paused_at_most(self) -> float:
        """Seconds a PAUSE may wait: the operator's ``pause_timeout``, else the inventory's."""
        return self.pause_timeout if self.pause_timeout is not None else self.inventory.pgbouncer.pause_timeout

    def run(self, context: Any) -> Any:
        self.skip_unless_pooler(context)
        inv = self.inventory
        hosts = [a.host for a in inv.airflow_hosts]
        database = inv.postgres.database
        server = self.source_app() if self.mode == "cutover" else self.cluster_database()
        consoles = {host: self.console(host, server) for host in hosts}
        current = {host: consoles[host].backend(database) for host in hosts}
        missing = [h for h in hosts if current[h] is None]
        if missing:
            raise AirflowException(f"PgBouncer on {missing} does not serve {database}: run InstallPgBouncerOperator")
        self._airflow_goes_through_pgbouncer(hosts)
        if self.mode == "cutover":
            self.source_app(), self.cluster_admin()  # every login read before any pause (``once``)
            targets = {host: self.cluster_backend(host) for host in hosts}
            if all(current[h] == targets[h] for h in hosts):
                self.unchanged("every PgBouncer already sends to the cluster")
                # a RESUME an earlier try could not send; a no-op otherwise
                _fail_unless_resumed(resume_every(consoles, database, self.log))
                self._drop_change_slot()  # a killed earlier try's
                self._after_cutover(context)
                return {"switched": False, "outcome": "success"}
            self._same_verifier()
            for host in hosts:
                self._cluster_reachable(host, targets[host])
            try:
                work = partial(self._catch_up, self._verified_before_pause())
                return self._through_the_pause(context, consoles, current, targets, work)
            finally:
                self._drop_change_slot()
        else:
            targets = {host: self.cluster_backend(host) for host in hosts}
            off = [h for h in hosts if current[h] != targets[h]]
            if off:
                raise AirflowException(f"PgBouncer on {off} does not send to the cluster: a switchover through "
                                       "the pause needs the cutover done")
            leader = self._leader()
            patroni = PatroniHook(self.patroni_api_urls(), tls=self.client_tls(), conn_id=self.inventory.patroni.rest_conn_id)
            haproxy = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket)
            refuse_switchover_to_servers_set_aside(haproxy, leader, None)
            patroni.ready_to_switch_over(leader)
            self._checkpoint_on_leader()
            return self._through_the_pause(context, consoles, current, targets,
                                           partial(self._switchover, patroni, haproxy, leader))

    def _through_the_pause(self, context: Any, consoles: dict[str, PgBouncerAdminHook],
                           current: dict[str, Backend | None], targets: dict[str, Backend],
                           work: Callable[[], None]) -> dict[str, Any]:
        """Up to ``attempts`` tries of PAUSE, ``work``, switch, RESUME; a long transaction postpones a try."""
        hosts = list(consoles)
        database = self.inventory.postgres.database
        for attempt in range(1, self.attempts + 1):
            old = consoles[hosts[0]].blocking_transactions(database, self.max_transaction_age)
            if old:
                self.log.warning("attempt %d/%d postponed: %d transaction(s) older than %gs: %s", attempt,
                                 self.attempts, len(old), self.max_transaction_age, "; ".join(map(str, old)))
            else:
                try:
                    paused_for = self._paused(consoles, current, targets, work)
                except PauseTimedOut as exc:
                    self.log.warning("attempt %d/%d: %s", attempt, self.attempts, exc)
                else:
                    self.changed(f"{self.mode} done through the pause: Airflow waited {paused_for:.2f}s")
                    if self.mode == "cutover":
                        self._after_cutover(context)
                    return {"mode": self.mode, "paused_s": round(paused_for, 2), "attempt": attempt,
                            "backends": {h: str(b) for h, b in targets.items()}, "outcome": "success"}
            if attempt < self.attempts:
                time.sleep(self.pause_retry_delay)
        raise AirflowException(f"no PAUSE within {self.paused_at_most:g}s in {self.attempts} attempts: every "
                               "PgBouncer sends where it did and runs (nothing was changed)")

    def _cluster_reachable(self, host: str, backend: Backend) -> None:
        """Before any PAUSE: from ``host``, the app login reaches the cluster where its PgBouncer will send it, with
        the TLS PgBouncer will use, and PgBouncer's OS user can read the CA (a RELOAD that cannot load it keeps
        the old TLS settings and says so only in its log). Nothing is changed when not."""
        ca_file = self.settings_for(host, backend).server_tls_ca_file
        if ca_file:
            user = self.os_family(host).pgbouncer.user
            if not self.remote(host).run(f"runuser -u {shlex.quote(user)} -- test -r {shlex.quote(ca_file)}",
                                         check=False).ok:
                raise AirflowException(f"[{host}] PgBouncer's user {user} cannot read {ca_file}: it could not verify "
                                       "the cluster; nothing was changed")
        result = self.app_login(host, backend.host, backend.port, ca_file)
        if not result.ok:
            raise AirflowException(f"[{host}] the app login cannot reach the cluster at {backend}"
                                   f"{' (verify-full)' if ca_file else ''}: {(result.stderr or result.stdout).strip()}; "
                                   "nothing was changed")
        self.log.info("[%s] the cluster answers the app login at %s%s: %s", host, backend,
                      " over verified TLS" if ca_file else "", result.stdout.strip())

    def _after_cutover(self, context: Any) -> None:
        """Airflow writes to the cluster now: the subscription goes (and its slot on the source with it), and
        the cluster's database is marked live (nothing may overwrite it; the drill and a re-run read it).
        Both outside the pause; a re-run does what is left."""
        inv = self.inventory
        with pgdata.session(self.cluster_admin()) as conn:  # first: whatever fails next, nothing overwrites it
            live = pgdata.is_live(conn, inv.postgres.database)
            if not live:
                mark = pgdata.mark_live(conn, inv.postgres.database, context.get("run_id") or "paused_cutover")
        self.note(f"{inv.postgres.database} on the cluster marked: {mark}" if not live
                  else f"{inv.postgres.database} on the cluster already marked live", not live)
        with pgdata.session(self.cluster_database()) as conn:
            had = pgdata.subscription_exists(conn)
            if had:
                pgdata.drop_subscription(conn)
        self.note(f"subscription {pgdata.SUBSCRIPTION} dropped (its slot on the source with it)" if had
                  else f"no subscription {pgdata.SUBSCRIPTION} left", had)

    def _airflow_goes_through_pgbouncer(self, hosts: list[str]) -> None:
        """Every Airflow host's config points at its local PgBouncer: one that went to the server directly
        would keep writing to the source after the switch."""
        direct = []
        for host in hosts:
            config = self.inventory.airflow_host(host).config
            url = airflowcfg.get_option(self.remote(host).read_file(config) or "", "database", "sql_alchemy_conn")
            parts = urlsplit(url or "")
            if (parts.hostname, parts.port) != ("127.0.0.1", self.port):
                direct.append(f"{host} ({config}: {parts.hostname}:{parts.port})")
        if direct:
            raise AirflowException("Airflow does not go through its local PgBouncer on " + ", ".join(direct)
                                   + ": run MoveAirflowOntoPgBouncerOperator first; nothing was changed")

    def _leader(self) -> str:
        leader = PatroniHook(self.patroni_api_urls(), tls=self.client_tls()).leader()
        if not leader:
            raise AirflowException("Patroni has no single leader: no switchover")
        credentials(self.inventory.patroni.rest_conn_id, "Patroni REST API (POST /switchover)")
        return leader

    def _checkpoint_on_leader(self) -> None:
        """Before the pause: the old leader's shutdown checkpoint, inside it, then has little left to write."""
        started = time.monotonic()
        with pgdata.session(self.cluster_admin()) as conn:
            pgdata.execute(conn, pgdata.statement("checkpoint.sql"))
        self.log.info("CHECKPOINT on the leader before the pause: %.2fs", time.monotonic() - started)

    def _switchover(self, patroni: PatroniHook, haproxy: HAProxyHook, leader: str) -> None:
        """While paused: Patroni switchover, then HAProxy's write port on the new leader."""
        try:
            new, _ = switchover_routed(patroni, haproxy, leader, None, self.switchover_timeout,
                                       partial(pgdata.takes_writes, self.cluster_admin()))
        except (SwitchoverRefused, TimeoutError) as exc:
            raise AirflowException(str(exc)) from exc
        self.log.info("switched over from %s to %s; HAProxy routes writes to it", leader, new)

    def _same_verifier(self) -> None:
        owner = self.inventory.postgres.owner
        source = self.source_verifiers([owner])
        cluster = role_verifiers(self.cluster_admin(), [owner])
        if not pgbouncer.verifier_mismatch(source, cluster):
            self.unchanged(f"{owner}'s SCRAM verifier is the same on the source and the cluster")
            return
        with pgdata.session(self.cluster_admin()) as conn:
            pgdata.execute(conn, pgdata.statement("pgbouncer_set_verifier.sql", role=pgdata.ident(owner),
                                                  verifier=pgdata.lit(source[owner])))
        self.changed(f"{owner} on the cluster carries the source's SCRAM verifier (same password)")

    def _paused(self, consoles: dict[str, PgBouncerAdminHook], current: dict[str, Backend | None],
                targets: dict[str, Backend], work: Callable[[], None]) -> float:
        """PAUSE all, ``work``, point each at its target, RESUME all; on any failure every PgBouncer is
        back as it was (a switchover already done stays done: Patroni's cluster is consistent). A cutover's
        undo sends every PgBouncer to the source, also one an earlier try left on the cluster: resuming one
        on the cluster and another on the source would split Airflow's writes."""
        database = self.inventory.postgres.database
        staged = {host: self._stage(host, targets[host]) for host in consoles if current[host] != targets[host]}
        paused: list[str] = []
        back = {host: self.source_backend(host) if self.mode == "cutover" else current[host] for host in consoles}
        # an earlier try's switch: undone with the rest whenever this try fails (resumed on the cluster while the
        # others resume on the source, it would split Airflow's writes)
        switched = [host for host in consoles if back[host] is not None and current[host] != back[host]]
        armed_at = started = time.monotonic()
        try:
            for host, console in consoles.items():  # before the PAUSE: not time Airflow waits
                console.arm_resume(database, self.resume_after, self.os_family(host).pgbouncer.config)
            self.log.info("each PgBouncer RESUMEs on its own in %gs unless this task ends the pause first (a task "
                          "that dies inside it cannot leave Airflow waiting)", self.resume_after)
            self._in_pause = True  # from here a SIGTERM (on_kill) raises into this block: the undo below runs
            started = time.monotonic()
            paused.extend(consoles)  # before: a PAUSE that failed half-way may still hold, RESUME tolerates none
            pause_every(consoles, database, self.paused_at_most, self.log)
            work()
            for host in staged:
                if time.monotonic() - armed_at > self.resume_after - 30:  # its own RESUME could come mid-switch
                    raise AirflowException(f"the pause lasted {time.monotonic() - started:.0f}s, too close to the "
                                           f"PgBouncers' own RESUME after {self.resume_after:g}s: undone")
                switched.append(host)  # before: a RELOAD sent when the task is stopped must be undone too
                self._point(host, targets[host], staged[host])
            self._in_pause = False
        except BaseException:
            self._in_pause = False
            disarm_every(consoles, self.log, keep=self._undo(consoles, switched, paused, back))
            raise
        failed = resume_every({host: consoles[host] for host in paused}, database, self.log)
        held = time.monotonic() - started
        disarm_every(consoles, self.log, keep=failed)  # after the RESUME: not time Airflow waits
        _fail_unless_resumed(failed)
        return held

    def on_kill(self) -> None:
        """Killed inside the pause (marked failed, a timeout): raise into the interrupted work, whose undo then
        puts every PgBouncer back on the source and RESUMEs it. Airflow calls on_kill from its SIGTERM handler
        and then lets the task's code go on: undoing here and returning would let the task switch afterwards."""
        super().on_kill()
        if getattr(self, "_in_pause", False):
            self._in_pause = False
            raise AirflowException("the task was stopped inside the pause: undoing it (every PgBouncer back on "
                                   "the source, RESUMEd)")

    def _undo(self, consoles: dict[str, PgBouncerAdminHook], switched: list[str], paused: list[str],
              back: dict[str, Backend | None]) -> set[str]:
        """Every PgBouncer in ``switched`` back on ``back`` (the source, in a cutover), then every one paused
        RESUMEd but one whose way back failed: it may still send elsewhere than the others, and resumed it would
        split Airflow's writes (it stays paused, its armed RESUME disarmed, until someone points it). One that
        fails does not stop the others. The hosts whose RESUME failed (their armed RESUME may still end it)."""
        not_back = set()
        for host in dict.fromkeys(switched):
            to = back[host] or self.source_backend(host)
            try:
                self._point(host, to)
                self.log.warning("undone: [%s] back to %s", host, to)
            except Exception:
                not_back.add(host)
                self.log.exception("could NOT put [%s] back on %s: it stays PAUSED (resumed, it could split "
                                   "Airflow's writes); point it by hand (see the README, PgBouncer)", host, to)
        not_resumed = set()
        for host in paused:
            if host in not_back:
                continue
            try:
                consoles[host].resume(self.inventory.postgres.database)
                self.log.warning("undone: [%s] RESUME", host)
            except Exception:
                not_resumed.add(host)
                self.log.exception("could NOT RESUME [%s]: do it by hand (see the README, PgBouncer)", host)
        return not_resumed

    def _verified_before_pause(self) -> tuple[frozenset[str], str] | None:
        """Outside the pause (Airflow runs on): a change slot on the source first, then every table of one
        snapshot of the source compared with the cluster once the subscription has applied that snapshot.
        The tables found identical and the slot's position; None without a change slot (every table is then
        compared in the pause)."""
        database = self.inventory.postgres.database
        slot = pgdata.lit(pgdata.VERIFY_SLOT)
        self.source_psql("verify_slot_drop.sql", database, slot=slot)  # a killed earlier try's
        made = self.source_psql("verify_slot_create.sql", database, check=False, slot=slot)
        if not made.ok:
            self.log.warning("no change slot on the source (%s): every table is compared inside the pause",
                             (made.stderr or made.stdout).strip())
            return None
        made_at = (made.stdout.strip().splitlines() or [""])[-1]
        if not re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", made_at):
            self.log.warning("the change slot gave no position (%r): every table is compared inside the pause",
                             made.stdout[-200:])
            return None
        started = time.monotonic()
        with pgdata.session(self.source_app(), autocommit=False) as conn:
            position, source_prints = pgdata.snapshot_fingerprints(conn)
        self._wait_for_subscription(position)
        with pgdata.session(self.cluster_database()) as conn:
            identical = pgdata.identical_tables(source_prints, pgdata.fingerprints(conn))
        self.log.info("before the pause: %d of %d tables identical on the cluster at the source's position %s "
                      "(%.1fs); inside the pause only the others and the ones changed since are compared; the others "
                      "(the cluster applies on while it is read: a table written meanwhile differs): %s", len(identical),
                      len(source_prints), position, time.monotonic() - started,
                      ", ".join(sorted(set(source_prints) - identical)[:50]) or "none")
        return identical | self._identical_but_changed_rows(frozenset(source_prints) - identical, made_at), made_at

    def _identical_but_changed_rows(self, differing: frozenset[str], made_at: str) -> frozenset[str]:
        """Of the tables that differed at the check, those identical on source and cluster (read at once) but
        for the rows the change slot names as changed since it was made. Their other rows are unchanged since
        and stay so until the pause, or the slot names them then; so inside the pause only the rows named by then
        are compared, not the whole table. A row changed between the slot's read and the tables' makes a table
        differ again: read again, a few times."""
        found: frozenset[str] = frozenset()
        for attempt in range(1, self.RECHECK_TRIES + 1):
            changes = self._slot_changes(made_at)
            keyed = changes.by_rows(differing - found) if changes else {}
            if not keyed:
                break
            started = time.monotonic()
            try:
                source_prints, cluster_prints = pgdata.both_sides(self.source_app(), self.cluster_database(),
                                                                  but_rows=keyed)
            except Exception:  # noqa: BLE001 - only a shortcut: those tables are compared in full in the pause
                self.log.exception("before the pause, the read without the changed rows failed: %s compared in "
                                   "full inside the pause", ", ".join(sorted(keyed)))
                break
            now = pgdata.identical_tables(source_prints, cluster_prints)
            found |= now
            self.log.info("before the pause, read again (try %d, %.1fs) without the rows changed since the change "
                          "slot was made: identical %s; still differing %s", attempt, time.monotonic() - started,
                          ", ".join(f"{t} (but {len(keyed[t].values)} rows)" for t in sorted(now)) or "none",
                          ", ".join(sorted(set(keyed) - now)) or "none")
            if now == set(keyed):
                break
        return found

    def _slot_changes(self, made_at: str) -> pgdata.TableChanges | None:
        """What the change slot (made at ``made_at``) saw since; None when it cannot be read."""
        found = self.source_psql("verify_slot_changes.sql", self.inventory.postgres.database, check=False,
                                 slot=pgdata.lit(pgdata.VERIFY_SLOT), made_at=pgdata.lit(made_at))
        if not found.ok:
            self.log.warning("the change slot could not be read (%s): every table is compared",
                             (found.stderr or found.stdout).strip())
            return None
        return pgdata.table_changes(found.stdout.splitlines())

    def _unchanged_since(self, identical: frozenset[str], made_at: str) -> tuple[frozenset[str], dict[str, Any]]:
        """Of the tables identical before the pause, those the change slot (made at ``made_at``) saw no change
        to, and those it saw changes to in named rows only (with the rows' keys); none of either when the slot
        cannot be read, was made again since, or saw a change it cannot place."""
        changes = self._slot_changes(made_at)
        if changes is None:
            return frozenset(), {}
        if changes.unknown:
            self.log.warning("changes the slot cannot place (%s): every table is compared",
                             ", ".join(changes.unknown[:5]))
        reshaped = pgdata.reshaped_tables(self.source_app(), self.cluster_database())
        if reshaped:
            self.log.warning("columns differ between source and cluster (compared in full): %s",
                             ", ".join(sorted(reshaped)))
        by_rows = {t: keys for t, keys in changes.by_rows(identical).items() if t not in reshaped}
        self.log.info("changed since the check before the pause: %s; in named rows only (those rows compared): %s; "
                      "compared whatever changed (children, unlogged): %s",
                      ", ".join(sorted(changes.changed)) or "no table",
                      ", ".join(f"{t} ({len(k.values)} rows)" for t, k in sorted(by_rows.items())) or "none",
                      ", ".join(sorted(changes.always)) or "none")
        return changes.may_skip(identical) - reshaped, by_rows

    def _drop_change_slot(self) -> None:
        """The change slot goes whatever happened (it holds WAL on the source while it exists). A failure here
        is a warning: the cutover's outcome is decided already, and undo_logical_source drops it again."""
        try:
            left = self.source_psql("verify_slot_drop.sql", self.inventory.postgres.database,
                                    slot=pgdata.lit(pgdata.VERIFY_SLOT)).stdout.strip()
        except Exception as exc:  # noqa: BLE001 - reported, never in the way of the result
            left = f"the drop failed: {exc}"
        if left:
            self.log.warning("the change slot %s is still on the source (%s): drop it by hand (README, PgBouncer)",
                             pgdata.VERIFY_SLOT, left)

    def _wait_for_subscription(self, position: str | None = None) -> None:
        """Until the subscription confirmed ``position`` on the source (default: the source's last position)."""
        deadline = time.monotonic() + self.catch_up_timeout
        with pgdata.session(self.source_app()) as conn:
            while not (pgdata.slot_confirmed(conn, position) if position else pgdata.slot_caught_up(conn)):
                if time.monotonic() > deadline:
                    raise AirflowException(f"the subscription did not confirm the source's position "
                                           f"{position or 'now'} in {self.catch_up_timeout:g}s")
                time.sleep(0.1)

    def _catch_up(self, before: tuple[frozenset[str], str] | None) -> None:
        """While paused (logical method): the subscription has all, sequences copied, and every table compared
        but the ones identical before the pause and unchanged since (of those changed since in named rows
        only, those rows). Each step's time is logged: together they are how long Airflow waits."""
        cluster_db = self.cluster_database()
        step = time.monotonic()
        took: list[str] = []

        def lap(what: str) -> None:
            nonlocal step
            took.append(f"{what} {time.monotonic() - step:.2f}s")
            step = time.monotonic()

        with pgdata.session(self.source_app()) as conn:
            paused_at = pgdata.insert_position(conn)  # every PgBouncer is paused: its clients commit nothing after
        self._wait_for_subscription(paused_at)
        lap("subscription caught up")
        with pgdata.session(self.source_app()) as conn:
            values = pgdata.sequence_values(conn)
        with pgdata.session(cluster_db) as conn:
            pgdata.set_sequences(conn, values)
        lap("sequences")
        skip, by_rows = self._unchanged_since(*before) if before and before[0] else (frozenset(), {})
        lap("change slot read")
        source_prints, cluster_prints = pgdata.both_sides(self.source_app(), cluster_db, skip, by_rows)
        lap("compared")
        differences = pgdata.compare_fingerprints(source_prints, cluster_prints)
        if before:
            # first: a client past PgBouncer is why a compared table differs, if there is one
            self._nothing_written_since(paused_at, differences)
            lap("no write since the pause checked")
        else:
            self.log.warning("without the change slot, writes to the source by a client that does not go through "
                             "PgBouncer cannot be seen: make sure there is none (pg_stat_activity on the source)")
        if differences:
            raise AirflowException("the cluster differs from the source: " + "; ".join(differences[:20]))
        skipped = sum(1 for p in source_prints.values() if p == pgdata.VERIFIED_BEFORE)
        self.log.info("caught up; %d sequences copied; %d tables identical (%d compared in the pause, %d of them by "
                      "the rows changed since; %d identical before it and unchanged since); in the pause: %s",
                      len(values), len(source_prints), len(source_prints) - skipped, len(by_rows), skipped,
                      ", ".join(took))

    def _nothing_written_since(self, paused_at: str, differences: list[str]) -> None:
        """Inside the pause, last before the switch: no transaction committed on the source's database after
        ``paused_at`` (the change slot says). One did: a client goes to the source without PgBouncer, and it would
        go on writing there after the cutover, so the cutover is not done (undone: resumed on the source)."""
        found = self.source_psql("verify_slot_written_since.sql", self.inventory.postgres.database,
                                 slot=pgdata.lit(pgdata.VERIFY_SLOT), since=pgdata.lit(paused_at))
        written = pgdata.written_tables(found.stdout.splitlines())
        if written:
            differ = f" (and so: {'; '.join(differences[:5])})" if differences else ""
            raise AirflowException(
                f"while every PgBouncer was paused, transactions committed on the source's "
                f"{self.inventory.postgres.database} (after {paused_at}) wrote to {', '.join(written[:20])}{differ}: "
                "a client writes to the source without going through PgBouncer, and it would go on writing there "
                "after the cutover. Find it in pg_stat_activity on the source and point it at its local PgBouncer "
                "(README, PgBouncer); nothing was switched")

    def _stage(self, host: str, backend: Backend) -> str:
        """``host``'s pgbouncer.ini sending to ``backend``, written beside the live one (before the PAUSE)."""
        paths = self.os_family(host).pgbouncer
        staged = f"{paths.config}.pgha-new"
        self.remote(host).put_file(staged, ini_text(self.settings_for(host, backend)), owner=paths.user,
                                   group=paths.user, mode="0640")
        return staged

    def _point(self, host: str, backend: Backend, staged: str | None = None) -> None:
        """Put ``host``'s [databases] entry on ``backend`` and RELOAD (one round trip when staged before);
        SHOW DATABASES must agree."""
        inv = self.inventory
        staged = staged or self._stage(host, backend)
        now = self.console(host).install_and_reload(staged, self.os_family(host).pgbouncer.config,
                                                    inv.postgres.database)
        if now != backend:
            raise AirflowException(f"[{host}] after RELOAD PgBouncer sends to {now}, not {backend}")
        self.log.info("[%s] PgBouncer now sends %s to %s", host, inv.postgres.database, backend)


def _fail_unless_resumed(failed: dict[str, str]) -> None:
    if failed:
        raise AirflowException(str(ResumeFailed(failed)))
