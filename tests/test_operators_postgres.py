"""Phase 6 operators and the cutover's arming against real loopback PostgreSQL (source and cluster)
and a real loopback sshd as the source host. Patroni's answer (which node leads) is the only stand-in."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fixture_secrets import AIRFLOW_DB_PASSWORD, POSTGRES_PASSWORD
from pg_pair import (
    BIN_DIR,
    DATABASE,
    OWNER,
    add_bulk,
    ensure_owner,
    fill_source,
    owner,
    restart_with,
    sql,
    superuser,
    write_pgpass,
)
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from services import PostgresService, SshdService
from test_cutover_agent import pipelines_of

from pgha import pgdata
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.postgres import RemoteDumpRestore
from pgha.operators.postgres import (
    CreateDatabaseOperator,
    MigrateDataOperator,
    SourcePreflightOperator,
    StartLogicalReplicationOperator,
)
from pgha.sensors.postgres import LogicalSyncSensor

# Asserts that no killable command's pid file is left in /run/pgha: one pytest-xdist worker runs these files.
pytestmark = pytest.mark.xdist_group("run_dir")

DUMP = {"params": {"migration_method": "dump_restore"}}


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: PostgresService, cluster: PostgresService,
              sshd: SshdService) -> str:
    """Source host 'lb' (the loopback sshd), leader 'pg1' (the cluster instance), connections as in the lab."""
    raw = loopback_inventory([("pg1", "127.0.0.1"), ("pg2", "127.0.0.12"), ("pg3", "127.0.0.13")], source={"host": "lb", "major": 15, "conn_id": "pgha_source_db"},
                             postgres={"port": cluster.port, "database": DATABASE, "owner": OWNER})
    for host in raw["hosts"]:
        host["os_family"] = "debian"
    raw["hosts"][0]["address"] = "127.0.0.11"  # the leader pg1 has 127.0.0.1, where the cluster instance listens
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host=source.host, port=source.port,
                   login=OWNER, password=AIRFLOW_DB_PASSWORD, schema=DATABASE)
    for conn_id in ("pgha_pg_superuser",):
        set_connection(monkeypatch, conn_id, conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login=OWNER, password=AIRFLOW_DB_PASSWORD)
    monkeypatch.setattr(PatroniHook, "leader", lambda self: "pg1")
    return write_inventory(tmp_path, raw)


def changes(summary: dict[str, Any]) -> list[str]:
    return summary["changes"]


def test_source_preflight_reports_the_source(inventory: str, source: PostgresService) -> None:
    fill_source(source)
    result = SourcePreflightOperator(task_id="check_source_db", inventory_path=inventory).execute(DUMP)["result"]
    assert result["major"] == 15 and result["tables"] == 2
    assert "wal_level is replica, needs logical" in result["logical_replication_needs"]


def test_create_database_then_nothing_to_do(inventory: str, cluster: PostgresService) -> None:
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.execute(conn, pgdata.statement("drop_database.sql", database=pgdata.ident(DATABASE)))
    first = CreateDatabaseOperator(task_id="create", inventory_path=inventory).execute(DUMP)
    assert changes(first) == [f"database {DATABASE}"] or changes(first) == [f"role {OWNER}", f"database {DATABASE}"]
    with pgdata.session(owner(cluster)) as conn:  # the password from the connection works
        assert pgdata.database_exists(conn, DATABASE)
    again = CreateDatabaseOperator(task_id="create", inventory_path=inventory).execute(DUMP)
    assert not again["changed"], again


def test_migrate_data_copies_verifies_marks_and_reruns(inventory: str, source: PostgresService,
                                                      cluster: PostgresService) -> None:
    fill_source(source)
    ensure_owner(cluster)
    first = MigrateDataOperator(task_id="copy_data", inventory_path=inventory).execute(DUMP)
    assert first["result"]["tables"] == 2 and first["result"]["rows"] == 550
    with pgdata.session(superuser(cluster)) as conn:
        assert pgdata.database_comment(conn, DATABASE) == f"{pgdata.RESTORED_MARK} from lb"
    with pgdata.session(owner(cluster)) as target, pgdata.session(owner(source)) as origin:
        assert pgdata.fingerprints(target) == pgdata.fingerprints(origin)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.mark_live(conn, DATABASE, "test")
    live = MigrateDataOperator(task_id="copy_data", inventory_path=inventory).execute(DUMP)
    assert not live["changed"] and live["result"] == {"skipped": "live"}
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.clear_mark(conn, DATABASE)


def test_killed_copy_leaves_no_pipeline_and_a_rerun_succeeds(inventory: str, source: PostgresService,
                                                             cluster: PostgresService, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fill_source(source)
    # its copy runs for seconds (~1 s per 400 000 rows on an idle machine), several times what on_kill needs
    # to reach the host: killed mid-way, not after the end
    add_bulk(source, 1_000_000)
    ensure_owner(cluster)
    # a passwords file of this test's own: no other copy on this machine shows up as this one, or removes it
    pgpass = f"/run/pgha/copy-{uuid.uuid4().hex[:8]}.pgpass"
    monkeypatch.setattr(RemoteDumpRestore, "PGPASS", pgpass)
    monkeypatch.setattr(RemoteDumpRestore, "SECRET_FILES",
                        (pgpass, RemoteDumpRestore.CLIENT_CERT, RemoteDumpRestore.CLIENT_KEY))
    op = MigrateDataOperator(task_id="copy_data", inventory_path=inventory)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = op.execute(DUMP)
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    # this task's pipeline: started by its own copy (a killable command registered), and running
    while not (op._copy is not None and op._copy.remote.running and pipelines_of(pgpass)):
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    op.on_kill()
    worker.join(60)
    assert "error" in outcome, "the killed copy failed its task"
    assert pipelines_of(pgpass) == []
    assert not Path(pgpass).exists(), "the passwords' file is gone"
    assert not list(Path("/run/pgha/commands").glob("*.pgid")), "no pid file left"
    capsys.readouterr()
    monkeypatch.setattr(RemoteDumpRestore, "PROGRESS_INTERVAL", 0.5)  # 15 s in a task
    again = MigrateDataOperator(task_id="copy_data", inventory_path=inventory).execute(DUMP)
    assert again["result"]["rows"] == 1_000_550
    progress = re.findall(r"pg_dump \| pg_restore: copied [\d.]+ MB of ~[\d.]+ MB \([\d.]+ MB/s\)",
                          capsys.readouterr().out)
    assert progress, "the copy logged how far it got while it ran"
    sql(owner(source), "DROP TABLE bulk")


def test_start_logical_replication_skips_for_dump_restore(inventory: str) -> None:
    from pgha.compat import AirflowSkipException

    with pytest.raises(AirflowSkipException):
        StartLogicalReplicationOperator(task_id="start", inventory_path=inventory).execute(DUMP)


def test_cutover_arms_the_agent_module_with_the_airflow_python(inventory: str) -> None:
    from pgha.operators.airflow import CutoverOperator

    op = CutoverOperator(task_id="cutover", inventory_path=inventory)
    assert op.agent_command("pgha-cutover-1", "/opt/airflow/venv/bin/python") == [
        "systemd-run", "--quiet", "--collect", "--unit=pgha-cutover-1", "/opt/airflow/venv/bin/python", "-m",
        "pgha.cutover", "/etc/pgha/cutover.json",
    ]


def test_logical_initial_sync_logs_tables_per_state_and_bytes(inventory: str, source: PostgresService,
                                                              cluster: PostgresService, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A real subscription on the cluster copies the source's tables; each poke says how far it got."""
    restart_with(source, wal_level="logical")
    fill_source(source)
    ensure_owner(cluster)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    pgpass = write_pgpass(tmp_path / "schema.pgpass", owner(source), superuser(cluster, DATABASE))
    pgdata.run_pipeline(pgdata.dump_restore_command(owner(source), superuser(cluster, DATABASE), bin_dir=BIN_DIR,
                                                    owner=OWNER, passfile=pgpass, schema_only=True), timeout=60)
    with pgdata.session(superuser(source, DATABASE)) as conn:
        pgdata.ensure_publication(conn)
    with pgdata.session(superuser(cluster, DATABASE)) as conn:
        pgdata.create_subscription(conn, superuser(source, DATABASE))
    try:
        sensor = LogicalSyncSensor(task_id="logical_initial_sync", inventory_path=inventory, mode="poke")
        deadline = time.monotonic() + 60
        while not sensor.poke({}).is_done:
            assert time.monotonic() < deadline, capsys.readouterr().out[-2000:]
            time.sleep(0.5)
        text = capsys.readouterr().out
        done = re.search(r"initial copy done on pg1: 2 tables replicating; \(ready 2\) ([\d.]+) MB of "
                         r"~([\d.]+) MB \([\d.]+ MB/s\)", text)
        assert done, text[-2000:]
        assert 0 < float(done[1]) <= 2 * float(done[2]), "the bytes of the same tables on both sides"
    finally:
        with pgdata.session(superuser(cluster, DATABASE)) as conn:
            pgdata.drop_subscription(conn)
        with pgdata.session(superuser(source, DATABASE)) as conn:
            pgdata.drop_publication(conn)


def test_with_tls_pgha_verifies_the_cluster_here_and_on_the_source_host(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own sessions verify with this process's copy of the CA; a copy run on the source
    host verifies with the CA file phase 3 installed there. Without TLS, libpq's default."""
    from pgha.inventory import load_inventory
    from pgha.operators.postgres import cluster_admin
    from pgha.runtime import verified_on_host

    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)
    for enabled in (True, False):
        raw = loopback_inventory([("pg1", "127.0.0.11"), ("pg2", "127.0.0.12"), ("pg3", "127.0.0.13")],
                                 tls={"enabled": enabled})
        path = write_inventory(tmp_path, raw)
        op = CreateDatabaseOperator(task_id="create_database", inventory_path=path)
        admin = cluster_admin(op, load_inventory(path).host("pg1"))
        there = verified_on_host(admin)
        if enabled:
            assert admin.sslmode == "verify-full" and Path(admin.sslrootcert or "").is_file()
            assert there.sslmode == "verify-full" and there.sslrootcert == "/etc/pgha/tls/ca.crt"
        else:
            assert admin.sslmode is None and admin.sslrootcert is None and there == admin
