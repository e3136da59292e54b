"""Phase 6, logical replication: the source host is a recorded host whose psql reaches a real loopback
PostgreSQL (the source); restarting its postgresql unit restarts that server. The cluster side of
StartLogicalReplicationOperator is the same real server as the leader, Patroni a real-HTTP stand-in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgha.compat import AirflowException, AirflowSkipException
from fixture_secrets import AIRFLOW_DB_PASSWORD, PATRONI_REPLICATION_PASSWORD, POSTGRES_PASSWORD
from pg_pair import DATABASE, OWNER, fill_source, restart_with, sql, superuser
from pgha import pgdata
from pgha.operators.postgres import (
    SOURCE_RECORD,
    PrepareLogicalSourceOperator,
    StartLogicalReplicationOperator,
    UndoLogicalSourceOperator,
)
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, ClusterApis, FakeFile, Fleet, fleet_inventory
from services import PostgresService, start_postgres

# /run/pgha/copy.pgpass and /run/pgha/commands are one place per machine: with the other tests that copy
pytestmark = pytest.mark.xdist_group("run_dir")

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
    """The source as before phase 6: wal_level replica, listening on 127.0.0.1 only, no replication role,
    publication or slot."""
    drop_replicator(source)
    sql(superuser(source, DATABASE), "DROP PUBLICATION IF EXISTS pgha_pub")
    sql(superuser(source), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots",
        "ALTER SYSTEM RESET wal_level", "ALTER SYSTEM RESET listen_addresses")
    restart_with(source)
    return source


def drop_replicator(svc: PostgresService) -> None:
    if sql(superuser(svc), "SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'") == [(1,)]:
        sql(superuser(svc, DATABASE), "DROP OWNED BY replicator", "DROP ROLE replicator")


def replicator(svc: PostgresService, dbname: str = DATABASE) -> pgdata.Endpoint:
    return pgdata.Endpoint(host=svc.host, port=svc.port, user="replicator", dbname=dbname,
                           password=PATRONI_REPLICATION_PASSWORD)


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
        "install -d -o root -g root -m 0700 /var/lib/pgha",
        f"put_file {SOURCE_RECORD} (root:root 0600)",  # the originals, before any change
        "psql -d postgres -f alter_system.sql",  # wal_level
        "psql -d postgres -f alter_system.sql",  # listen_addresses
        f"put_file {hba} (postgres:postgres 600)",
        "psql -d postgres -f reload_conf.sql",
        "psql -d postgres -f create_replication_role.sql",
        "psql -d postgres -f replication_role_grants.sql",
        "psql -d airflow_db -f replication_role_schema_grants.sql",
        "systemctl restart postgresql",
    ]
    assert json.loads(vm1.files[SOURCE_RECORD].content) == {
        "auto_conf": {"wal_level": None, "listen_addresses": None}, "role": "replicator", "role_existed": False}
    assert vm1.files[SOURCE_RECORD].mode == "600" and vm1.files[SOURCE_RECORD].owner == "root"
    assert vm1.files[hba].content.endswith("# BEGIN pgha logical replication\n"
                                           "host airflow_db replicator 127.0.0.41/32 scram-sha-256\n"
                                           "host airflow_db replicator 127.0.0.42/32 scram-sha-256\n"
                                           "host airflow_db replicator 127.0.0.43/32 scram-sha-256\n"
                                           "# END pgha logical replication\n")
    assert sql(superuser(fresh_source), "SHOW listen_addresses") == [("127.0.0.1,127.0.0.40",)]
    assert sql(superuser(fresh_source), "SHOW wal_level") == [("logical",)]
    with pgdata.session(replicator(fresh_source)) as conn:
        assert pgdata.scalar(conn, pgdata.statement("in_recovery.sql")) is False  # the role logs in
    assert not any(PATRONI_REPLICATION_PASSWORD in c.command for c in vm1.commands)

    fleet.forget()
    again = prepare(inventory)
    assert not again["changed"] and again["result"] == {"restarted": False}
    # the password is set from the connection on every run (so a rotated one takes effect); nothing else changes
    assert vm1.mutations() == ["psql -d postgres -f replication_role_grants.sql",
                               "psql -d airflow_db -f replication_role_schema_grants.sql"]
    assert json.loads(vm1.files[SOURCE_RECORD].content)["role_existed"] is False  # the first record stays


@pytest.fixture(scope="module")
def subscriber(tmp_path_factory: pytest.TempPathFactory, source: PostgresService) -> Iterator[PostgresService]:
    """A second server, the cluster's stand-in, with airflow_db's schema."""
    svc = start_postgres(tmp_path_factory.mktemp("logical-subscriber"), password=POSTGRES_PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


def test_the_replication_role_reads_the_migrated_database_and_nothing_else(
        fleet: Fleet, tmp_path: Path, logins: None, fresh_source: PostgresService,
        subscriber: PostgresService) -> None:
    sql(superuser(fresh_source), "DROP TABLE IF EXISTS elsewhere", "CREATE TABLE elsewhere (secret text)")
    prepare(source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source))
    with pgdata.session(replicator(fresh_source)) as conn:
        assert pgdata.rows(conn, pgdata.sql.SQL("SELECT count(*) FROM dag_run")) == [(500,)]
        with pytest.raises(Exception, match="permission denied"):
            pgdata.rows(conn, pgdata.sql.SQL("SELECT * FROM pg_authid"))
    with pgdata.session(replicator(fresh_source, "postgres")) as conn:  # PUBLIC may connect; it reads nothing
        with pytest.raises(Exception, match="permission denied for table elsewhere"):
            pgdata.rows(conn, pgdata.sql.SQL("SELECT * FROM elsewhere"))
    assert sql(superuser(fresh_source), "SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member "
                                        "WHERE u.rolname = 'replicator'") == [(0,)]  # no pg_read_all_data
    # and that is enough for a subscription's initial copy
    sql(superuser(fresh_source, DATABASE), "CREATE PUBLICATION pgha_pub FOR ALL TABLES")
    sql(superuser(subscriber), "DROP DATABASE IF EXISTS sub_db", "CREATE DATABASE sub_db")
    sql(superuser(subscriber, "sub_db"),
        "CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text NOT NULL, run_id text NOT NULL, "
        "start_date timestamptz, conf jsonb, duration double precision)",
        "CREATE TABLE log (id bigserial PRIMARY KEY, event text, dttm timestamptz)")
    publisher = replicator(fresh_source)
    with pgdata.session(superuser(subscriber, "sub_db")) as conn:
        pgdata.create_subscription(conn, publisher)
    try:
        deadline = time.time() + 60
        while sql(superuser(subscriber, "sub_db"), "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'"
                  ) != [(0,)] and time.time() < deadline:
            time.sleep(0.2)
        assert sql(superuser(subscriber, "sub_db"), "SELECT count(*) FROM dag_run") == [(500,)]
        assert sql(superuser(subscriber, "sub_db"), "SELECT count(*) FROM log") == [(50,)]
    finally:
        with pgdata.session(superuser(subscriber, "sub_db")) as conn:
            pgdata.drop_subscription(conn)
        sql(superuser(fresh_source), "DROP TABLE elsewhere")


def test_a_role_an_older_pgha_made_loses_pg_read_all_data(fleet: Fleet, tmp_path: Path, logins: None,
                                                            fresh_source: PostgresService) -> None:
    sql(superuser(fresh_source), "CREATE ROLE replicator LOGIN REPLICATION", "GRANT pg_read_all_data TO replicator")
    result = prepare(source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source))
    assert "pg_read_all_data revoked from replicator" in result["changes"]
    assert "psql -d postgres -f revoke_role.sql" in fleet["vm1"].mutations()
    assert sql(superuser(fresh_source), "SELECT pg_has_role('replicator', 'pg_read_all_data', 'MEMBER')") == [(False,)]
    # a role that was there before pgha is recorded as such: the undo keeps it
    assert json.loads(fleet["vm1"].files[SOURCE_RECORD].content)["role_existed"] is True


# ------------------------------------------------------------------ UndoLogicalSourceOperator


def undo(inventory: str, outcome: str = "success", context: dict = LOGICAL) -> dict:
    return UndoLogicalSourceOperator(task_id="undo_logical_source", inventory_path=inventory,
                                     cutover_outcome=outcome).execute(context)


def test_undo_after_success_removes_what_the_logical_method_added(fleet: Fleet, tmp_path: Path, logins: None,
                                                                  fresh_source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source)
    vm1 = fleet["vm1"]
    hba = sql(superuser(fresh_source), "SHOW hba_file")[0][0]
    before = vm1.files[hba].content
    prepare(inventory)
    sql(superuser(fresh_source, DATABASE), "CREATE PUBLICATION pgha_pub FOR ALL TABLES")
    sql(superuser(fresh_source), "SELECT pg_create_logical_replication_slot('pgha_sub', 'pgoutput')")
    fleet.forget()

    result = undo(inventory)
    assert vm1.mutations() == [
        "psql -d airflow_db -f drop_publication.sql",
        "psql -d postgres -f drop_replication_slot.sql",
        "psql -d airflow_db -f drop_replication_role.sql",
        f"put_file {hba} (postgres:postgres 600)",
        "psql -d postgres -f reload_conf.sql",
        "psql -d postgres -f alter_system_reset.sql",  # wal_level
        "psql -d postgres -f alter_system_reset.sql",  # listen_addresses
        "systemctl restart postgresql",
        f"rm -f {SOURCE_RECORD}",
    ]
    assert result["result"]["restarted"] is True
    assert any("replication role replicator dropped" in c for c in result["changes"])
    assert vm1.files[hba].content == before
    assert SOURCE_RECORD not in vm1.files
    assert sql(superuser(fresh_source), "SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'") == [(0,)]
    assert sql(superuser(fresh_source, DATABASE), "SELECT count(*) FROM pg_publication") == [(0,)]
    assert sql(superuser(fresh_source), "SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert sql(superuser(fresh_source), "SHOW listen_addresses") == [("127.0.0.1",)]
    assert sql(superuser(fresh_source), "SHOW wal_level") == [("replica",)]

    fleet.forget()
    again = undo(inventory)
    assert not again["changed"] and vm1.mutations() == []


def test_undo_keeps_everything_unless_the_cutover_succeeded(fleet: Fleet, tmp_path: Path, logins: None,
                                                            fresh_source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source)
    prepare(inventory)
    fleet.forget()
    for outcome in ("rolled_back", "not_armed", ""):
        with pytest.raises(AirflowSkipException, match="the source stays ready for logical replication"):
            undo(inventory, outcome)
    with pytest.raises(AirflowSkipException, match="migration_method is dump_restore"):
        undo(inventory, "success", {"params": {}})
    assert fleet["vm1"].commands == []
    assert SOURCE_RECORD in fleet["vm1"].files


def test_undo_keeps_wal_level_while_another_logical_slot_exists(fleet: Fleet, tmp_path: Path, logins: None,
                                                                fresh_source: PostgresService) -> None:
    inventory = source_host_inventory(fleet, tmp_path, DEBIAN_12, fresh_source)
    prepare(inventory)
    sql(superuser(fresh_source), "SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
    try:
        result = undo(inventory)
        assert "source wal_level kept logical for slot(s) someone_else" in result["unchanged"]
        assert sql(superuser(fresh_source), "SHOW wal_level") == [("logical",)]
        assert sql(superuser(fresh_source), "SHOW listen_addresses") == [("127.0.0.1",)]
    finally:
        sql(superuser(fresh_source), "SELECT pg_drop_replication_slot('someone_else')")


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
