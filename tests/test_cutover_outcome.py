"""CutoverOutcomeSensor against real loopback PostgreSQL: the cluster (behind the inventory's HAProxy
address and port) holds pgha_cutover_log and Airflow's job table, as the agents leave them; the source
host's agent log is read over a real loopback sshd when the cluster cannot be read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pgha.compat import AirflowFailException, TaskDeferred
from fixture_secrets import POSTGRES_PASSWORD
from pg_pair import DATABASE, OWNER, ensure_owner, sql, superuser
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from services import PostgresService, SshdService

from pgha import pgdata
from pgha.sensors.airflow import CutoverOutcomeSensor

RUN = "pgha-cutover-1780000000"
STEPS = [{"step": "stop", "ok": True, "seconds": 1.5}, {"step": "drain", "ok": True, "seconds": 0.5},
         {"step": "copy", "ok": True, "seconds": 4.0}, {"step": "start", "ok": True, "seconds": 2.0},
         {"step": "healthy", "ok": True, "seconds": 9.0}]


@pytest.fixture
def cutover_db(cluster: PostgresService) -> PostgresService:
    """The cluster after the copy: airflow_db with Airflow's job table, an empty cutover log."""
    ensure_owner(cluster)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    sql(superuser(cluster), "DROP TABLE IF EXISTS public.pgha_cutover_log")
    sql(superuser(cluster, DATABASE),
        "CREATE TABLE job (id serial PRIMARY KEY, job_type text, state text, start_date timestamptz, "
        "latest_heartbeat timestamptz)")
    return cluster


def inventory_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_port: int, sshd: SshdService) -> str:
    """Source host 'lb' (the loopback sshd, also HAProxy: the cluster instance's port is its write port) and
    a second Airflow host 'wk', as the lab's vm1 and vm4."""
    raw = loopback_inventory([("pg1", "127.0.0.11"), ("pg2", "127.0.0.12"), ("pg3", "127.0.0.13")],
                             haproxy={"host": "lb", "write_port": cluster_port},
                             postgres={"database": DATABASE, "owner": OWNER})
    raw["hosts"].append({"name": "wk", "address": "127.0.0.14", "ssh_conn_id": "ssh_wk"})
    raw["airflow"]["hosts"].append({"host": "wk", "config": "/tmp/airflow.cfg", "units": ["airflow-celery-worker"]})
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres",
                   password=POSTGRES_PASSWORD)
    return write_inventory(tmp_path, raw)


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cutover_db: PostgresService,
              sshd: SshdService) -> str:
    return inventory_for(tmp_path, monkeypatch, cutover_db.port, sshd)


def record(cluster: PostgresService, host: str, role: str, outcome: str, detail: str,
           steps: list | None = None) -> None:
    """A row as the agent on ``host`` writes it (its record started 17 s before)."""
    body = {"run_id": RUN, "host": host, "role": role, "outcome": outcome, "detail": detail, "seconds": 17.0,
            "steps": STEPS if steps is None else steps}
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.record_cutover(conn, RUN, host, role, outcome, json.dumps(body))


def mark_live(cluster: PostgresService) -> None:
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.mark_live(conn, DATABASE, RUN)


def heartbeat(cluster: PostgresService, started: str) -> None:
    sql(superuser(cluster, DATABASE),
        f"INSERT INTO job (job_type, state, start_date, latest_heartbeat) "
        f"VALUES ('SchedulerJob', 'running', now() - interval '{started}', now())")


def sensor(inventory: str, **kwargs: object) -> CutoverOutcomeSensor:
    kwargs.setdefault("run_id", RUN)
    return CutoverOutcomeSensor(task_id="cutover_outcome", inventory_path=inventory, **kwargs)


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    """What the task logged (Airflow logs through structlog to stdout)."""
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_every_host_succeeded_and_a_scheduler_heartbeats_on_the_cluster(
    inventory: str, cutover_db: PostgresService, capsys: pytest.CaptureFixture[str]
) -> None:
    record(cutover_db, "lb", "primary", "success", "2 tables, 550 rows verified")
    record(cutover_db, "wk.example.org", "follower", "success", "repointed")  # its FQDN node name
    mark_live(cutover_db)
    heartbeat(cutover_db, "1 hour")  # a scheduler from before the cutover does not count
    assert sensor(inventory).poke({}).is_done is False
    assert "no scheduler started after" in logged(capsys)

    heartbeat(cutover_db, "5 seconds")
    done = sensor(inventory).poke({})
    assert done.is_done is True
    value = done.xcom_value
    assert value["outcome"] == "success" and value["heartbeats"] == 1
    assert set(value["hosts"]) == {"lb", "wk"}
    assert value["stopped_s"] == 8.0  # stop, drain, copy, start: the window Airflow was down
    assert value["log"] == f"/var/log/pgha/cutover-{RUN}.log"
    text = logged(capsys)
    assert "[lb] primary agent: success" in text and "stopped for 8.0s" in text


