"""Phase 6, logical replication: the source host is a recorded host whose psql reaches a real loopback
PostgreSQL (the source); restarting its postgresql unit restarts that server. The cluster side of
StartLogicalReplicationOperator is the same real server as the leader, Patroni a real-HTTP stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgha.compat import AirflowException, AirflowSkipException
from fixture_secrets import AIRFLOW_DB_PASSWORD, PATRONI_REPLICATION_PASSWORD, POSTGRES_PASSWORD
from pg_pair import DATABASE, OWNER, fill_source, restart_with, sql, superuser
from pgha import pgdata
from pgha.operators.postgres import PrepareLogicalSourceOperator, StartLogicalReplicationOperator
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, ClusterApis, FakeFile, Fleet, fleet_inventory
from services import PostgresService, start_postgres

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
LOGICAL = {"params": {"migration_method": "logical_replication"}}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp("logical-source"), password=POSTGRES_PASSWORD)
    try:
        fill_source(svc)
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def fresh_source(source: PostgresService) -> PostgresService:
    """The source as before phase 6: wal_level replica, listening on 127.0.0.1 only, no replication role."""
    sql(superuser(source), "ALTER SYSTEM RESET wal_level", "ALTER SYSTEM RESET listen_addresses",
        "DROP ROLE IF EXISTS replicator")
    restart_with(source)
    return source


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch, source: PostgresService) -> None:
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host=source.host, port=source.port,
                   login=OWNER, password=AIRFLOW_DB_PASSWORD, schema=DATABASE)
    set_connection(monkeypatch, "pgha_pg_replication", conn_type="postgres", login="replicator",
                   password=PATRONI_REPLICATION_PASSWORD)
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)


def source_host_inventory(fleet: Fleet, tmp_path: Path, os: str, source: PostgresService, **sections: object) -> str:
    """vm1 (127.0.0.40) is the source host: its PostgreSQL package, psql reaching the real source."""
    inventory = fleet_inventory(fleet, tmp_path, os, **sections)
    vm1 = fleet["vm1"]
    vm1.install_package("postgresql-15" if os == DEBIAN_12 else "postgresql-server")
    vm1.units["postgresql.service"].active = True
    vm1.postgres = superuser(source)
    vm1.on_start["postgresql.service"] = lambda: restart_with(source)
    hba = sql(superuser(source), "SHOW hba_file")[0][0]
    vm1.files[hba] = FakeFile(Path(hba).read_text(), "postgres", "postgres", "600")
    return inventory


def prepare(inventory: str) -> dict:
    return PrepareLogicalSourceOperator(task_id="prepare_logical_source", inventory_path=inventory).execute(LOGICAL)


# ------------------------------------------------------------------ PrepareLogicalSourceOperator


@pytest.mark.parametrize("os", BOTH)
def test_prepare_logical_source_plan_then_nothing_to_do(fleet: Fleet, tmp_path: Path, os: str, logins: None,
                                                        fresh_source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, os, fresh_source)
    vm1 = fleet["vm1"]
    first = prepare(inventory)
    assert first["result"] == {"restarted": True}
    hba = sql(superuser(fresh_source), "SHOW hba_file")[0][0]
    assert vm1.mutations() == [
        "psql -d postgres -f alter_system.sql",  # wal_level
        "psql -d postgres -f alter_system.sql",  # listen_addresses
        f"put_file {hba} (postgres:postgres 600)",
        "psql -d postgres -f reload_conf.sql",
        "psql -d postgres -f create_replication_role.sql",
        "psql -d postgres -f replication_role_grants.sql",
        "systemctl restart postgresql",
    ]
    assert vm1.files[hba].content.endswith("# BEGIN pgha logical replication\n"
                                           "host airflow_db replicator 127.0.0.0/8 scram-sha-256\n"
                                           "# END pgha logical replication\n")
    assert sql(superuser(fresh_source), "SHOW listen_addresses") == [("127.0.0.1,127.0.0.40",)]
    assert sql(superuser(fresh_source), "SHOW wal_level") == [("logical",)]
    with pgdata.session(pgdata.Endpoint(host=fresh_source.host, port=fresh_source.port, user="replicator",
                                        dbname=DATABASE, password=PATRONI_REPLICATION_PASSWORD)) as conn:
        assert pgdata.scalar(conn, pgdata.statement("in_recovery.sql")) is False  # the role logs in
    assert not any(PATRONI_REPLICATION_PASSWORD in c.command for c in vm1.commands)

    fleet.forget()
    again = prepare(inventory)
    assert not again["changed"] and again["result"] == {"restarted": False}
    # the password is set from the connection on every run (so a rotated one takes effect); nothing else changes
    assert vm1.mutations() == ["psql -d postgres -f replication_role_grants.sql"]


def test_prepare_logical_source_refuses_a_table_without_a_key_and_changes_nothing(
        fleet: Fleet, tmp_path: Path, logins: None, fresh_source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source)
    sql(superuser(fresh_source, DATABASE), "CREATE TABLE no_key (payload text)")
    try:
        with pytest.raises(AirflowException, match=r"logical replication impossible: table public.no_key has no "
                                                   "primary key or replica identity"):
            prepare(inventory)
    finally:
        sql(superuser(fresh_source, DATABASE), "DROP TABLE no_key")
    assert fleet["vm1"].commands == []


def test_prepare_logical_source_skips_for_dump_restore(fleet: Fleet, tmp_path: Path, logins: None,
                                                       source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, DEBIAN_12, source)
    with pytest.raises(AirflowSkipException, match="migration_method is dump_restore"):
        PrepareLogicalSourceOperator(task_id="p", inventory_path=inventory).execute({"params": {}})
    assert fleet["vm1"].commands == []


# ------------------------------------------------------------------ StartLogicalReplicationOperator


def start(inventory: str) -> dict:
    return StartLogicalReplicationOperator(task_id="start_logical_replication", inventory_path=inventory).execute(
        LOGICAL)


@pytest.fixture
def leader_inventory(fleet: Fleet, tmp_path: Path, apis: ClusterApis, logins: None,
                     source: PostgresService) -> str:
    """Patroni names psg1 the leader; psg1's address is where the loopback server listens (as the cluster)."""
    def psg1_on_loopback(raw: dict) -> None:
        raw["hosts"][1]["address"] = source.host

    # psg1's REST stand-in stays on 127.0.0.41: Patroni's answer comes from psg2 and psg3
    return fleet_inventory(fleet, tmp_path, DEBIAN_12, edit=psg1_on_loopback,
                           postgres={"port": source.port, "database": "pgha_cluster_db"}, **apis.sections())


