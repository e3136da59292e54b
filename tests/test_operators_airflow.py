"""Phase 8 and the cutover on recorded hosts: the staged airflow.cfg (proven against a real loopback
PostgreSQL standing where HAProxy's write port is) and the cutover agents' arming plan."""

from __future__ import annotations

import configparser
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgha.compat import AirflowException
from fixture_secrets import AIRFLOW_DB_PASSWORD, POSTGRES_PASSWORD
from pgha.cutover import STAGED_CONFIG
from pgha.operators.airflow import CutoverOperator, StageAirflowConfigOperator
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, FakeFile, FakeHost, Fleet, fleet_inventory
from services import PostgresService, start_postgres
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
LIVE_CFG = "/tmp/airflow.cfg"
WEB_CFG = "/etc/airflow/airflow.cfg"
AIRFLOW_PYTHON = "/opt/airflow/bin/python"
SOURCE_URL = "postgresql+psycopg2://airflow_user:old-pw@127.0.0.40:5432/airflow_db"


def pgpass_field(value: str) -> str:
    """``value`` as a field of a pgpass line (libpq's escapes)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def add_web_host(raw: dict) -> None:
    raw["hosts"].append({"name": "web1", "address": "127.0.0.44", "ssh_conn_id": "ssh_web1"})
    raw["airflow"]["hosts"].append({"host": "web1", "config": WEB_CFG, "units": ["airflow-api-server"]})


def airflow_host(host: FakeHost, config: str, unit: str, executor: str = "LocalExecutor") -> None:
    """An Airflow installation in /opt/airflow run by ``unit`` as user airflow, pgha installed beside it."""
    host.files[config] = FakeFile(f"[core]\nexecutor = {executor}\n\n[database]\nsql_alchemy_conn = {SOURCE_URL}\n",
                                  "airflow", "airflow", "640")
    host.files[f"/etc/systemd/system/{unit}.service"] = FakeFile(
        f"[Service]\nUser=airflow\nExecStart=/opt/airflow/bin/airflow {unit.split('-', 1)[1]}\n")
    host.binaries.update({AIRFLOW_PYTHON: "Python 3.12.3", "/opt/airflow/bin/airflow": "3.1.0"})
    host.python_modules.add("pgha.cutover")


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login="airflow_user",
                   password=AIRFLOW_DB_PASSWORD)
    set_connection(monkeypatch, "pgha_source_db", conn_type="postgres", host="127.0.0.40", port=5432,
                   login="airflow_user", password="old-pw", schema="airflow_db")


# ------------------------------------------------------------------ CutoverOperator: arming


def staged_fleet(fleet: Fleet, tmp_path: Path, os: str, **sections: Any) -> str:
    inventory = fleet_inventory(fleet, tmp_path, os, edit=add_web_host, **sections)
    for name, config, unit in (("vm1", LIVE_CFG, "airflow-scheduler"), ("web1", WEB_CFG, "airflow-api-server")):
        airflow_host(fleet[name], config, unit)
        fleet[name].dirs["/var/lib/pgha"] = ("root", "root", "700")
        fleet[name].files[STAGED_CONFIG] = FakeFile("[database]\nsql_alchemy_conn = x\n", "root", "root", "600")
    return inventory


def cutover(inventory: str) -> dict:
    return CutoverOperator(task_id="cutover", inventory_path=inventory).execute(
        {"params": {"migration_method": "dump_restore"}})


@pytest.mark.parametrize("os", BOTH)
def test_cutover_arms_a_primary_and_a_follower(fleet: Fleet, tmp_path: Path, os: str, logins: None) -> None:
    inventory = staged_fleet(fleet, tmp_path, os)
    result = cutover(inventory)["result"]
    run_id = result["run_id"]
    assert result["armed"] and result["hosts"] == {"vm1": "primary", "web1": "follower"}
    for name, role in result["hosts"].items():
        host = fleet[name]
        assert host.mutations() == [
            "install -d -m 0711 /etc/pgha",
            "put_file /etc/pgha/cutover.json (root:root 0600)",
            "put_file /etc/pgha/cutover.pgpass (root:root 0600)",
            f"systemd-run --quiet --collect --unit={run_id} {AIRFLOW_PYTHON} -m pgha.cutover /etc/pgha/cutover.json",
        ]
        assert host.ran(rf"^{AIRFLOW_PYTHON} -c 'import pgha.cutover'$")
        settings = json.loads(host.files["/etc/pgha/cutover.json"].content)
        assert settings["role"] == role and settings["run_id"] == run_id and settings["airflow_user"] == "airflow"
        assert settings["python"] == AIRFLOW_PYTHON and settings["airflow_bin"] == "/opt/airflow/bin/airflow"
        assert settings["cluster"] == {"host": "127.0.0.1" if name == "vm1" else "127.0.0.40", "port": 5433,
                                       "user": "postgres"}  # off its own host, HAProxy is reached at its address (runbook correction C15)
        assert POSTGRES_PASSWORD not in host.files["/etc/pgha/cutover.json"].content
        assert pgpass_field(POSTGRES_PASSWORD) in host.files["/etc/pgha/cutover.pgpass"].content
        assert not any(POSTGRES_PASSWORD in c.command for c in host.commands)
    primary = json.loads(fleet["vm1"].files["/etc/pgha/cutover.json"].content)
    assert primary["source"] == {"host": "127.0.0.40", "port": 5432, "user": "airflow_user"}
    assert primary["bin_dir"] == ("/usr/lib/postgresql/15/bin" if os == DEBIAN_12 else "/usr/bin")
    assert "old-pw" in fleet["vm1"].files["/etc/pgha/cutover.pgpass"].content
    assert "source" not in json.loads(fleet["web1"].files["/etc/pgha/cutover.json"].content)
    assert all(fleet[n].commands == [] for n in ("psg1", "psg2", "psg3"))


@pytest.mark.parametrize("os", BOTH)
def test_cutover_a_second_run_arms_nothing(fleet: Fleet, tmp_path: Path, os: str, logins: None) -> None:
    inventory = staged_fleet(fleet, tmp_path, os)
    cutover(inventory)
    fleet.forget()
    again = cutover(inventory)
    assert not again["changed"] and again["result"] == {"armed": False}
    assert again["unchanged"] == ["a cutover agent is already armed or running"]
    assert all(host.mutations() == [] for host in fleet.hosts.values())


def test_cutover_refuses_a_host_whose_airflow_python_lacks_pgha(fleet: Fleet, tmp_path: Path, logins: None) -> None:
    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12)
    fleet["vm1"].python_modules.clear()
    with pytest.raises(AirflowException, match=rf"\[vm1\] {AIRFLOW_PYTHON} cannot import pgha.cutover: pip-install "
                                               "pgha into the Python of this host's Airflow units"):
        cutover(inventory)
    assert all(host.mutations() == [] for host in fleet.hosts.values())


def test_cutover_arms_nowhere_when_a_follower_cannot_run_the_agent(fleet: Fleet, tmp_path: Path,
                                                                  logins: None) -> None:
    """Every host is checked before any agent starts: the source's agent must never start alone
    (a retry would then find it armed and never arm the follower)."""
    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12)
    fleet["web1"].python_modules.clear()
    with pytest.raises(AirflowException, match=r"\[web1\] .* cannot import pgha.cutover"):
        cutover(inventory)
    assert not any(host.ran(r"^systemd-run ") for host in fleet.hosts.values())


def test_each_agent_is_told_which_task_instance_must_succeed_before_it_begins(fleet: Fleet, tmp_path: Path,
                                                                             logins: None) -> None:
    from airflow.sdk import DAG

    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12)
    with DAG(dag_id="pg_ha_migration", schedule=None) as dag:
        task = CutoverOperator(task_id="cutover", inventory_path=inventory)
    task.execute({"dag": dag, "task": task, "run_id": "manual__2026-12-04T10:00:00+00:00",
                  "params": {"migration_method": "dump_restore"}})
    for name in ("vm1", "web1"):
        settings = json.loads(fleet[name].files["/etc/pgha/cutover.json"].content)
        assert settings["task"] == {"dag_id": "pg_ha_migration", "task_id": "cutover",
                                    "run_id": "manual__2026-12-04T10:00:00+00:00"}


def test_with_tls_every_agent_verifies_the_cluster_with_its_hosts_ca(fleet: Fleet, tmp_path: Path,
                                                                      logins: None) -> None:
    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12, tls={"enabled": True})
    cutover(inventory)
    for name in ("vm1", "web1"):
        cluster = json.loads(fleet[name].files["/etc/pgha/cutover.json"].content)["cluster"]
        assert cluster["sslmode"] == "verify-full" and cluster["sslrootcert"] == "/etc/pgha/tls/ca.crt", cluster


def test_a_primary_that_cannot_start_stops_the_followers_agent(fleet: Fleet, tmp_path: Path, logins: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The followers start first; each waits for this task's success, so stopping it changes nothing."""
    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12)
    vm1 = fleet["vm1"]
    start = vm1.run

    def run(command: str, **kwargs: object) -> object:
        if command.startswith("systemd-run "):
            return start("systemd-run --quiet --collect --unit=x /no/such/python", **kwargs)
        return start(command, **kwargs)

    monkeypatch.setattr(vm1, "run", run)
    with pytest.raises(Exception, match="Failed to find executable /no/such/python"):
        cutover(inventory)
    [agent] = fleet["web1"].transient
    assert fleet["web1"].mutations()[-4:] == [f"systemctl stop {agent}.service", "rm -f /etc/pgha/cutover.pgpass",
                                               "rm -f /etc/pgha/cutover-client.crt", "rm -f /etc/pgha/cutover-client.key"]
    assert not any(path.startswith("/etc/pgha/cutover") for path in fleet["web1"].files if path != "/etc/pgha/cutover.json")
    assert not fleet["web1"].units[f"{agent}.service"].active


