"""PgBouncer: its file formats, and PgBouncerAdminHook against a REAL PgBouncer 1.18 (run by the
postgres OS user on loopback, rendered from include/templates/pgbouncer.ini.j2) in front of two
real PostgreSQL 15 servers (the migration's source and cluster), reached over a real sshd."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url
from pgha.compat import AirflowException, AirflowSkipException, BaseHook
from fixture_secrets import AIRFLOW_DB_PASSWORD, POSTGRES_PASSWORD
from pg_pair import DATABASE, OWNER, ensure_owner, fill_source, owner, restart_with, sql, superuser
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from recording_host import CATALOGUE, DEBIAN_12, FakeFile, FakeHost, Fleet, Package, Unit, fleet_inventory, rule
from services import PgBouncerService, PostgresService, SshdService, start_pgbouncer, start_postgres

from pgha import pgbouncer, pgdata, tls
from pgha.hooks.pgbouncer import PgBouncerAdminHook, disarm_every, held_back, pause_every
from pgha.hooks.remote import CommandResult, RemoteHook
from pgha.airflowcfg import get_option
from pgha.operators.airflow import CutoverOperator
from pgha.operators.pgbouncer import (
    InstallPgBouncerOperator,
    MoveAirflowOntoPgBouncerOperator,
    PausedSwitchOperator,
    _PgBouncerTask,
)
from pgha.osfamily import DEBIAN, PgBouncerOs
from pgha.pgbouncer import Backend, PauseTimedOut, ResumeFailed
from pgha.render import render

HOSTILE = "app %40pw@h:1/'\"\\ $x#;%s\\ end"
ODD_ROLE = 'odd "role" $x'


# ----------------------------------------------------------------------------- formats


def test_auth_file_line_doubles_quotes_and_keeps_everything_else() -> None:
    assert pgbouncer.auth_file_line('a"b', 'p"w\\ $#;') == '"a""b" "p""w\\ $#;"\n'


def test_auth_file_holds_only_scram_verifiers() -> None:
    with pytest.raises(ValueError, match="no SCRAM-SHA-256 password"):
        pgbouncer.auth_file({"airflow_user": "md5" + "0" * 32})
    with pytest.raises(ValueError, match="line break"):
        pgbouncer.auth_file_line("a\nb", "x")


def test_connstr_values_are_single_quoted_with_quotes_doubled() -> None:
    assert pgbouncer.connstr(host="h'x", port=5432) == "host='h''x' port='5432'"


def test_a_database_name_pgbouncer_cannot_read_is_refused() -> None:
    assert pgbouncer.ini_key("airflow_db") == "airflow_db"
    with pytest.raises(ValueError, match="cannot be quoted"):
        pgbouncer.ini_key("airflow db")


# ----------------------------------------------------------------------------- real services


def verifier(svc: PostgresService, role: str = OWNER) -> str:
    return sql(superuser(svc), "SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(role,))[0][0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresService, PostgresService]]:
    """Source and cluster, each with airflow_db and a ``ticks`` table; the cluster's role carries the
    source's SCRAM verifier (what pass-through needs)."""
    workdir = tmp_path_factory.mktemp("pgbouncer-pair")
    source = start_postgres(workdir, POSTGRES_PASSWORD)
    try:
        cluster = start_postgres(workdir, POSTGRES_PASSWORD)
    except BaseException:
        source.stop()
        raise
    try:
        fill_source(source)
        ensure_owner(cluster)
        with pgdata.session(superuser(cluster)) as conn:
            pgdata.recreate_database(conn, DATABASE, OWNER)
        sql(superuser(cluster), "ALTER ROLE airflow_user PASSWORD %s", params=(verifier(source),))
        for svc in (source, cluster):
            sql(owner(svc), "CREATE TABLE IF NOT EXISTS ticks (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        yield source, cluster
    finally:
        source.stop()
        cluster.stop()


def settings(base: Path, port: int, backend: PostgresService) -> pgbouncer.Settings:
    return pgbouncer.Settings(
        config=str(base / "pgbouncer.ini"), auth_file=str(base / "userlist.txt"),
        hba_file=str(base / "pgbouncer_hba.conf"), socket_dir=str(base / "sock"), os_user="postgres",
        listen_port=port, database=DATABASE, owner=OWNER, backend=Backend(backend.host, backend.port))


def ini(base: Path, port: int, backend: PostgresService) -> str:
    return render("pgbouncer.ini.j2", **pgbouncer.ini_context(settings(base, port, backend)))


@pytest.fixture
def bouncer(pair: tuple[PostgresService, PostgresService], tmp_path: Path) -> Iterator[PgBouncerService]:
    """PgBouncer in front of the source, its files as the install writes them."""
    source, _ = pair
    sql(owner(source), "TRUNCATE ticks")
    sql(owner(pair[1]), "TRUNCATE ticks")

    def files(base: Path, port: int) -> dict[str, str]:
        return {
            "pgbouncer.ini": ini(base, port, source),
            "userlist.txt": pgbouncer.auth_file({OWNER: verifier(source)}, admin_user="postgres"),
            "pgbouncer_hba.conf": pgbouncer.hba(settings(base, port, source)),
        }

    svc = start_pgbouncer(tmp_path, files)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def admin(sshd: SshdService, monkeypatch: pytest.MonkeyPatch, bouncer: PgBouncerService,
          pair: tuple[PostgresService, PostgresService]) -> Iterator[PgBouncerAdminHook]:
    set_connection(monkeypatch, "ssh_airflow", **ssh_connection(sshd))
    remote = RemoteHook("ssh_airflow", host_name="airflow-1", command_timeout=60)
    yield PgBouncerAdminHook(remote, os_user="postgres", socket_dir=str(bouncer.socket_dir), port=bouncer.port,
                             server=superuser(pair[0]), psql="/usr/bin/psql")
    remote.close()


def through(bouncer: PgBouncerService, application_name: str = "pgha-test", user: str = OWNER,
            password: str = AIRFLOW_DB_PASSWORD) -> psycopg2.extensions.connection:
    return psycopg2.connect(host=bouncer.host, port=bouncer.port, user=user, password=password, dbname=DATABASE,
                            application_name=application_name, connect_timeout=5)


def server_port(conn: psycopg2.extensions.connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('port')::int")
        port = cur.fetchone()[0]
    conn.commit()
    return port


def test_to_a_cluster_with_tls_pgbouncer_verifies_it_and_never_falls_back_to_plain_text(
        pair: tuple[PostgresService, PostgresService], tmp_path: Path) -> None:
    """The ini for the cluster (TLS on) says verify-full against the cluster CA; PgBouncer 1.18 takes it, and
    a server that offers no TLS (these test servers) is refused, not spoken to in plain text."""
    source, _ = pair
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(tls.make_ca("pgha test CA").cert_pem)

    def files(base: Path, port: int) -> dict[str, str]:
        with_tls = replace(settings(base, port, source), server_tls_ca_file=str(ca_file))
        return {"pgbouncer.ini": render("pgbouncer.ini.j2", **pgbouncer.ini_context(with_tls)),
                "userlist.txt": pgbouncer.auth_file({OWNER: verifier(source)}, admin_user="postgres"),
                "pgbouncer_hba.conf": pgbouncer.hba(with_tls)}

    svc = start_pgbouncer(tmp_path, files)
    try:
        text = svc.config_path.read_text()
        assert "server_tls_sslmode = verify-full" in text and f"server_tls_ca_file = {ca_file}" in text
        with pytest.raises(psycopg2.OperationalError):
            through(svc).close()
    finally:
        svc.stop()
    plain = ini(tmp_path, 6432, source)  # to the source: TLS when it offers it, no CA to verify against
    assert "server_tls_sslmode = prefer" in plain and "server_tls_ca_file" not in plain


def test_airflow_logs_in_with_a_hostile_password_and_no_file_holds_it(
        bouncer: PgBouncerService, pair: tuple[PostgresService, PostgresService]) -> None:
    conn = through(bouncer)
    try:
        assert server_port(conn) == pair[0].port
    finally:
        conn.close()
    for path in bouncer.base_dir.iterdir():
        if path.is_file():
            assert AIRFLOW_DB_PASSWORD not in path.read_text(), path
    with pytest.raises(psycopg2.OperationalError):
        through(bouncer, password=AIRFLOW_DB_PASSWORD + "x")


def test_the_admin_console_admits_only_its_os_user_on_the_socket(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService) -> None:
    assert admin.backend(DATABASE) is not None
    through(bouncer).close()  # a pool exists once a client used it
    assert {row["database"] for row in admin.show_pools()} >= {DATABASE}
    for user, password in (("postgres", ""), ("postgres", "x"), (OWNER, AIRFLOW_DB_PASSWORD)):
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host=bouncer.host, port=bouncer.port, user=user, password=password, dbname="pgbouncer",
                             connect_timeout=5)


def test_a_hostile_role_name_and_plain_password_round_trip_through_the_auth_file(
        bouncer: PgBouncerService, admin: PgBouncerAdminHook, pair: tuple[PostgresService, PostgresService]) -> None:
    """The auth_file format itself, with the worst values: a plain-text password there (which pgha never
    writes) and a role name with quotes, each read back by PgBouncer exactly."""
    source = pair[0]
    with pgdata.session(superuser(source)) as conn:
        pgdata.ensure_login_role(conn, ODD_ROLE, HOSTILE)
    s = settings(bouncer.base_dir, bouncer.port, source)
    bouncer.write("userlist.txt", pgbouncer.auth_file({OWNER: verifier(source)}, admin_user="postgres")
                  + pgbouncer.auth_file_line(ODD_ROLE, HOSTILE))
    bouncer.write("pgbouncer_hba.conf", pgbouncer.hba(s) + f"host {DATABASE} {pgbouncer.hba_word(ODD_ROLE)} "
                  "127.0.0.1/32 scram-sha-256\n")
    admin.reload()
    conn = through(bouncer, user=ODD_ROLE, password=HOSTILE)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == ODD_ROLE
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError):
        through(bouncer, user=ODD_ROLE, password=HOSTILE[:-1])


