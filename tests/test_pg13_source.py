"""A real PostgreSQL 13 source (Debian 11's binaries, .ci/install-deps) moved into a real PostgreSQL 15:
dump_restore through MigrateDataOperator with 15's pg_dump/pg_restore, and logical replication from a 13
publisher to a 15 subscriber with the grants pgha gives its replication role on 13. Preflight's refusals
(pgha.pgmajors) are unit-tested at the end without any server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixture_secrets import AIRFLOW_DB_PASSWORD, PATRONI_REPLICATION_PASSWORD, POSTGRES_PASSWORD
from pg_pair import DATABASE, OWNER, ensure_owner, fill_source, owner, restart_with, sql, superuser, write_pgpass
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from services import PG13_BIN_DIR, PG13_LIB_DIR, PG_BIN_DIR, PostgresService, SshdService, pg13_missing, start_postgres

from pgha import pgdata, pgmajors
from pgha.compat import AirflowException
from pgha.hooks.patroni import PatroniHook
from pgha.operators.postgres import MigrateDataOperator, SourcePreflightOperator

# /run/pgha/copy.pgpass and /run/pgha/commands are one place per machine: with the other tests that copy
pytestmark = pytest.mark.xdist_group("run_dir")

DUMP = {"params": {"migration_method": "dump_restore"}}
LOGICAL = {"params": {"migration_method": "logical_replication"}}
needs_pg13 = pytest.mark.skipif(pg13_missing() is not None, reason=pg13_missing() or "")


@pytest.fixture(scope="module")
def source13(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp("pg13-source"), password=POSTGRES_PASSWORD,
                         bin_dir=PG13_BIN_DIR, lib_dir=PG13_LIB_DIR)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def cluster15(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp("pg13-cluster"), password=POSTGRES_PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source13: PostgresService,
              cluster15: PostgresService, sshd: SshdService) -> str:
    """Source host 'lb' (the loopback sshd) runs 13, the cluster (leader pg1) 15; connections as in the lab."""
    raw = loopback_inventory([("pg1", "127.0.0.1"), ("pg2", "127.0.0.12"), ("pg3", "127.0.0.13")],
                             source={"host": "lb", "major": 13, "conn_id": "pgha_source_db"},
                             postgres={"major": 15, "port": cluster15.port, "database": DATABASE, "owner": OWNER})
    for host in raw["hosts"]:
        host["os_family"] = "debian"
    raw["hosts"][0]["address"] = "127.0.0.11"  # the leader pg1 has 127.0.0.1, where the cluster instance listens
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host=source13.host, port=source13.port,
                   login=OWNER, password=AIRFLOW_DB_PASSWORD, schema=DATABASE)
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login=OWNER, password=AIRFLOW_DB_PASSWORD)
    monkeypatch.setattr(PatroniHook, "leader", lambda self: "pg1")
    return write_inventory(tmp_path, raw)


@needs_pg13
def test_preflight_accepts_a_13_source_for_a_15_cluster(inventory: str, source13: PostgresService) -> None:
    fill_source(source13)
    result = SourcePreflightOperator(task_id="check_source_db", inventory_path=inventory).execute(DUMP)["result"]
    assert result["major"] == 13 and result["tables"] == 2


@needs_pg13
def test_dump_restore_from_13_uses_the_clusters_pg_dump(inventory: str, source13: PostgresService,
                                                        cluster15: PostgresService,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fill_source(source13)
    ensure_owner(cluster15)
    done = MigrateDataOperator(task_id="copy_data", inventory_path=inventory).execute(DUMP)
    assert done["result"]["tables"] == 2 and done["result"]["rows"] == 550
    with pgdata.session(owner(cluster15)) as target, pgdata.session(owner(source13)) as origin:
        assert pgdata.fingerprints(target) == pgdata.fingerprints(origin)
    assert sql(superuser(cluster15), "SHOW server_version_num")[0][0].startswith("15")
    out = capsys.readouterr().out
    assert f"{PG_BIN_DIR}/pg_dump" in out and f"{PG_BIN_DIR}/pg_restore" in out, out[-3000:]
    assert str(PG13_BIN_DIR) not in out
    assert any("postgresql-client-15" in change for change in done["changes"] + done.get("unchanged", [])) \
        or "postgresql-client-15" in out


@needs_pg13
def test_logical_replication_from_a_13_publisher_to_a_15_subscriber(source13: PostgresService,
                                                                    cluster15: PostgresService,
                                                                    tmp_path: Path) -> None:
    """The replication role gets exactly pgha's 13-compatible grants (include/sql), no superuser, no
    pg_read_all_data (14+); the 15 subscriber copies every table, then streams a new row."""
    restart_with(source13, wal_level="logical")
    fill_source(source13)
    ensure_owner(cluster15)
    role = "replicator"
    with pgdata.session(superuser(source13)) as conn:
        verifier = pgdata.encrypt_password(PATRONI_REPLICATION_PASSWORD, role, conn, "scram-sha-256")
        if not pgdata.scalar(conn, pgdata.statement("role_exists.sql", role=pgdata.lit(role))):
            pgdata.execute(conn, pgdata.statement("create_replication_role.sql", role=pgdata.ident(role)))
        pgdata.execute(conn, pgdata.statement("replication_role_grants.sql", role=pgdata.ident(role),
                                              verifier=pgdata.lit(verifier), database=pgdata.ident(DATABASE)))
    with pgdata.session(superuser(source13, DATABASE)) as conn:
        pgdata.execute(conn, pgdata.statement("replication_role_schema_grants.sql", role=pgdata.ident(role),
                                              schemas=pgdata.ident("public")))
        pgdata.ensure_publication(conn)  # before the schema copy, as a retry finds it: the copy leaves it out
    with pgdata.session(superuser(cluster15)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    pgpass = write_pgpass(tmp_path / "schema.pgpass", owner(source13), superuser(cluster15, DATABASE))
    pgdata.run_pipeline(pgdata.dump_restore_command(owner(source13), superuser(cluster15, DATABASE),
                                                    bin_dir=str(PG_BIN_DIR), owner=OWNER, passfile=pgpass,
                                                    schema_only=True), timeout=60)
    publisher = pgdata.Endpoint(host=source13.host, port=source13.port, user=role, dbname=DATABASE,
                                password=PATRONI_REPLICATION_PASSWORD)
    with pgdata.session(superuser(cluster15, DATABASE)) as conn:
        pgdata.create_subscription(conn, publisher)
    try:
        deadline = time.monotonic() + 60
        while True:
            with pgdata.session(superuser(cluster15, DATABASE)) as conn:
                pending, total = pgdata.initial_sync_state(conn)
            if total == 2 and pending == 0:
                break
            assert time.monotonic() < deadline, (pending, total)
            time.sleep(0.3)
        sql(owner(source13), "INSERT INTO log (event) VALUES ('after the initial copy')")
        deadline = time.monotonic() + 30
        while sql(owner(cluster15), "SELECT count(*) FROM log")[0][0] != 51:
            assert time.monotonic() < deadline, "the new row reached the 15 subscriber"
            time.sleep(0.3)
        assert sql(superuser(source13), "SELECT count(*) FROM pg_roles WHERE rolname = 'pg_read_all_data'") == [(0,)]
    finally:
        with pgdata.session(superuser(cluster15, DATABASE)) as conn:
            pgdata.drop_subscription(conn)
        with pgdata.session(superuser(source13, DATABASE)) as conn:
            pgdata.drop_publication(conn)


# ------------------------------------------------------------------ preflight's refusals (no server)

def refusals(**kwargs: Any) -> list[str]:
    args: dict[str, Any] = {"source_major": 13, "target_major": 15, "airflow_version": "3.0.6",
                            "method": "dump_restore"}
    return pgmajors.migration_refusals(**{**args, **kwargs})


def test_a_13_source_to_15_or_17_is_allowed_on_every_supported_airflow() -> None:
    for airflow in ("3.0.0", "3.1.7", "3.2.1", "3.3.2"):
        for target in (15, 17):
            assert refusals(airflow_version=airflow, target_major=target) == []
    assert refusals(airflow_version="3.1.8", target_major=13) == []


def test_a_13_cluster_is_refused_where_airflow_dropped_13() -> None:
    assert refusals(airflow_version="3.2.2", target_major=13) == [
        "Airflow 3.2.2 supports PostgreSQL 14 to 18 as its metadata database, not the cluster's major 13"]


def test_a_target_older_than_the_source_is_refused() -> None:
    assert refusals(source_major=15, target_major=13) == [
        "the cluster's major 13 is older than the source's 15: pg_dump and logical replication only move data "
        "to the same or a newer major"]


def test_a_target_the_running_airflow_does_not_support_is_refused() -> None:
    (reason,) = refusals(target_major=18)
    assert reason == "Airflow 3.0.6 supports PostgreSQL 13 to 17 as its metadata database, not the cluster's major 18"
    (unknown,) = refusals(airflow_version="2.10.5")
    assert unknown.startswith("Airflow 2.10.5 is not a release pgha knows")


def test_logical_refuses_a_source_without_free_slots_or_walsenders() -> None:
    ok = {"max_replication_slots": "10", "max_wal_senders": "10"}
    assert refusals(method="logical_replication", source_settings=ok) == []
    assert refusals(method="dump_restore", source_settings={"max_replication_slots": "0"}) == []
    reasons = refusals(method="logical_replication", source_settings={"max_replication_slots": "3",
                                                                       "max_wal_senders": "0"}, used_slots=2)
    assert reasons == [
        "source max_replication_slots = 3 (2 in use): logical replication needs 2 free; set it on the source and "
        "restart it (pgha changes only wal_level and listen_addresses there)",
        "source max_wal_senders = 0: logical replication needs 2 free; set it on the source and restart it "
        "(pgha changes only wal_level and listen_addresses there)",
    ]


def test_release_of_reads_prereleases() -> None:
    assert pgmajors.release_of("3.1.0rc1") == (3, 1)
    assert pgmajors.airflow_postgres_majors("3.3.2") == (14, 15, 16, 17, 18)
    assert pgmajors.airflow_postgres_majors("3.0.6") == (13, 14, 15, 16, 17)
    assert pgmajors.airflow_postgres_majors("3.4.0") == ()


@needs_pg13
def test_preflight_refuses_before_any_change(inventory: str, source13: PostgresService,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The running Airflow is older than any release pgha knows: refused, with the reason, nothing changed."""
    fill_source(source13)
    monkeypatch.setattr("pgha.operators.postgres.AIRFLOW_VERSION", "2.10.5")
    with pytest.raises(AirflowException, match=r"refused \(nothing was changed\):\n  - Airflow 2.10.5 is not"):
        SourcePreflightOperator(task_id="check_source_db", inventory_path=inventory).execute(LOGICAL)