def test_cutover_names_an_airflow_unit_it_cannot_read(fleet: Fleet, tmp_path: Path, logins: None) -> None:
    inventory = staged_fleet(fleet, tmp_path, DEBIAN_12)
    del fleet["vm1"].files["/etc/systemd/system/airflow-scheduler.service"]
    with pytest.raises(AirflowException, match=r"\[vm1\] cannot find the airflow executable in airflow-scheduler's "
                                               "ExecStart"):
        cutover(inventory)
    assert all(host.mutations() == [] for host in fleet.hosts.values())


# ------------------------------------------------------------------ StageAirflowConfigOperator


@pytest.fixture(scope="module")
def haproxy_write_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """A real PostgreSQL (not in recovery: a leader) where HAProxy's write port is, on the HAProxy host vm1."""
    svc = start_postgres(tmp_path_factory.mktemp("stage-pg"), password=POSTGRES_PASSWORD)
    try:
        from pg_pair import ensure_owner

        ensure_owner(svc)
        yield svc
    finally:
        svc.stop()


def stage(inventory: str, host: str = "vm1") -> dict:
    return StageAirflowConfigOperator(task_id="stage_airflow_config", host=host, inventory_path=inventory).execute({})


def stage_fleet(fleet: Fleet, tmp_path: Path, os: str, pg: PostgresService, executor: str = "LocalExecutor") -> str:
    inventory = fleet_inventory(fleet, tmp_path, os, lb_address=pg.host, haproxy={"host": "vm1", "write_port": pg.port},
                                postgres={"database": "postgres"}, edit=add_web_host)
    airflow_host(fleet["vm1"], LIVE_CFG, "airflow-scheduler", executor)
    airflow_host(fleet["web1"], WEB_CFG, "airflow-api-server", executor)
    return inventory