class Writer(threading.Thread):
    """Airflow's stand-in: one committed INSERT every 50 ms through PgBouncer, on one connection."""

    def __init__(self, bouncer: PgBouncerService) -> None:
        super().__init__(daemon=True)
        self.bouncer = bouncer
        self.stop_event = threading.Event()
        self.commits: list[tuple[int, int, float]] = []  # (n, server port, seconds the commit took)
        self.failures: list[str] = []

    def run(self) -> None:
        conn = through(self.bouncer, application_name="airflow-scheduler")
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                started = time.monotonic()
                try:
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO ticks (n) VALUES (%s) RETURNING current_setting('port')::int", (n,))
                        port = cur.fetchone()[0]
                    conn.commit()
                    self.commits.append((n, port, time.monotonic() - started))
                except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                    self.failures.append(f"{n}: {type(exc).__name__}: {exc}")
                    conn.rollback()
                time.sleep(0.05)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def test_pause_switch_reload_resume_loses_no_commit_and_moves_to_the_other_server(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService, pair: tuple[PostgresService, PostgresService]) -> None:
    source, cluster = pair
    writer = Writer(bouncer)
    writer.start()
    try:
        time.sleep(1.0)
        admin.pause(DATABASE, timeout=5)
        assert admin.paused(DATABASE)
        bouncer.write("pgbouncer.ini", ini(bouncer.base_dir, bouncer.port, cluster))
        admin.reload()
        assert admin.backend(DATABASE) == Backend(cluster.host, cluster.port)
        time.sleep(0.3)  # the writer's commits queue in PgBouncer meanwhile
        admin.resume(DATABASE)
        assert not admin.paused(DATABASE)
        time.sleep(1.0)
    finally:
        writer.stop()
    assert writer.failures == []
    ports = [port for _, port, _ in writer.commits]
    switched_at = ports.index(cluster.port)
    assert set(ports[:switched_at]) == {source.port} and set(ports[switched_at:]) == {cluster.port}
    on_source = sql(owner(source), "SELECT count(*) FROM ticks")[0][0]
    on_cluster = sql(owner(cluster), "SELECT count(*) FROM ticks")[0][0]
    assert (on_source, on_cluster) == (switched_at, len(ports) - switched_at)
    assert on_source > 5 and on_cluster > 5
    assert max(took for _, _, took in writer.commits) < 5  # the pause cost a wait, not an error


def test_a_transaction_held_open_times_the_pause_out_which_resumes_names_it_and_changes_nothing(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService, pair: tuple[PostgresService, PostgresService]) -> None:
    source = pair[0]
    holder = through(bouncer, application_name="airflow-long-task")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            holder_pid = cur.fetchone()[0]  # a transaction is now open and holds its server connection
        started = time.monotonic()
        with pytest.raises(PauseTimedOut) as raised:
            admin.pause(DATABASE, timeout=2)
        assert 2 <= time.monotonic() - started < 15
        blockers = raised.value.blockers
        assert [b.pid for b in blockers] == [holder_pid]
        assert blockers[0].application_name == "airflow-long-task" and blockers[0].xact_start
        assert f"pid {holder_pid}" in str(raised.value) and "airflow-long-task" in str(raised.value)
        assert not admin.paused(DATABASE)
        assert admin.backend(DATABASE) == Backend(source.host, source.port)
        other = through(bouncer)  # nobody is left waiting behind the abandoned pause
        try:
            assert server_port(other) == source.port
        finally:
            other.close()
        holder.rollback()
        assert admin.blocking_transactions(DATABASE) == []
    finally:
        holder.close()


def test_a_server_restart_held_back_by_pause_fails_no_commit_and_a_restart_without_it_does(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService, pair: tuple[PostgresService, PostgresService]) -> None:
    """Phase 6 restarts the source for wal_level: under held_back Airflow's commits wait, none fails; the same
    restart without the pause costs the writer failed transactions (what held_back is for)."""
    source = pair[0]
    log = logging.getLogger("test")
    writer = Writer(bouncer)
    writer.start()
    try:
        time.sleep(0.5)
        with held_back({"airflow-1": admin}, DATABASE, 5, log) as took:
            assert admin.paused(DATABASE) and took < 5
            restart_with(source)
        assert not admin.paused(DATABASE)
        time.sleep(1.0)
    finally:
        writer.stop()
    assert writer.failures == [] and len(writer.commits) > 10
    assert max(took for _, _, took in writer.commits) < 10  # a wait, not an error

    unheld = Writer(bouncer)
    unheld.start()
    try:
        time.sleep(0.5)
        restart_with(source)
        time.sleep(1.0)
    finally:
        unheld.stop()
    assert unheld.failures, "a restart PgBouncer does not hold back breaks the writer's transaction"


def test_held_back_never_runs_its_block_while_a_pause_timed_out_and_resumes_what_it_paused(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService) -> None:
    holder = through(bouncer, application_name="airflow-long-task")
    ran = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1")  # a transaction is now open and holds its server connection
        with pytest.raises(PauseTimedOut):
            with held_back({"airflow-1": admin}, DATABASE, 2, logging.getLogger("test")):
                ran.append(True)
        assert ran == [] and not admin.paused(DATABASE)
    finally:
        holder.close()


def test_held_back_resumes_every_pgbouncer_when_its_block_fails(admin: PgBouncerAdminHook) -> None:
    with pytest.raises(RuntimeError, match="the restart failed"):
        with held_back({"airflow-1": admin}, DATABASE, 5, logging.getLogger("test")):
            assert admin.paused(DATABASE)
            raise RuntimeError("the restart failed")
    assert not admin.paused(DATABASE)


class Console:
    """A PgBouncer console whose RESUME may fail (an error path: the host unreachable), recording calls; its
    PAUSE may wait at ``barrier`` (for the other hosts' PAUSE) or time out."""

    def __init__(self, resume_fails: bool = False, barrier: threading.Barrier | None = None,
                 pause_times_out: bool = False) -> None:
        self.resume_fails, self.calls = resume_fails, []
        self.barrier, self.pause_times_out = barrier, pause_times_out

    def arm_resume(self, database: str, after: float, config: str | None = None) -> None:
        self.calls.append("arm")

    def pause(self, database: str, timeout: float) -> float:
        self.calls.append("pause")
        if self.barrier:
            self.barrier.wait()  # BrokenBarrierError unless every host's PAUSE is under way at once
        if self.pause_times_out:
            raise PauseTimedOut(database, timeout, [])
        return 0.0

    def resume(self, database: str) -> None:
        self.calls.append("resume")
        if self.resume_fails:
            raise OSError("ssh: connect to host airflow-2 port 22: No route to host")

    def disarm_resume(self) -> None:
        self.calls.append("disarm")