def test_a_rollback_fails_the_task_with_the_recorded_reason(inventory: str, cutover_db: PostgresService) -> None:
    record(cutover_db, "lb", "primary", "rolled_back",
           "runuser -u airflow -- env ... airflow db check failed (1): password authentication failed",
           steps=[*STEPS[:3], {"step": "db_check", "ok": False, "seconds": 3.0},
                  {"step": "start_old", "ok": True, "seconds": 2.0}])
    with pytest.raises(AirflowFailException, match="lb \\(primary\\): rolled_back: .*airflow db check failed"):
        sensor(inventory).poke({})


def test_a_host_without_an_outcome_keeps_the_sensor_waiting(
    inventory: str, cutover_db: PostgresService, capsys: pytest.CaptureFixture[str]
) -> None:
    record(cutover_db, "lb", "primary", "success", "2 tables, 550 rows verified")
    mark_live(cutover_db)
    heartbeat(cutover_db, "5 seconds")
    assert sensor(inventory).poke({}).is_done is False
    text = logged(capsys)
    assert "no outcome recorded yet by the agent on wk (follower)" in text, text[-2000:]
    assert "lb (primary)" not in text


def test_nothing_recorded_yet_waits_without_creating_the_log(inventory: str, cutover_db: PostgresService) -> None:
    assert sensor(inventory).poke({}).is_done is False
    assert sql(superuser(cutover_db), "SELECT to_regclass('public.pgha_cutover_log') IS NULL") == [(True,)]


def test_unreachable_cluster_reads_the_agents_log_and_the_armed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SshdService
) -> None:
    """The rollback the agent could not write to the cluster is in its log on the source host; the run is
    the one armed last (the cutover task armed nothing this time)."""
    inventory = inventory_for(tmp_path, monkeypatch, 1, sshd)  # nothing listens on port 1
    settings, logs = tmp_path / "cutover.json", tmp_path / "log"
    logs.mkdir()
    settings.write_text(json.dumps({"run_id": RUN, "role": "primary"}))
    line = {"run_id": RUN, "host": "lb", "role": "primary", "outcome": "rolled_back",
            "detail": "the cluster went away during the copy", "seconds": 30.0, "steps": STEPS[:2]}
    (logs / f"cutover-{RUN}.log").write_text(f"2026-01-01T00:00:00.000+00:00 step copy: begin\n"
                                             f"2026-01-01T00:00:30.000+00:00 RECORD {json.dumps(line)}\n")
    waiting = sensor(inventory, run_id="", settings_path=str(settings), log_dir=str(logs))
    with pytest.raises(AirflowFailException, match="the cluster went away during the copy"):
        waiting.poke({})


def test_waits_in_the_triggerer_when_the_run_defers_and_judges_alike(
    inventory: str, cutover_db: PostgresService
) -> None:
    waiting = sensor(inventory)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute({"params": {"defer_waits": True}})
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "pgha.triggers.airflow.CutoverOutcomeTrigger" and kwargs["run_id"] == RUN
    record(cutover_db, "lb", "primary", "rolled_back", "no scheduler heartbeat in the new database")
    trigger = deferred.value.trigger.__class__(**kwargs)
    problems, value = asyncio.run(trigger.acheck())  # the check in a thread, as the triggerer runs it
    assert problems == [] and value["outcome"] == "rolled_back"
    with pytest.raises(AirflowFailException, match="no scheduler heartbeat in the new database"):
        waiting.execute_complete({}, {"status": "success", "value": value})


def test_agents_that_never_began_fail_the_task_saying_nothing_changed(inventory: str,
                                                                      cutover_db: PostgresService) -> None:
    for host, role in (("lb", "primary"), ("wk", "follower")):
        record(cutover_db, host, role, "not_started",
               "task cutover of pg_ha_migration run manual__1 ended failed: nothing was changed")
    with pytest.raises(AirflowFailException, match=r"not_started: lb \(primary\): not_started: task cutover .* "
                                                   r"ended failed: nothing was changed"):
        sensor(inventory).poke({})


def test_a_stuck_follower_fails_the_task_naming_the_host(inventory: str, cutover_db: PostgresService) -> None:
    """The primary committed; vm4's follower could not reach the cluster and keeps its units stopped."""
    record(cutover_db, "lb", "primary", "success", "2 tables, 550 rows verified")
    record(cutover_db, "wk", "follower", "stuck",
           "the source host committed, but this host could not follow: airflow db check still failing after "
           "180 tries: connection timed out")
    mark_live(cutover_db)
    with pytest.raises(AirflowFailException, match=r"stuck: wk \(follower\): stuck: .*db check still failing"):
        sensor(inventory).poke({})