@pytest.mark.parametrize("os", BOTH)
def test_stage_writes_the_repointed_config_in_a_root_only_directory(fleet: Fleet, tmp_path: Path, os: str, logins: None,
                                                               haproxy_write_port: PostgresService) -> None:
    pg = haproxy_write_port
    inventory = stage_fleet(fleet, tmp_path, os, pg, executor="CeleryExecutor")
    live = fleet["vm1"].files[LIVE_CFG].content
    result = stage(inventory)
    vm1 = fleet["vm1"]
    staged = vm1.files[STAGED_CONFIG]
    assert vm1.mutations() == ["install -d -o root -g root -m 0700 /var/lib/pgha",
                               f"put_file {STAGED_CONFIG} (root:root 0600)"]
    assert (staged.owner, staged.group, staged.mode) == ("root", "root", "600")
    assert vm1.dirs["/var/lib/pgha"] == ("root", "root", "700")
    cfg = configparser.ConfigParser()  # interpolating, as Airflow's: the password's '%' must come back
    cfg.read_string(staged.content)
    url = make_url(cfg.get("database", "sql_alchemy_conn"))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2", "airflow_user", AIRFLOW_DB_PASSWORD, "127.0.0.1", pg.port, "postgres")
    assert cfg.get("celery", "result_backend") == "db+" + cfg.get("database", "sql_alchemy_conn")
    engine = create_engine(url)  # Airflow's own way in, with the URL as Airflow reads it
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar() == "airflow_user"
    finally:
        engine.dispose()
    assert vm1.files[LIVE_CFG].content == live  # the live config is not touched
    assert result["result"] == {"config": LIVE_CFG, "already_live": False}
    assert not any(AIRFLOW_DB_PASSWORD in c.command for c in vm1.commands)

    stage(inventory, "web1")  # another host reaches HAProxy at its address, never localhost (runbook correction C15)
    assert f"@{pg.host}:{pg.port}/postgres" in fleet["web1"].files[STAGED_CONFIG].content


@pytest.mark.parametrize("os", BOTH)
def test_stage_a_second_run_changes_nothing(fleet: Fleet, tmp_path: Path, os: str, logins: None,
                                            haproxy_write_port: PostgresService) -> None:
    inventory = stage_fleet(fleet, tmp_path, os, haproxy_write_port)
    stage(inventory)
    fleet.forget()
    again = stage(inventory)
    assert not again["changed"] and fleet["vm1"].mutations() == []


def test_stage_names_the_host_and_the_missing_config(fleet: Fleet, tmp_path: Path, logins: None,
                                                     haproxy_write_port: PostgresService) -> None:
    inventory = stage_fleet(fleet, tmp_path, DEBIAN_12, haproxy_write_port)
    del fleet["web1"].files[WEB_CFG]
    with pytest.raises(AirflowException, match=rf"\[web1\] {WEB_CFG} does not exist \(airflow.hosts\[\].config\)"):
        stage(inventory, "web1")
    assert fleet["web1"].mutations() == []
