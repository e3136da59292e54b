"""PgBouncer's admin console on an Airflow host, over SSH.

The console is reached with ``psql`` run on the host itself, as the OS user PgBouncer runs as,
on its Unix socket: the HBA file admits that user there by ``peer`` and nobody anywhere else,
so no password exists to leak onto a command line. ``timeout`` bounds every command on the
host side: a PAUSE blocks its admin connection until every server connection is released,
and must never hang the task (or Airflow behind it).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

from pgha.compat import AirflowException, BaseHook

from pgha import pgdata
from pgha.hooks.remote import CommandFailed, CommandResult, RemoteHook
from pgha.osfamily import PgBouncerOs
from pgha.pgbouncer import (ADMIN_DATABASE, Backend, Blocker, PauseTimedOut, ResumeFailed, backend_of, ini_key,
                            parse_csv)
from pgha.pgdata import Endpoint

TIMED_OUT = 124  # timeout(1)'s exit code
ARMED_RESUME = "pgha-resume-after-pause"  # the name ($0) of the shell that RESUMEs if the task dies in the pause,
# followed by the PgBouncer's port


def _paused(databases: list[dict[str, str]], database: str) -> bool:
    return any(row.get("name") == database and row.get("paused") == "1" for row in databases)


class PgBouncerAdminHook(BaseHook):
    """
    PAUSE, RESUME, RELOAD and SHOW on one host's PgBouncer.

    :param remote: the RemoteHook of the Airflow host.
    :param os_user: the OS user PgBouncer runs as (its admin user).
    :param socket_dir: PgBouncer's ``unix_socket_dir``.
    :param port: PgBouncer's ``listen_port`` (names the socket).
    :param server: a superuser login on the server PgBouncer currently sends its connections
        to, for ``blocking_transactions`` (pg_stat_activity); None: not reported.
    :param psql: the psql executable on the host.
    """

    hook_name = "PgBouncer admin console"

    def __init__(self, remote: RemoteHook, *, os_user: str, socket_dir: str, port: int,
                 server: Endpoint | None = None, psql: str = "psql") -> None:
        super().__init__()
        self.remote = remote
        self.os_user = os_user
        self.socket_dir = socket_dir
        self.port = port
        self.server = server
        self.psql = psql

    @classmethod
    def on_host(cls, remote: RemoteHook, paths: PgBouncerOs, port: int,
                server: Endpoint | None = None) -> PgBouncerAdminHook:
        """The console of the PgBouncer the OS family's package installs on ``remote``'s host."""
        return cls(remote, os_user=paths.user, socket_dir=paths.socket_dir, port=port, server=server, psql=paths.psql)

    def get_conn(self) -> RemoteHook:
        return self.remote

    def _psql(self, statements: tuple[str, ...], timeout: float) -> str:
        argv = ["runuser", "-u", self.os_user, "--", "timeout", "--kill-after=2", f"{timeout:g}",
                self.psql, "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
                "-p", str(int(self.port)), "-U", self.os_user, "-d", ADMIN_DATABASE]
        for statement in statements:
            argv += ["-c", statement]
        # from /: psql run as that user warns when it cannot enter the SSH login's home
        return "cd / && " + shlex.join(argv)

    def admin_command(self, *statements: str, timeout: float = 10, quiet: bool = False,
                      check: bool = True) -> CommandResult:
        """Run admin console statements (in order, stopping at the first error) in one round trip,
        bounded by ``timeout`` seconds on the host; stdout is the CSV of the last one that returns rows."""
        return self.remote.run(self._psql(statements, timeout), timeout=timeout + 30, quiet=quiet, check=check)

    def show(self, what: str) -> list[dict[str, str]]:
        return parse_csv(self.admin_command(f"SHOW {what}", quiet=True).stdout)

    def show_pools(self) -> list[dict[str, str]]:
        return self.show("POOLS")

    def show_databases(self) -> list[dict[str, str]]:
        return self.show("DATABASES")

    def backend(self, database: str) -> Backend | None:
        """Where PgBouncer sends ``database``'s server connections now."""
        return backend_of(self.show_databases(), database)

    def paused(self, database: str) -> bool:
        return _paused(self.show_databases(), database)

    def arm_resume(self, database: str, after: float, config: str | None = None) -> None:
        """A RESUME of ``database`` the host sends on its own after ``after`` seconds unless disarmed, so that a
        task that dies inside the pause (worker lost, SIGKILL: no on_kill runs) cannot leave Airflow waiting
        forever. Given a ``config``, it resumes only while that file is as it is now: a PgBouncer switched
        meanwhile stays paused (with several Airflow hosts, resuming one switched and one not would split
        Airflow's writes). One armed at a time: an earlier try's is disarmed first (it must not RESUME in the
        middle of this one)."""
        self.disarm_resume()
        resume = self._psql((f"RESUME {ini_key(database)}",), 10)
        if config is None:
            hashed, script = "", f"sleep {float(after):g}; {resume}"
        else:  # the hash taken now, before this returns (an unreadable file fails the arming: nothing paused)
            config = shlex.quote(config)
            hashed = f'was="$(sha256sum < {config})" && [ -n "$was" ] || exit 1; export was; '
            script = f'sleep {float(after):g}; now="$(sha256sum < {config})" && [ "$now" = "$was" ] && {resume}'
        # the name is put together by the shell: this command's own line must not match disarm_resume's pattern
        head, tail = self.armed_name.split("-", 1)
        result = self.remote.run(f"command -v setsid pkill sha256sum runuser timeout >/dev/null || exit 127; "
                                 f"{hashed}n={head}; setsid sh -c {shlex.quote(script)} \"$n-{tail}\" "
                                 "</dev/null >/dev/null 2>&1 &", timeout=30, quiet=True, check=False)
        if result.exit_code == 127:
            raise AirflowException(f"[{self.remote.host_name}] cannot arm the RESUME that ends a pause its task died in: "
                                   "setsid, pkill, sha256sum, runuser or timeout is missing (packages util-linux, "
                                   "procps, coreutils); nothing was paused")
        if not result.ok:
            raise CommandFailed(result)

    @property
    def armed_name(self) -> str:
        """The name ($0) of the shell ``arm_resume`` leaves: one per PgBouncer (its port)."""
        return f"{ARMED_RESUME}-{int(self.port)}"

    def disarm_resume(self) -> None:
        """Stop the RESUME ``arm_resume`` left for this PgBouncer (none: nothing to do). The pattern's brackets
        keep pkill from matching the shell that runs it; the end anchor, another PgBouncer's."""
        name = self.armed_name
        self.remote.run(f"pkill -f -- '[{name[0]}]{name[1:]}$'; [ $? -le 1 ]", timeout=30, quiet=True)

    def reload(self) -> None:
        """RELOAD: re-read pgbouncer.ini and the auth files (a changed [databases] host applies to new
        server connections; during a PAUSE no old one is left in use)."""
        self.admin_command("RELOAD")

    def install_and_reload(self, staged: str, config: str, database: str) -> Backend | None:
        """Move ``staged`` (written by put_file) over ``config`` and RELOAD, in ONE round trip (inside a
        PAUSE every one is time Airflow waits); returns where ``database`` goes after it."""
        result = self.remote.run(f"mv -f -T -- {shlex.quote(staged)} {shlex.quote(config)} && "
                                 + self._psql(("RELOAD", "SHOW DATABASES"), 10), timeout=40)
        return backend_of(parse_csv(result.stdout), database)

    def resume(self, database: str) -> None:
        """RESUME ``database``, checked with SHOW DATABASES in the same round trip."""
        result = self.admin_command(f"RESUME {ini_key(database)}", "SHOW DATABASES", check=False)
        if result.ok and not _paused(parse_csv(result.stdout), database):
            return
        if self.paused(database):
            raise CommandFailed(result)

    def pause(self, database: str, timeout: float) -> float:
        """
        PAUSE ``database``: returns the seconds it took once every server connection is
        released. When that takes longer than ``timeout``, the host's ``timeout`` ends the
        admin connection, PgBouncer is RESUMEd (the pause outlives the connection that asked
        for it) and PauseTimedOut names the sessions that held it.
        """
        started = time.monotonic()
        result = self.admin_command(f"PAUSE {ini_key(database)}", timeout=timeout, check=False)
        if result.ok:
            return time.monotonic() - started
        blockers = self.blocking_transactions(database) if result.exit_code == TIMED_OUT else []
        self.resume(database)  # the pause outlives the admin connection that asked for it
        if result.exit_code != TIMED_OUT:
            raise CommandFailed(result)
        raise PauseTimedOut(database, timeout, blockers)

    def blocking_transactions(self, database: str, min_age: float = 0.0) -> list[Blocker]:
        """The sessions holding a transaction in ``database`` open for ``min_age`` seconds or more,
        on the server PgBouncer sends to (``server``), oldest first; [] when no server is known."""
        if self.server is None:
            return []
        query = pgdata.statement("pgbouncer_open_transactions.sql", database=pgdata.lit(database),
                                 min_age=pgdata.lit(float(min_age)))
        with pgdata.session(self.server) as conn:
            found = pgdata.rows(conn, query)
        blockers = [Blocker(int(pid), user or "", app, addr, xact, qstart, state, float(age))
                    for pid, user, app, addr, xact, qstart, state, age in found]
        for blocker in blockers:
            self.log.warning("[%s] open transaction on %s: %s", self.remote.host_name, self.server.host, blocker)
        return blockers