def test_every_pgbouncer_is_paused_at_once_and_all_resumed_when_one_pause_times_out() -> None:
    """held_back PAUSEs all hosts at once (each waits at a barrier for the others: in turn, none would get
    past it); one PAUSE timing out fails the block before it runs, and every host is RESUMEd."""
    barrier = threading.Barrier(3, timeout=10)
    consoles = {f"airflow-{i}": Console(barrier=barrier) for i in (1, 2, 3)}
    with held_back(consoles, DATABASE, 5, logging.getLogger("test")):
        assert all(c.calls == ["arm", "pause"] for c in consoles.values())
    assert all(c.calls == ["arm", "pause", "resume", "disarm"] for c in consoles.values())

    ran = []
    consoles = {"airflow-1": Console(), "airflow-2": Console(pause_times_out=True)}
    with pytest.raises(PauseTimedOut):
        with held_back(consoles, DATABASE, 5, logging.getLogger("test")):
            ran.append(True)
    assert ran == [] and all(c.calls == ["arm", "pause", "resume", "disarm"] for c in consoles.values())


def test_an_interrupted_pause_waits_for_every_pause_before_it_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped task's on_kill raises into the wait for the PAUSEs: pause_every still lets every PAUSE answer
    before it raises (one landing after the caller's RESUME would leave that PgBouncer paused for good)."""
    import pgha.hooks.pgbouncer as hooks_pgbouncer

    release = threading.Event()

    class SlowConsole(Console):
        def pause(self, database: str, timeout: float) -> float:
            release.wait(10)
            self.calls.append("paused")
            return 0.0

    slow, real_wait, waits = SlowConsole(), hooks_pgbouncer.wait, []

    def interrupted_wait(futures: Any, *args: Any, **kwargs: Any) -> Any:
        waits.append(futures)
        if len(waits) == 1:
            threading.Timer(0.3, release.set).start()
            raise KeyboardInterrupt  # what the SIGTERM handler raises in the main thread
        return real_wait(futures, *args, **kwargs)

    monkeypatch.setattr(hooks_pgbouncer, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        pause_every({"airflow-1": slow}, DATABASE, 5, logging.getLogger("test"))
    assert slow.calls == ["paused"] and len(waits) == 2


def test_a_pgbouncer_whose_resume_failed_keeps_its_armed_resume(caplog: pytest.LogCaptureFixture) -> None:
    """Disarmed after the pause: only the hosts RESUMEd; the one whose RESUME failed keeps its armed RESUME, the
    only thing that may still end its pause without an operator."""
    ok, unreachable = Console(), Console(resume_fails=True)
    with pytest.raises(ResumeFailed, match="airflow-2: ssh: connect"):
        with held_back({"airflow-1": ok, "airflow-2": unreachable}, DATABASE, 5, logging.getLogger("test")):
            pass
    assert ok.calls == ["arm", "pause", "resume", "disarm"]
    assert unreachable.calls == ["arm", "pause", "resume"]
    assert "[airflow-2] its RESUME failed: its armed RESUME stays" in caplog.text


def test_an_undo_leaves_paused_a_pgbouncer_it_could_not_put_back_and_keeps_armed_only_a_failed_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The undo of a failed cutover: airflow-1 (switched) cannot be put back on the source, so it is not
    RESUMEd (on the cluster while the others run on the source, Airflow's writes would split) and its armed
    RESUME is stopped; airflow-2's RESUME fails, so its armed RESUME stays; airflow-3 is back and resumed."""
    inventory = write_inventory(tmp_path, loopback_inventory([("pg-1", "127.0.0.41"), ("pg-2", "127.0.0.42"),
                                                              ("pg-3", "127.0.0.43")]))
    operator = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory)
    source = Backend(host="10.0.0.5", port=5432)
    pointed = []

    def point(host: str, backend: Backend, staged: str | None = None) -> None:
        if host == "airflow-1":
            raise OSError("RELOAD: ssh: connect to host airflow-1 port 22: Connection timed out")
        pointed.append((host, backend))

    monkeypatch.setattr(operator, "_point", point)
    consoles = {"airflow-1": Console(), "airflow-2": Console(resume_fails=True), "airflow-3": Console()}
    hosts = list(consoles)
    not_resumed = operator._undo(consoles, ["airflow-1", "airflow-3"], hosts, dict.fromkeys(hosts, source))
    assert not_resumed == {"airflow-2"} and pointed == [("airflow-3", source)]
    assert consoles["airflow-1"].calls == [] and consoles["airflow-3"].calls == ["resume"]
    logged = capsys.readouterr().out
    assert "could NOT put [airflow-1] back on 10.0.0.5:5432: it stays PAUSED" in logged
    disarm_every(consoles, logging.getLogger("test"), keep=not_resumed)
    assert [c.calls[-1] for c in consoles.values()] == ["disarm", "resume", "disarm"]


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_an_armed_resume_ends_a_pause_its_task_died_in_unless_disarmed_or_switched(
        admin: PgBouncerAdminHook, bouncer: PgBouncerService) -> None:
    """The host RESUMEs on its own when nothing ended the pause in time (the task died without on_kill); not
    once disarmed, and not a PgBouncer whose pgbouncer.ini changed meanwhile (switched: it stays paused)."""
    config = str(bouncer.config_path)
    other = PgBouncerAdminHook(admin.remote, os_user="postgres", socket_dir=str(bouncer.socket_dir),
                               port=bouncer.port + 1, psql="/usr/bin/psql")  # another PgBouncer on the host
    after = 4  # seconds: the steps before the timer's end are SSH round trips, slow on a loaded machine
    admin.arm_resume(DATABASE, after, config)
    admin.pause(DATABASE, 5)
    other.disarm_resume()  # disarms its own only
    assert admin.paused(DATABASE)
    assert wait_until(lambda: not admin.paused(DATABASE), after + 10), "the armed RESUME ended the pause"
    admin.arm_resume(DATABASE, after, config)
    admin.pause(DATABASE, 5)
    admin.disarm_resume()
    time.sleep(after + 1.5)
    assert admin.paused(DATABASE), "disarmed: no RESUME"
    admin.resume(DATABASE)
    original = bouncer.config_path.read_text()
    try:
        admin.arm_resume(DATABASE, after, config)
        admin.arm_resume(DATABASE, after, config)  # again (another try): the first is disarmed, one RESUME left
        bouncer.config_path.write_text(original + "; switched\n")  # since the arming: the timer sees it
        admin.pause(DATABASE, 5)
        time.sleep(after + 1.5)
        assert admin.paused(DATABASE), "switched meanwhile: stays paused"
    finally:
        bouncer.config_path.write_text(original)
        admin.resume(DATABASE)
        admin.disarm_resume()


# ----------------------------------------------------------------------------- PausedSwitchOperator


@pytest.fixture
def logical_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresService, PostgresService]]:
    """A source (wal_level logical, publication) and a cluster subscribed to it, the app role's verifier
    NOT yet the source's on the cluster (the operator sees to it)."""
    workdir = tmp_path_factory.mktemp("pgbouncer-logical")
    source = start_postgres(workdir, POSTGRES_PASSWORD)
    cluster = None
    try:
        cluster = start_postgres(workdir, POSTGRES_PASSWORD)
        fill_source(source)
        restart_with(source, wal_level="logical")
        ensure_owner(cluster)
        with pgdata.session(superuser(cluster)) as conn:
            pgdata.recreate_database(conn, DATABASE, OWNER)
        for svc in (source, cluster):
            sql(owner(svc), *SCHEMA)
        with pgdata.session(superuser(source, DATABASE)) as conn:
            pgdata.ensure_publication(conn)
        with pgdata.session(superuser(cluster, DATABASE)) as conn:
            pgdata.create_subscription(conn, superuser(source, DATABASE))
        yield source, cluster
    finally:
        if cluster is not None:
            cluster.stop()
        source.stop()


SCHEMA = [
    "CREATE TABLE IF NOT EXISTS dag_run (id serial PRIMARY KEY, dag_id text NOT NULL, run_id text NOT NULL, "
    "start_date timestamptz DEFAULT now(), conf jsonb, duration double precision)",
    "CREATE TABLE IF NOT EXISTS log (id bigserial PRIMARY KEY, event text, dttm timestamptz DEFAULT now())",
    "CREATE TABLE ticks (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
]