def test_start_logical_replication_leaves_a_subscription_in_place(fleet: Fleet, leader_inventory: str,
                                                                  source: PostgresService) -> None:
    admin = superuser(source)
    sql(admin, "DROP DATABASE IF EXISTS pgha_cluster_db", "CREATE DATABASE pgha_cluster_db")
    sql(superuser(source, "pgha_cluster_db"),
        "CREATE SUBSCRIPTION pgha_sub CONNECTION 'host=127.0.0.40 dbname=airflow_db' PUBLICATION pgha_pub "
        "WITH (connect = false)")
    try:
        result = start(leader_inventory)
        assert not result["changed"] and result["unchanged"] == ["subscription pgha_sub on the leader"]
        assert result["result"] == {"subscription": "pgha_sub", "leader": "psg1"}
        assert all(host.commands == [] for host in fleet.hosts.values())
    finally:
        sql(superuser(source, "pgha_cluster_db"), "ALTER SUBSCRIPTION pgha_sub DISABLE",
            "ALTER SUBSCRIPTION pgha_sub SET (slot_name = NONE)", "DROP SUBSCRIPTION pgha_sub")


def test_start_logical_replication_never_overwrites_a_live_database(fleet: Fleet, leader_inventory: str,
                                                                    source: PostgresService) -> None:
    sql(superuser(source), "DROP DATABASE IF EXISTS pgha_cluster_db", "CREATE DATABASE pgha_cluster_db")
    with pgdata.session(superuser(source)) as conn:
        pgdata.mark_live(conn, "pgha_cluster_db", "test")
    result = start(leader_inventory)
    assert result["result"] == {"skipped": "live"} and not result["changed"]
    assert all(host.commands == [] for host in fleet.hosts.values())


def test_start_logical_replication_without_a_leader_names_the_phase(fleet: Fleet, leader_inventory: str,
                                                                    apis: ClusterApis) -> None:
    apis.members[0].update(role="replica", state="stopped")
    with pytest.raises(AirflowException, match="the Patroni cluster has no single leader: run phase 5 first"):
        start(leader_inventory)
    assert all(host.commands == [] for host in fleet.hosts.values())