def pause_every(consoles: Mapping[str, PgBouncerAdminHook], database: str, timeout: float,
                log: logging.Logger) -> None:
    """PAUSE ``database`` on every console at once, each bounded by ``timeout`` (one host's PAUSE does not
    lengthen the others' wait, 0.05 s each on the lab); once all have answered, the first failure is raised
    (PauseTimedOut names what held it). The caller RESUMEs every one either way. Interrupted (a stopped task's
    on_kill raises into the wait), it still waits for every PAUSE to answer before it raises: a PAUSE that
    landed after the caller's RESUME would leave that PgBouncer paused with its armed RESUME disarmed."""
    def pause(host: str) -> None:
        took = consoles[host].pause(database, timeout)
        log.info("[%s] PAUSE %s done in %.2fs: Airflow's transactions wait in PgBouncer", host, database, took)

    if not consoles:
        return
    pool = ThreadPoolExecutor(max_workers=len(consoles), thread_name_prefix="pgbouncer-pause")
    answers = [pool.submit(pause, host) for host in consoles]
    try:
        wait(answers)
    except BaseException:
        wait(answers)  # each PAUSE is bounded by ``timeout`` on the host
        raise
    finally:
        pool.shutdown(wait=False)
    for answer in answers:
        answer.result()


def resume_every(consoles: Mapping[str, PgBouncerAdminHook], database: str,
                 log: logging.Logger) -> dict[str, str]:
    """RESUME ``database`` on every console; one that fails does not leave the others paused. The hosts whose
    RESUME failed, with why (ResumeFailed's argument)."""
    failures = {}
    for host, console in consoles.items():
        try:
            console.resume(database)
        except Exception as exc:
            log.exception("[%s] RESUME %s failed", host, database)
            failures[host] = str(exc)
    return failures