def psql_as_superuser(svc: PostgresService, file: str, database: str, check: bool, **parts: Any) -> CommandResult:
    """What ``peer_psql`` returns for include/sql/<file>, from a superuser session: rows as ``a|b`` lines."""
    try:
        with pgdata.session(superuser(svc, database)) as conn:
            found = pgdata.rows(conn, pgdata.statement(file, **parts))
    except psycopg2.Error as exc:
        if check:
            raise
        return CommandResult(host="lb", command=file, exit_code=1, stdout="", stderr=str(exc), duration=0.0)
    out = "".join("|".join(map(str, row)) + "\n" for row in found)
    return CommandResult(host="lb", command=file, exit_code=0, stdout=out, stderr="", duration=0.0)


@pytest.fixture
def cutover_env(tmp_path: Path, sshd: SshdService, monkeypatch: pytest.MonkeyPatch,
                logical_pair: tuple[PostgresService, PostgresService]) -> Iterator[tuple[PgBouncerService, str]]:
    """PgBouncer in front of the logical pair's source, at the paths the operators are told, and an inventory
    whose Airflow, source and HAProxy host is this machine (HAProxy's write port: the cluster itself)."""
    source, cluster = logical_pair

    def files(base: Path, port: int) -> dict[str, str]:
        return {"pgbouncer.ini": ini(base, port, source),
                "userlist.txt": pgbouncer.auth_file({OWNER: verifier(source)}, admin_user="postgres"),
                "pgbouncer_hba.conf": pgbouncer.hba(settings(base, port, source))}

    bouncer = start_pgbouncer(tmp_path, files)
    paths = PgBouncerOs(packages=("pgbouncer",), service="pgbouncer.service",
                        config=str(bouncer.config_path), auth_file=str(bouncer.path("userlist.txt")),
                        hba_file=str(bouncer.path("pgbouncer_hba.conf")), socket_dir=str(bouncer.socket_dir),
                        user="postgres", psql="/usr/bin/psql")
    monkeypatch.setattr(_PgBouncerTask, "os_family", lambda self, host: replace(DEBIAN, pgbouncer=paths),
                        raising=False)
    # the one seam: the test source's socket is not where psql on "the source host" looks for it, so the
    # same SQL goes to it as its superuser from here
    monkeypatch.setattr(_PgBouncerTask, "source_psql", lambda self, file, database, /, check=True, **parts:
                        psql_as_superuser(source, file, database, check, **parts))
    config = tmp_path / "airflow.cfg"  # Airflow here already goes through PgBouncer
    config.write_text(f"[database]\nsql_alchemy_conn = postgresql://airflow_user:x@127.0.0.1:{bouncer.port}/airflow_db\n")
    inventory = write_inventory(tmp_path, loopback_inventory(
        [("pg-1", "127.0.0.41"), ("pg-2", "127.0.0.42"), ("pg-3", "127.0.0.43")],
        haproxy={"host": "lb", "write_port": cluster.port}, source={"host": "lb", "major": 15},
        airflow={"hosts": [{"host": "lb", "config": str(config), "units": ["airflow-scheduler"]}]},
        pgbouncer={"port": bouncer.port, "pause_timeout": 5}))
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host=source.host, port=source.port,
                   login=OWNER, password=AIRFLOW_DB_PASSWORD, schema=DATABASE)
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login=OWNER, password=AIRFLOW_DB_PASSWORD)
    try:
        yield bouncer, inventory
    finally:
        bouncer.stop()