# ------------------------------------------------------------------ the lab's source major (files only)

def test_the_lab_source_major_setting_and_the_deployed_inventory() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lab"))
    from pghalab import topology
    from pghalab.deploy import lab_inventory
    from pghalab.settings import LAB_INVENTORY

    assert topology.source_major({}) == 15
    assert topology.source_major({"PGHA_LAB_SOURCE_MAJOR": "13"}) == 13
    with pytest.raises(ValueError, match="source of major 13 or 15"):
        topology.source_major({"PGHA_LAB_SOURCE_MAJOR": "14"})
    import yaml

    text = LAB_INVENTORY.read_text()
    deployed = yaml.safe_load(lab_inventory(text, 13))
    assert deployed["source"]["major"] == 13 and deployed["postgres"]["major"] == 15
    assert lab_inventory(text, 15) == text
    # a 17 cluster: Debian 13 database hosts, whose own Patroni package runs it
    deployed = yaml.safe_load(lab_inventory(text, 13, 17))
    assert (deployed["source"]["major"], deployed["postgres"]["major"]) == (13, 17)
    assert deployed["patroni"]["install"] == {"method": "package"}
    assert {k: v for k, v in deployed.items() if k not in ("source", "postgres", "patroni")} == \
        {k: v for k, v in yaml.safe_load(text).items() if k not in ("source", "postgres", "patroni")}