def disarm_every(consoles: Mapping[str, PgBouncerAdminHook], log: logging.Logger,
                 keep: Collection[str] = ()) -> None:
    """Stop every console's armed RESUME but those of ``keep`` (hosts whose RESUME failed: their armed one may
    still end the pause); one that fails is logged (it RESUMEs only an unchanged PgBouncer, and the next arm
    stops it)."""
    for host, console in consoles.items():
        if host in keep:
            log.warning("[%s] its RESUME failed: its armed RESUME stays, and RESUMEs it on its own if its "
                        "pgbouncer.ini is as it was", host)
            continue
        try:
            console.disarm_resume()
        except Exception:  # noqa: BLE001 - see above
            log.exception("[%s] could not stop the armed RESUME", host)


@contextmanager
def held_back(consoles: Mapping[str, PgBouncerAdminHook], database: str, timeout: float,
              log: logging.Logger, resume_after: float = 600) -> Iterator[float]:
    """
    PAUSE ``database`` on every console at once (``pause_every``), each bounded by ``timeout``; the block
    runs once all are paused (given the seconds that took) and every one is RESUMEd when it ends, however
    it ends. A PAUSE that times out raises PauseTimedOut (what held it) after resuming them all: the block
    never runs with a PgBouncer that still lets transactions through. Each host RESUMEs on its own after
    ``resume_after`` seconds when the task died in the block (``arm_resume``).
    """
    for console in consoles.values():  # before the PAUSE: not time Airflow waits
        console.arm_resume(database, resume_after)
    paused = dict(consoles)  # all, before: a PAUSE that failed may still hold, and RESUME tolerates none
    started = time.monotonic()
    try:
        pause_every(consoles, database, timeout, log)
        yield time.monotonic() - started
    finally:
        failed = resume_every(paused, database, log)
        if paused and not failed:
            log.info("RESUME %s on %s: Airflow's transactions held %.2fs", database, ", ".join(paused),
                     time.monotonic() - started)
        disarm_every(consoles, log, keep=failed)
        if failed:
            raise ResumeFailed(failed)