def test_paused_switch_operator_cuts_over_without_a_failed_commit(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cutover core end to end: a writer commits every 50 ms through PgBouncer while the operator
    pauses it, waits for the subscription, copies the sequences, compares the tables, points PgBouncer
    at the cluster (HAProxy's write port, here the cluster itself) and resumes it. No connection is looked
    up while paused: in a worker that is a round trip to the task's supervisor, whose heartbeat waits in the
    paused PgBouncer (on the lab: a 106 s stall, then the supervisor killed the task)."""
    source, cluster = logical_pair
    bouncer, inventory = cutover_env
    paused, looked_up_inside = [False], []
    lookup, pause, resume = BaseHook.get_connection.__func__, PgBouncerAdminHook.pause, PgBouncerAdminHook.resume

    def recorded_lookup(cls: Any, conn_id: str, *args: Any, **kwargs: Any) -> Any:
        if paused[0]:
            looked_up_inside.append(conn_id)
        return lookup(cls, conn_id, *args, **kwargs)

    def recorded_pause(self: PgBouncerAdminHook, *args: Any, **kwargs: Any) -> float:
        took = pause(self, *args, **kwargs)
        paused[0] = True
        return took

    def recorded_resume(self: PgBouncerAdminHook, *args: Any, **kwargs: Any) -> None:
        paused[0] = False
        resume(self, *args, **kwargs)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(recorded_lookup))
    monkeypatch.setattr(PgBouncerAdminHook, "pause", recorded_pause)
    monkeypatch.setattr(PgBouncerAdminHook, "resume", recorded_resume)
    verifier_before = verifier(source)
    assert verifier(cluster) != verifier_before
    writer = Writer(bouncer)
    writer.start()
    try:
        time.sleep(1.0)
        # port and pause timeout from the inventory's pgbouncer section, as the migration DAG runs it
        summary = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory,
                                       pause_retry_delay=1).execute({})
        logged = capsys.readouterr().out
        time.sleep(1.0)
    finally:
        writer.stop()
    again = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory).execute({})
    assert writer.failures == []
    assert looked_up_inside == [], "a connection looked up while Airflow was paused"
    # verified outside the pause: inside it only the table the writer changed is read again
    # ticks (the writer's table) may already differ there: the cluster applies on while the source's snapshot is read
    assert re.search(r"before the pause: [23] of 3 tables identical on the cluster", logged)
    # ticks changed in named rows only: those rows are compared (the whole table when it differed before)
    assert "changed since the check before the pause: no table; in named rows only (those rows compared): " in logged
    assert re.search(r"3 tables identical \(1 compared in the pause, [01] of them by the rows changed since; 2 identical "
                     r"before it and unchanged since\); in the pause: subscription caught up [0-9.]+s, sequences [0-9.]+s, "
                     r"change slot read [0-9.]+s, compared [0-9.]+s", logged)
    assert summary["result"]["mode"] == "cutover" and summary["result"]["paused_s"] < 30
    assert any("SCRAM verifier" in change for change in summary["changes"])
    assert verifier(cluster) == verifier(source) == verifier_before
    ports = [port for _, port, _ in writer.commits]
    switched_at = ports.index(cluster.port)
    assert set(ports[:switched_at]) == {source.port} and set(ports[switched_at:]) == {cluster.port}
    assert sql(owner(cluster), "SELECT count(*), max(n) FROM ticks")[0] == (len(ports), len(ports))
    assert sql(owner(source), "SELECT count(*) FROM ticks")[0][0] == switched_at
    assert sql(owner(cluster), "SELECT last_value FROM dag_run_id_seq")[0][0] == 500  # sequences copied
    # after the switch: no subscription (its slot on the source went with it), the database marked live
    assert sql(superuser(cluster, DATABASE), "SELECT count(*) FROM pg_subscription")[0][0] == 0
    assert sql(superuser(source), "SELECT count(*) FROM pg_replication_slots")[0][0] == 0
    with pgdata.session(superuser(cluster)) as conn:
        assert pgdata.is_live(conn, DATABASE)
    assert summary["result"]["outcome"] == "success" and again["result"]["outcome"] == "success"
    assert again["changed"] is False  # re-run after success: nothing to do


def test_a_table_that_differed_only_in_rows_changed_since_the_slot_is_identical_but_for_them(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """At the check before the pause a big table the cluster applied a new row to while it was read differs;
    read again on both sides at once without the rows the change slot names, it is identical (inside the pause
    only the named rows are compared). A difference in a row the slot does not name, or a table the slot cannot
    key, keeps it differing (compared in full inside the pause)."""
    source, cluster = logical_pair
    _, inventory = cutover_env
    for svc, third in ((source, "c"), (cluster, "applied later")):
        sql(owner(svc), "CREATE TABLE recheck (id int PRIMARY KEY, v text)",
            f"INSERT INTO recheck VALUES (1, 'a'), (2, 'b'), (3, '{third}')")
    named = {"public.recheck": pgdata.RowKeys("id", "int4", frozenset({"3"}))}
    slot = [pgdata.TableChanges(frozenset(), frozenset(), (), named)]
    operator = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory)
    monkeypatch.setattr(operator, "_slot_changes", lambda made_at: slot[0])
    differing = frozenset({"public.recheck", "public.log"})
    assert operator._identical_but_changed_rows(differing, "0/1") == {"public.recheck"}
    assert "try 1, " in capsys.readouterr().out
    sql(owner(cluster), "UPDATE recheck SET v = 'x' WHERE id = 1")  # a row no change named
    assert operator._identical_but_changed_rows(differing, "0/1") == frozenset()
    logged = capsys.readouterr().out
    assert f"try {PausedSwitchOperator.RECHECK_TRIES}, " in logged and "still differing public.recheck" in logged
    sql(owner(cluster), "UPDATE recheck SET v = 'a' WHERE id = 1")
    for cannot_say in (pgdata.TableChanges(frozenset({"public.recheck"}), frozenset(), ()),
                       pgdata.TableChanges(frozenset(), frozenset(), ("?",), named), None):
        slot[0] = cannot_say
        assert operator._identical_but_changed_rows(differing, "0/1") == frozenset()


def test_the_change_slot_names_every_table_a_commit_touched_however_it_is_named(
        logical_pair: tuple[PostgresService, PostgresService]) -> None:
    """verify_slot_changes.sql on a real source: what test_decoding says changed since the slot was made,
    table names any character long, a TRUNCATE of two tables, a partition's parent, nothing consumed."""
    source, _ = logical_pair
    hostile = 'we,ird: INSERT: "x"'
    admin = superuser(source, DATABASE)
    sql(admin, f'CREATE TABLE "{hostile.replace(chr(34), chr(34) * 2)}" (id int PRIMARY KEY, v text)',
        'CREATE SCHEMA "Odd Schema"', 'CREATE TABLE "Odd Schema".t (id int PRIMARY KEY)',
        'CREATE TABLE plain (id int PRIMARY KEY)', 'CREATE TABLE untouched (id int PRIMARY KEY)',
        'CREATE TABLE "select" (id int PRIMARY KEY)',
        'CREATE UNLOGGED TABLE unlogged (id int)',
        'CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)',
        'CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000)',
        f'INSERT INTO "{hostile.replace(chr(34), chr(34) * 2)}" VALUES (1, \'a\')',
        'INSERT INTO "Odd Schema".t VALUES (1)', 'INSERT INTO untouched VALUES (1)')
    slot = pgdata.lit(pgdata.VERIFY_SLOT)
    with pgdata.session(admin) as conn:
        made_at = pgdata.lit(pgdata.rows(conn, pgdata.statement("verify_slot_create.sql", slot=slot))[0][0])
    try:
        sql(admin, f'UPDATE "{hostile.replace(chr(34), chr(34) * 2)}" SET v = \'table public.untouched: INSERT:\'',
            'INSERT INTO plain VALUES (1)', 'TRUNCATE "Odd Schema".t, plain', 'INSERT INTO parted VALUES (5)',
            'INSERT INTO "select" VALUES (7)')
        wal_flushed(admin)  # decoding reads only flushed WAL (the test server commits asynchronously)
        with pgdata.session(admin) as conn:
            peek = pgdata.statement("verify_slot_changes.sql", slot=slot, made_at=made_at)
            lines = ["|".join(row) for row in pgdata.rows(conn, peek)]
            again = ["|".join(row) for row in pgdata.rows(conn, peek)]
    finally:
        with pgdata.session(admin) as conn:
            pgdata.rows(conn, pgdata.statement("verify_slot_drop.sql", slot=slot))
    changes = pgdata.table_changes(lines)
    quoted = 'public."we,ird: INSERT: ""x"""'  # the key of every comparison; a keyword is not quoted in it
    # a TRUNCATE list: the whole table; changes that name their rows by an int key: those rows
    assert changes.changed == {'"Odd Schema".t', "public.plain"}
    assert changes.rows == {quoted: pgdata.RowKeys("id", "int4", frozenset({"1"})),
                            "public.parted_1": pgdata.RowKeys("id", "int4", frozenset({"5"})),
                            "public.select": pgdata.RowKeys("id", "int4", frozenset({"7"}))}
    assert changes.always == {"public.parted", "public.unlogged"} and changes.unknown == ()
    everything = frozenset({quoted, '"Odd Schema".t', "public.plain", "public.parted_1", "public.parted",
                            "public.untouched", "public.unlogged", "public.dag_run", "public.log"})
    assert changes.may_skip(everything) == {"public.untouched", "public.dag_run", "public.log"}
    assert set(changes.by_rows(everything | {"public.select"})) == {quoted, "public.parted_1", "public.select"}
    assert sorted(again) == sorted(lines)  # peeked, not consumed
    assert sql(admin, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgha_verify'")[0][0] == 0


def test_the_change_slot_names_the_rows_a_change_touched_where_the_key_leaves_no_doubt(
        logical_pair: tuple[PostgresService, PostgresService]) -> None:
    """Row keys from test_decoding's lines: an INSERT, an UPDATE that keeps and one that moves its key (old
    and new), a DELETE, bigint and uuid keys; a text value posing as a change line is not read as one. A key
    that is not the first column, two key columns, REPLICA IDENTITY FULL (an UPDATE's old tuple is every
    column), another index as the replica identity (a moved key logs no old key) and a TRUNCATE: the whole table. The rows' fingerprint reads those rows only."""
    source, _ = logical_pair
    admin = superuser(source, DATABASE)
    sql(admin, "CREATE TABLE by_int (id bigint PRIMARY KEY, v text)", "CREATE TABLE by_uuid (id uuid PRIMARY KEY)",
        "CREATE TABLE key_second (v text, id int PRIMARY KEY)", "CREATE TABLE two_keys (a int, b int, PRIMARY KEY (a, b))",
        "CREATE TABLE full_identity (id int PRIMARY KEY, v text)", "ALTER TABLE full_identity REPLICA IDENTITY FULL",
        "CREATE TABLE emptied (id int PRIMARY KEY)",
        "CREATE TABLE other_identity (id int PRIMARY KEY, code int NOT NULL UNIQUE)",
        "ALTER TABLE other_identity REPLICA IDENTITY USING INDEX other_identity_code_key",
        "INSERT INTO other_identity VALUES (2, 2)",
        "INSERT INTO by_int VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')",
        "INSERT INTO full_identity VALUES (1, 'a')", "INSERT INTO emptied VALUES (1)")
    uuid = "0b0e2f9c-5a55-4c3e-9a47-1f2a3b4c5d6e"
    lines = slot_lines_after(
        admin, "INSERT INTO by_int VALUES (-5, E' id[bigint]:77 new-tuple: id[bigint]:78\\ntable public.by_int: "
               "INSERT: id[bigint]:79')",
        "UPDATE by_int SET v = 'x' WHERE id = 1", "UPDATE by_int SET id = 20 WHERE id = 2",
        "DELETE FROM by_int WHERE id = 3", f"INSERT INTO by_uuid VALUES ('{uuid}')",
        "INSERT INTO key_second VALUES ('a', 1)", "INSERT INTO two_keys VALUES (1, 2)",
        "UPDATE full_identity SET v = 'b'", "TRUNCATE emptied",
        "UPDATE other_identity SET id = 20 WHERE id = 2")  # logged as the new key only: row 2 would go unnamed
    changes = pgdata.table_changes(lines)
    assert changes.unknown == ()
    assert changes.rows == {"public.by_int": pgdata.RowKeys("id", "int8", frozenset({"-5", "1", "2", "20", "3"})),
                            "public.by_uuid": pgdata.RowKeys("id", "uuid", frozenset({uuid}))}
    assert changes.changed == {"public.key_second", "public.two_keys", "public.full_identity", "public.emptied",
                               "public.other_identity"}
    everything = frozenset({"public.by_int", "public.by_uuid", "public.key_second", "public.dag_run"})
    assert changes.may_skip(everything) == {"public.dag_run"}
    assert set(changes.by_rows(everything)) == {"public.by_int", "public.by_uuid"}

    def by_rows() -> tuple[int, str]:
        with pgdata.session(admin) as conn:
            return pgdata.fingerprints(conn, by_rows=changes.rows)["public.by_int"]

    before = by_rows()
    assert before[0] == 3  # -5, 1 and 20 are there; 2 and 3 are gone
    sql(admin, "UPDATE by_int SET v = 'y' WHERE id = 4")  # no change named it: not read
    assert by_rows() == before
    sql(admin, "UPDATE by_int SET v = 'y' WHERE id = 20")
    assert by_rows() != before
    with pytest.raises(ValueError, match="not a key type"):
        pgdata.rows_fingerprint(pgdata.sql.Identifier("public", "by_int"), pgdata.RowKeys("id", "text); --", frozenset()))


def test_a_truncate_that_names_a_table_no_longer_there_is_a_change_the_slot_cannot_place(
        logical_pair: tuple[PostgresService, PostgresService]) -> None:
    """TRUNCATE over a known and a since-dropped table: the known one changed, and the list as a whole is
    unknown (every table is then compared), not counted as placed because one of its names matched."""
    source, _ = logical_pair
    admin = superuser(source, DATABASE)
    sql(admin, "CREATE TABLE kept (id int)", "CREATE TABLE gone (id int)")
    lines = slot_lines_after(admin, "TRUNCATE kept, gone", "DROP TABLE gone")
    changes = pgdata.table_changes(lines)
    assert "public.kept" in changes.changed
    assert changes.unknown == ("public.kept, public.gone",)
    assert changes.may_skip(frozenset({"public.kept", "public.dag_run"})) == frozenset()


def test_a_slot_made_again_since_vouches_for_nothing(logical_pair: tuple[PostgresService, PostgresService]) -> None:
    """Another try dropped the slot and made its own after a change this try must see: the peek with this
    try's position says so, and nothing is skipped."""
    source, _ = logical_pair
    admin = superuser(source, DATABASE)
    sql(admin, "CREATE TABLE quiet (id int)")
    slot = pgdata.lit(pgdata.VERIFY_SLOT)
    with pgdata.session(admin) as conn:
        ours = pgdata.rows(conn, pgdata.statement("verify_slot_create.sql", slot=slot))[0][0]
    try:
        with pgdata.session(admin) as conn:
            pgdata.rows(conn, pgdata.statement("verify_slot_drop.sql", slot=slot))
        sql(admin, "INSERT INTO quiet VALUES (1)")  # between the two slots: neither one decodes it
        wal_flushed(admin)
        with pgdata.session(admin) as conn:
            theirs = pgdata.rows(conn, pgdata.statement("verify_slot_create.sql", slot=slot))[0][0]
            lines = ["|".join(row) for row in pgdata.rows(conn, pgdata.statement(
                "verify_slot_changes.sql", slot=slot, made_at=pgdata.lit(ours)))]
    finally:
        with pgdata.session(admin) as conn:
            pgdata.rows(conn, pgdata.statement("verify_slot_drop.sql", slot=slot))
    changes = pgdata.table_changes(lines)
    assert theirs != ours and changes.unknown == (f"slot made again at {theirs}",)
    assert changes.may_skip(frozenset({"public.quiet"})) == frozenset()


def test_without_a_change_slot_the_cutover_compares_every_table_inside_the_pause(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A source without test_decoding (RHEL without its -contrib package): the cutover still verifies all."""
    source, cluster = logical_pair
    bouncer, inventory = cutover_env

    def no_decoding(self: Any, file: str, database: str, /, check: bool = True, **parts: Any) -> CommandResult:
        if file == "verify_slot_create.sql":
            return CommandResult(host="lb", command=file, exit_code=3, stdout="", duration=0.0,
                                 stderr='ERROR:  could not access file "test_decoding": No such file or directory')
        return psql_as_superuser(source, file, database, check, **parts)

    monkeypatch.setattr(_PgBouncerTask, "source_psql", no_decoding)
    summary = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, listen_port=bouncer.port,
                                   pause_timeout=5, pause_retry_delay=1).execute({})
    logged = capsys.readouterr().out
    assert summary["result"]["outcome"] == "success"
    assert 'no change slot on the source (ERROR:  could not access file "test_decoding"' in logged
    assert "3 tables identical (3 compared in the pause, 0 of them by the rows changed since; 0 identical before it " \
           "and unchanged since)" in logged
    assert sql(superuser(source), "SELECT count(*) FROM pg_replication_slots")[0][0] == 0


def test_a_client_writing_to_the_source_past_pgbouncer_inside_the_pause_stops_the_cutover(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A client that goes to the source directly would go on writing there after the cutover: one that commits
    while every PgBouncer is paused (here: after the change slot was read, into a table it vouched for) stops
    the cutover, named; PgBouncer is back on the source and running, and a retry once it stopped succeeds."""
    source, cluster = logical_pair
    bouncer, inventory = cutover_env
    compare = pgdata.both_sides

    def bypass_then_compare(*args: Any, **kwargs: Any) -> Any:
        sql(owner(source), "INSERT INTO log (event) VALUES ('written past PgBouncer')")
        wal_flushed(superuser(source, DATABASE))
        return compare(*args, **kwargs)

    monkeypatch.setattr(pgdata, "both_sides", bypass_then_compare)
    with pytest.raises(AirflowException, match=r"while every PgBouncer was paused, transactions committed on the "
                                               r"source's airflow_db \(after [0-9A-F]+/[0-9A-F]+\) wrote to public\.log: "
                                               r"a client writes to the source without going through PgBouncer"):
        PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, pause_retry_delay=1).execute({})
    assert "RESUME" in capsys.readouterr().out
    other = through(bouncer)
    try:
        assert server_port(other) == source.port  # resumed, on the source
    finally:
        other.close()
    assert sql(superuser(source), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgha_verify'")[0][0] == 0
    monkeypatch.setattr(pgdata, "both_sides", compare)
    summary = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, pause_retry_delay=1).execute({})
    assert summary["result"]["outcome"] == "success"
    assert "no write since the pause checked" in capsys.readouterr().out
    assert sql(owner(cluster), "SELECT count(*) FROM log WHERE event = 'written past PgBouncer'")[0][0] == 1


def test_a_task_stopped_inside_the_pause_undoes_it_and_switches_nothing(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM inside the pause (the task marked failed, its heartbeat lost): Airflow's handler calls on_kill and
    then lets the task's code go on. on_kill raises into that code, whose undo puts PgBouncer back on the source
    and RESUMEs it; the work that would have finished and switched never does."""
    source, _ = logical_pair
    bouncer, inventory = cutover_env
    inside = threading.Event()
    finished: list[str] = []

    def slow_work(self: Any, before: Any) -> None:
        inside.set()
        for _ in range(300):
            time.sleep(0.1)
        finished.append("the work went on to the switch")

    monkeypatch.setattr(PausedSwitchOperator, "_catch_up", slow_work)
    operator = PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, pause_retry_delay=1)
    signal.signal(signal.SIGTERM, lambda signum, frame: operator.on_kill())  # as Airflow's task runner does
    stopper = threading.Thread(target=lambda: inside.wait(60) and os.kill(os.getpid(), signal.SIGTERM))
    stopper.start()
    try:
        with pytest.raises(AirflowException, match="stopped inside the pause: undoing it"):
            operator.execute({})
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stopper.join(60)
    assert finished == []
    console = operator.console("lb")
    assert not console.paused(DATABASE)
    probe = through(bouncer)
    try:
        assert server_port(probe) == source.port  # answers, on the source
    finally:
        probe.close()


def slot_lines_after(admin: pgdata.Endpoint, *statements: str) -> list[str]:
    """verify_slot_changes.sql's rows ("kind|payload") for a change slot made before ``statements`` ran."""
    slot = pgdata.lit(pgdata.VERIFY_SLOT)
    with pgdata.session(admin) as conn:
        made_at = pgdata.lit(pgdata.rows(conn, pgdata.statement("verify_slot_create.sql", slot=slot))[0][0])
    try:
        sql(admin, *statements)
        wal_flushed(admin)  # decoding reads only flushed WAL (the test server commits asynchronously)
        with pgdata.session(admin) as conn:
            return ["|".join(row) for row in pgdata.rows(conn, pgdata.statement("verify_slot_changes.sql", slot=slot,
                                                                                made_at=made_at))]
    finally:
        with pgdata.session(admin) as conn:
            pgdata.rows(conn, pgdata.statement("verify_slot_drop.sql", slot=slot))


def wal_flushed(endpoint: pgdata.Endpoint, timeout: float = 10) -> None:
    written = sql(endpoint, "SELECT pg_current_wal_insert_lsn()")[0][0]
    deadline = time.monotonic() + timeout
    while not sql(endpoint, "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", params=(written,))[0][0]:
        assert time.monotonic() < deadline, "WAL not flushed"
        time.sleep(0.05)


def test_a_table_whose_columns_differ_between_the_sides_is_reshaped(
        logical_pair: tuple[PostgresService, PostgresService]) -> None:
    """A schema change is not in what the change slot decodes: the shapes catch it (a dropped column that
    only leaves a hole in the column numbers does not count)."""
    source, cluster = logical_pair
    assert pgdata.reshaped_tables(owner(source), owner(cluster)) == frozenset()
    sql(owner(cluster), "ALTER TABLE log ADD COLUMN gone int", "ALTER TABLE log DROP COLUMN gone")
    assert pgdata.reshaped_tables(owner(source), owner(cluster)) == frozenset()
    sql(owner(source), "ALTER TABLE dag_run ADD COLUMN note text", "CREATE TABLE only_here (id int)")
    assert pgdata.reshaped_tables(owner(source), owner(cluster)) == {"public.dag_run", "public.only_here"}


def test_a_change_the_slot_cannot_place_leaves_nothing_to_skip() -> None:
    changes = pgdata.table_changes(["changed|" + b"public.a".hex(), "unknown|" + b"public.gone".hex()])
    assert changes.unknown == ("public.gone",)
    assert changes.may_skip(frozenset({"public.a", "public.b"})) == frozenset()
    assert pgdata.table_changes(["surprise|00"]).may_skip(frozenset({"public.b"})) == frozenset()
    assert pgdata.table_changes([]).may_skip(frozenset({"public.b"})) == {"public.b"}


def test_paused_switch_operator_refuses_while_airflow_goes_to_the_server_directly(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        tmp_path: Path) -> None:
    source, cluster = logical_pair
    bouncer, inventory = cutover_env
    (tmp_path / "airflow.cfg").write_text(
        f"[database]\nsql_alchemy_conn = postgresql://airflow_user:x@127.0.0.1:{source.port}/airflow_db\n")
    with pytest.raises(AirflowException, match=rf"does not go through its local PgBouncer on lb .*:{source.port}\).*"
                                               "nothing was changed"):
        PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, listen_port=bouncer.port).execute({})
    other = through(bouncer)
    try:
        assert server_port(other) == source.port
    finally:
        other.close()
    assert verifier(cluster) != verifier(source)  # not even the verifier was touched


def test_paused_switch_operator_that_cannot_pause_fails_with_every_pgbouncer_running_on_the_source(
        cutover_env: tuple[PgBouncerService, str], logical_pair: tuple[PostgresService, PostgresService],
        capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = logical_pair
    bouncer, inventory = cutover_env
    holder = through(bouncer, application_name="airflow-long-task")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            holder_pid = cur.fetchone()[0]
        with pytest.raises(AirflowException, match=r"in 2 attempts: every PgBouncer sends where it did and runs"):
            PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, listen_port=bouncer.port,
                                 pause_timeout=1, max_transaction_age=60, attempts=2, pause_retry_delay=0.2).execute({})
        logged = capsys.readouterr().out
        assert logged.count(f"held by: pid {holder_pid} (airflow_user, application_name 'airflow-long-task'") == 2
        other = through(bouncer)
        try:
            assert server_port(other) == source.port  # not paused, still on the source
        finally:
            other.close()
        with pytest.raises(AirflowException, match=r"in 1 attempts"):  # an old transaction: not even paused
            PausedSwitchOperator(task_id="paused_switch", inventory_path=inventory, listen_port=bouncer.port,
                                 pause_timeout=1, max_transaction_age=0.5, attempts=1).execute({})
        assert "postponed: 1 transaction(s) older than 0.5s" in capsys.readouterr().out
    finally:
        holder.close()


# ----------------------------------------------------------------------------- install and move (recorded hosts)
# The Airflow host is a FakeHost (tests/recording_host.py); its PgBouncer is simulated below: the admin
# console answers from what the host's pgbouncer.ini says after the last RELOAD, and Airflow's units
# connect through it when (re)started. The source's pg_authid is the real loopback source.

PGB_INI = "/etc/pgbouncer/pgbouncer.ini"
AIRFLOW_CFG = "/tmp/airflow.cfg"


@rule(r"cd / && runuser -u postgres -- timeout --kill-after=2 \S+ /usr/bin/psql -X -q --csv -v ON_ERROR_STOP=1 "
      r"-h /var/run/postgresql -p 6432 -U postgres -d pgbouncer (.+)", mutating=None)
def _pgbouncer_console(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    state = h.__dict__.setdefault("pgbouncer", {"backend": None, "clients": 0})
    unit = h.unit("pgbouncer.service")
    if unit is None or not unit.active:
        return 2, "", 'psql: error: connection to server on socket "/var/run/postgresql/.s.PGSQL.6432" failed\n'
    out = ""
    for statement in shlex.split(m[1])[1::2]:
        if statement == "RELOAD":
            found = re.search(r"^airflow_db = host='([^']*)' port='(\d+)'", h.files[PGB_INI].content, re.M)
            state["backend"] = (found[1], int(found[2])) if found else None
        elif statement == "SHOW DATABASES":
            out = "name,host,port,paused\n" + (f"airflow_db,{state['backend'][0]},{state['backend'][1]},0\n"
                                                 if state["backend"] else "")
        elif statement == "SHOW CLIENTS":
            out = "type,user,database\n" + "C,airflow_user,airflow_db\n" * state["clients"]
    return 0, out, ""


@rule(r"PGPASSFILE=(\S+) PGCONNECT_TIMEOUT=10 timeout 30 /usr/bin/psql -X -At -h 127.0.0.1 -p 6432 .+", mutating=False)
def _login_through_pgbouncer(h: FakeHost, m: re.Match[str], stdin: str | None) -> tuple[int, str, str]:
    backend = h.__dict__.get("pgbouncer", {}).get("backend")
    if m[1] not in h.files or not backend:
        return 2, "", "psql: error: FATAL:  no such database: airflow_db\n"
    return 0, f"{backend[0]}:{backend[1]}\n", ""


@pytest.fixture
def airflow_host(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 pair: tuple[PostgresService, PostgresService]) -> tuple[FakeHost, str]:
    """vm1: the Airflow host, the source host and the HAProxy host of a fleet inventory (Debian 12)."""
    source = pair[0]
    monkeypatch.setitem(CATALOGUE[DEBIAN_12], "pgbouncer", Package(
        binaries={"/usr/sbin/pgbouncer": "PgBouncer 1.18.0"}, units={"pgbouncer.service": (True, True)},
        files={PGB_INI: "[databases]\n[pgbouncer]\n"}, users=("postgres",)))
    monkeypatch.setitem(CATALOGUE[DEBIAN_12], "postgresql-client", Package(binaries={"/usr/bin/psql": "psql 15"}))
    monkeypatch.setitem(CATALOGUE[DEBIAN_12], "procps", Package(binaries={"/usr/bin/pkill": "pkill from procps-ng 4.0.2"}))
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, lb_address="127.0.0.1")
    vm1 = fleet["vm1"]
    vm1.users.update({"postgres", "airflow"})
    vm1.postgres = superuser(source)
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host=source.host, port=source.port,
                   login=OWNER, password=AIRFLOW_DB_PASSWORD, schema=DATABASE)
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login=OWNER, password=AIRFLOW_DB_PASSWORD)
    return vm1, inventory


def test_install_writes_no_password_starts_proves_a_login_and_keeps_a_switched_backend(
        airflow_host: tuple[FakeHost, str], pair: tuple[PostgresService, PostgresService]) -> None:
    vm1, inventory = airflow_host
    source = pair[0]
    first = InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    assert first["result"] == {"backend": f"127.0.0.1:{source.port}", "listen": "127.0.0.1:6432",
                               "reached": f"127.0.0.1:{source.port}"}
    auth = vm1.files["/etc/pgbouncer/userlist.txt"]
    assert (auth.owner, auth.mode) == ("postgres", "640")
    assert f'"{OWNER}" "{verifier(source)}"' in auth.content
    for path in ("/etc/pgbouncer/userlist.txt", "/etc/pgbouncer/pgbouncer_hba.conf", PGB_INI):
        assert AIRFLOW_DB_PASSWORD not in vm1.files[path].content
    assert "local  pgbouncer  postgres  peer" in vm1.files["/etc/pgbouncer/pgbouncer_hba.conf"].content
    assert "pool_mode = transaction" in vm1.files[PGB_INI].content
    assert "default_pool_size = 20\nmax_client_conn = 500\n" in vm1.files[PGB_INI].content  # inventory defaults
    assert not [f for f in vm1.files if "pgbouncer-check" in f]  # the check's password file is gone
    assert not any(AIRFLOW_DB_PASSWORD in c.command for c in vm1.commands)

    vm1.forget()
    again = InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    assert again["changes"] == []
    vm1.pgbouncer["backend"] = ("127.0.0.1", 5433)  # after the cutover: HAProxy's write port
    vm1.files[PGB_INI].content = vm1.files[PGB_INI].content.replace(f"port='{source.port}'", "port='5433'")
    kept = InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    assert kept["result"]["backend"] == "127.0.0.1:5433" and kept["changes"] == []


def airflow_cfg(port: int) -> str:
    return ("[core]\nexecutor = LocalExecutor\n\n[database]\n"
            f"sql_alchemy_conn = postgresql+psycopg2://airflow_user:old@127.0.0.1:{port}/airflow_db\n")


AIRFLOW_PYTHON = "/opt/airflow/bin/python"
MOVE_SETTINGS = MoveAirflowOntoPgBouncerOperator.SETTINGS
MOVE_PGPASS = MoveAirflowOntoPgBouncerOperator.PGPASS
MOVE_STAGED = MoveAirflowOntoPgBouncerOperator.STAGED


def scheduler_on(vm1: FakeHost, port: int) -> None:
    """Airflow's scheduler unit on vm1 (LocalExecutor: the move's own task runs inside it), pgha beside it."""
    vm1.files[AIRFLOW_CFG] = FakeFile(airflow_cfg(port), "airflow", "airflow", "600")
    vm1.files["/etc/systemd/system/airflow-scheduler.service"] = FakeFile(
        "[Service]\nUser=airflow\nExecStart=/opt/airflow/bin/airflow scheduler\n")
    vm1.binaries.update({AIRFLOW_PYTHON: "Python 3.11.2", "/opt/airflow/bin/airflow": "3.3.2"})
    vm1.python_modules.add("pgha.cutover")
    vm1.units["airflow-scheduler.service"] = Unit(enabled=True, active=True)


def test_moving_airflow_onto_pgbouncer_arms_an_agent_outside_the_task_and_a_rerun_changes_nothing(
        airflow_host: tuple[FakeHost, str], pair: tuple[PostgresService, PostgresService]) -> None:
    vm1, inventory = airflow_host
    source = pair[0]
    InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    scheduler_on(vm1, source.port)
    vm1.forget()
    moved = MoveAirflowOntoPgBouncerOperator(task_id="move", inventory_path=inventory, host="vm1").execute({})
    run_id = moved["result"]["run_id"]
    assert moved["result"] == {"armed": True, "run_id": run_id, "log": f"/var/log/pgha/{run_id}.log"}
    assert vm1.mutations() == [
        "install -d -m 0711 /etc/pgha",
        f"put_file {MOVE_STAGED} (root:root 0600)",
        f"put_file {MOVE_SETTINGS} (root:root 0600)",
        f"put_file {MOVE_PGPASS} (root:root 0600)",
        f"systemd-run --quiet --collect --unit={run_id} {AIRFLOW_PYTHON} -m pgha.cutover {MOVE_SETTINGS}",
    ]
    assert vm1.files[AIRFLOW_CFG].content == airflow_cfg(source.port), "the agent changes it, not the task"
    staged = make_url(get_option(vm1.files[MOVE_STAGED].content, "database", "sql_alchemy_conn"))
    assert (staged.host, staged.port, staged.password) == ("127.0.0.1", 6432, AIRFLOW_DB_PASSWORD)
    settings = json.loads(vm1.files[MOVE_SETTINGS].content)
    assert settings["role"] == "pooler" and settings["record"] == "log" and settings["run_id"] == run_id
    assert settings["cluster"] == {"host": "127.0.0.1", "port": 6432, "user": OWNER}
    assert settings["units"] == ["airflow-scheduler"] and settings["staged"] == MOVE_STAGED
    assert settings["resume_unit_name"] == "pgha-pgbouncer-move-resume.service"
    assert "Before=airflow-scheduler.service" in settings["resume_unit"]
    assert AIRFLOW_DB_PASSWORD not in vm1.files[MOVE_SETTINGS].content
    assert not any(AIRFLOW_DB_PASSWORD in c.command for c in vm1.commands)

    vm1.forget()  # the agent still runs: armed once only
    again = MoveAirflowOntoPgBouncerOperator(task_id="move", inventory_path=inventory, host="vm1").execute({})
    assert again["result"] == {"armed": False} and vm1.mutations() == []
    vm1.files[AIRFLOW_CFG].content = vm1.files[MOVE_STAGED].content  # what the agent installs
    del vm1.units[f"{run_id}.service"]
    done = MoveAirflowOntoPgBouncerOperator(task_id="move", inventory_path=inventory, host="vm1").execute({})
    assert done["result"] == {"armed": False} and vm1.mutations() == []


def test_a_move_that_cannot_start_its_agent_leaves_no_password_behind(
        airflow_host: tuple[FakeHost, str], pair: tuple[PostgresService, PostgresService]) -> None:
    vm1, inventory = airflow_host
    InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    scheduler_on(vm1, pair[0].port)
    del vm1.binaries[AIRFLOW_PYTHON]  # systemd-run finds no such executable
    vm1.python_modules.discard("pgha.cutover")
    with pytest.raises(AirflowException, match=r"cannot import pgha.cutover"):
        MoveAirflowOntoPgBouncerOperator(task_id="move", inventory_path=inventory, host="vm1").execute({})
    assert MOVE_PGPASS not in vm1.files and MOVE_STAGED not in vm1.files
    assert vm1.files[AIRFLOW_CFG].content == airflow_cfg(pair[0].port)


def test_moving_airflow_refuses_a_pgbouncer_that_sends_elsewhere(
        airflow_host: tuple[FakeHost, str], pair: tuple[PostgresService, PostgresService]) -> None:
    vm1, inventory = airflow_host
    InstallPgBouncerOperator(task_id="install_pgbouncer", inventory_path=inventory, host="vm1").execute({})
    vm1.files[AIRFLOW_CFG] = FakeFile(airflow_cfg(5999), "airflow", "airflow", "600")
    vm1.forget()
    with pytest.raises(AirflowException, match=r"Airflow uses 127.0.0.1:5999 but PgBouncer sends to .*nothing was"):
        MoveAirflowOntoPgBouncerOperator(task_id="move", inventory_path=inventory, host="vm1").execute({})
    assert vm1.mutations() == []


def test_in_the_migration_dag_the_pgbouncer_steps_run_only_with_pooler_pgbouncer_and_the_logical_method(
        tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, loopback_inventory([("pg-1", "127.0.0.41"), ("pg-2", "127.0.0.42"),
                                                              ("pg-3", "127.0.0.43")]))
    steps = [InstallPgBouncerOperator(task_id="i", inventory_path=inventory, host="lb"),
             MoveAirflowOntoPgBouncerOperator(task_id="m", inventory_path=inventory, host="lb"),
             PausedSwitchOperator(task_id="p", inventory_path=inventory)]
    for step in steps:
        with pytest.raises(AirflowSkipException, match="pooler is none"):
            step.execute({"params": {"pooler": "none", "migration_method": "logical_replication"}})
        with pytest.raises(AirflowException, match="needs migration_method logical_replication"):
            step.execute({"params": {"pooler": "pgbouncer", "migration_method": "dump_restore"}})
    with pytest.raises(AirflowSkipException, match="paused_cutover"):
        CutoverOperator(task_id="cutover", inventory_path=inventory).execute({"params": {"pooler": "pgbouncer"}})