def test_the_lab_cluster_major_and_airflow_release_settings() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lab"))
    from pghalab import topology

    assert topology.cluster_major({}) == 15
    assert topology.cluster_major({"PGHA_LAB_CLUSTER_MAJOR": "17"}) == 17
    with pytest.raises(ValueError, match="cluster of major 15 or 17"):
        topology.cluster_major({"PGHA_LAB_CLUSTER_MAJOR": "16"})
    # Airflow 3.2 dropped PostgreSQL 13: a 13 source runs the oldest supported release unless told otherwise
    assert topology.airflow_release({}) == "3.3.2"
    assert topology.airflow_release({"PGHA_LAB_SOURCE_MAJOR": "13"}) == "3.0.6"
    assert topology.airflow_release({"PGHA_LAB_SOURCE_MAJOR": "13", "PGHA_LAB_AIRFLOW": "3.1.8"}) == "3.1.8"
    with pytest.raises(ValueError, match="do not take PostgreSQL 13"):
        topology.airflow_release({"PGHA_LAB_SOURCE_MAJOR": "13", "PGHA_LAB_AIRFLOW": "3.3.2"})
    with pytest.raises(ValueError, match="PGHA_LAB_AIRFLOW='2.10.5'"):
        topology.airflow_release({"PGHA_LAB_AIRFLOW": "2.10.5"})
    from airflow_releases import RELEASE_PINS

    assert topology.AIRFLOW_RELEASE_PINS == RELEASE_PINS, "the lab's releases are the supported ones"
