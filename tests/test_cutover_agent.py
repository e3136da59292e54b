"""The cutover agent's steps and rollback against two real loopback PostgreSQL instances.

The source and the cluster are real servers; the data path (drain, copy,
catch-up, sequences, verify, mark, record) runs for real. Only this host's
Airflow units (systemctl, ``airflow db check``) are a recording stand-in.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fixture_secrets import POSTGRES_PASSWORD
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
from services import PostgresService

from pgha import cutover, pgdata
from pgha.cutover import RESUME_UNIT, Agent
from pgha.render import render

OLD_CFG = "[database]\nsql_alchemy_conn = postgresql://airflow_user:x@127.0.0.1:5432/airflow_db\n"
NEW_CFG = "[database]\nsql_alchemy_conn = postgresql://airflow_user:x@127.0.0.1:5433/airflow_db\n"


@pytest.fixture(scope="module")
def cluster(cluster: PostgresService) -> PostgresService:
    """pg_pair's cluster, with the Airflow owner role every agent run logs in as."""
    ensure_owner(cluster)
    return cluster


class RecordingUnits:
    """This host's Airflow units: records what the agent asks; ``db_check`` can be made to fail (always,
    or its first ``db_check_failures`` tries). The resume unit's systemctl calls go to ``resume_calls``."""

    runs_scheduler = False

    def __init__(self, db_check_error: str | None = None, stop_error: str | None = None,
                 db_check_failures: int | None = None, task_states: list[str | Exception] | None = None) -> None:
        self.calls: list[str] = []
        self.task_states = list(task_states or ["success"])  # what Airflow answers, in turn; the last repeats
        self.task_asked: list[dict[str, str]] = []
        self.resume_calls: list[str] = []
        self.resume_unit_text: str | None = None
        self.db_check_error = db_check_error
        self.db_check_failures = db_check_failures
        self.stop_error = stop_error
        self.no_block = False
        self.unit_dir: Path | None = None

    @property
    def names(self) -> list[str]:
        return ["airflow-api-server"]

    def task_state(self, task: dict[str, str]) -> str:
        self.task_asked.append(task)
        answer = self.task_states.pop(0) if len(self.task_states) > 1 else self.task_states[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def enable_resume(self, unit: str) -> None:
        self.resume_calls.append(f"enable {unit}")
        if self.unit_dir:
            self.resume_unit_text = (self.unit_dir / unit).read_text()

    def disable_resume(self, unit: str) -> None:
        self.resume_calls.append(f"disable {unit}")

    def daemon_reload(self) -> None:
        self.resume_calls.append("daemon-reload")

    def stop(self) -> None:
        self.calls.append("stop")
        if self.stop_error:
            raise RuntimeError(self.stop_error)

    def start(self) -> None:
        self.calls.append("start")

    def restart(self) -> None:
        self.calls.append("restart")

    def check_active(self) -> None:
        self.calls.append("check_active")

    def db_check(self) -> None:
        self.calls.append("db_check")
        if self.db_check_failures is not None:
            if self.calls.count("db_check") <= self.db_check_failures:
                raise RuntimeError("connection to 127.0.0.1:5433 timed out")
        elif self.db_check_error:
            raise RuntimeError(self.db_check_error)


def settings(tmp_path: Path, source: PostgresService, cluster: PostgresService, **extra: Any) -> dict[str, Any]:
    config, staged = tmp_path / "airflow.cfg", tmp_path / "airflow.cfg.pgha-new"
    config.write_text(OLD_CFG)
    staged.write_text(NEW_CFG)
    pgpass = write_pgpass(tmp_path / "cutover.pgpass", superuser(cluster), owner(source))
    (tmp_path / "systemd").mkdir(exist_ok=True)
    return {
        "role": "primary", "run_id": f"pgha-cutover-test-{tmp_path.name}", "method": "dump_restore",
        "database": DATABASE, "owner": OWNER, "log_dir": str(tmp_path / "log"), "pgpass": pgpass,
        "cluster": {"host": cluster.host, "port": cluster.port, "user": cluster.user},
        "source": {"host": source.host, "port": source.port, "user": OWNER},
        "bin_dir": BIN_DIR, "units": ["airflow-api-server"], "config": str(config), "staged": str(staged),
        "backup_dir": str(tmp_path / "backup"),
        "settle_seconds": 0, "drain_timeout": 10, "catch_up_timeout": 30, "task_poll_seconds": 0.01,
        "task": {"dag_id": "pg_ha_migration", "task_id": "cutover", "run_id": "manual__2026-12-04T10:00:00+00:00"},
        "state_file": str(tmp_path / "state" / "cutover-state.json"), "unit_dir": str(tmp_path / "systemd"),
        "resume_unit": render("pgha-cutover-resume.service.j2", python="/opt/airflow/bin/python",
                              module="pgha.cutover", settings="/etc/pgha/cutover.json",
                              units=["airflow-api-server.service"]),
        **extra,
    }


def source_fingerprints(source: PostgresService) -> dict[str, str]:
    with pgdata.session(owner(source)) as conn:
        return pgdata.as_text(pgdata.fingerprints(conn))


def latest_record(cluster: PostgresService, run_id: str) -> dict[str, Any]:
    rows = sql(superuser(cluster), "SELECT outcome, record FROM pgha_cutover_log WHERE run_id = %s ORDER BY id",
               params=(run_id,))
    assert len(rows) == 1, rows
    return {"outcome": rows[0][0], **rows[0][1]}


def cluster_comment(cluster: PostgresService) -> str | None:
    with pgdata.session(superuser(cluster)) as conn:
        return pgdata.database_comment(conn, DATABASE)


def test_dump_restore_moves_identical_data_and_repoints(tmp_path: Path, source: PostgresService,
                                                        cluster: PostgresService) -> None:
    fill_source(source)
    before = source_fingerprints(source)
    units = RecordingUnits()
    s = settings(tmp_path, source, cluster)
    assert Agent(s, units=units).run() == 0

    record = latest_record(cluster, s["run_id"])
    assert record["outcome"] == "success", record
    assert [st["step"] for st in record["steps"]] == ["await_task", "arm_resume", "stop", "drain", "copy", "verify",
                                                      "repoint", "db_check", "mark", "start", "healthy"]
    assert record["result"]["fingerprints"] == before == source_fingerprints(source)
    with pgdata.session(superuser(cluster, DATABASE)) as conn:
        assert pgdata.as_text(pgdata.fingerprints(conn)) == before
    assert (cluster_comment(cluster) or "").startswith(f"{pgdata.LIVE_MARK} since ")
    assert Path(s["config"]).read_text() == NEW_CFG and not Path(s["staged"]).exists()
    backups = list((tmp_path / "backup").glob("airflow.cfg.pgha-bak-*"))
    assert [p.read_text() for p in backups] == [OLD_CFG] and oct(backups[0].stat().st_mode & 0o777) == "0o600"
    assert units.calls == ["stop", "db_check", "start", "check_active"]
    log = (Path(s["log_dir"]) / f"cutover-{s['run_id']}.log").read_text()
    assert "pg_dump" in log and "step verify: ok" in log and POSTGRES_PASSWORD not in log


def test_a_changed_row_fails_verify_and_rolls_back(tmp_path: Path, source: PostgresService,
                                                   cluster: PostgresService) -> None:
    fill_source(source)
    before = source_fingerprints(source)
    units = RecordingUnits()
    s = settings(tmp_path, source, cluster)
    agent = Agent(s, units=units)
    copy = agent.copy

    def copy_then_drift() -> None:  # a row that differs on the cluster after the copy
        copy()
        sql(superuser(cluster, DATABASE), "UPDATE dag_run SET conf = '{\"n\": -1}' WHERE id = 7")

    agent.copy = copy_then_drift  # type: ignore[method-assign]
    assert agent.run() == 1

    record = latest_record(cluster, s["run_id"])
    assert record["outcome"] == "rolled_back"
    assert "public.dag_run: source 500 rows vs cluster 500 rows, checksums differ" in record["detail"]
    failed = [st["step"] for st in record["steps"] if not st["ok"]]
    assert failed == ["verify"]
    assert record["steps"][-1]["step"] == "start_old" and record["steps"][-1]["ok"]
    assert Path(s["config"]).read_text() == OLD_CFG, "the live config is untouched"
    assert Path(s["staged"]).read_text() == NEW_CFG, "the staged config is not swapped in"
    assert cluster_comment(cluster) is None, "no live mark"
    assert source_fingerprints(source) == before, "the source is untouched"
    assert units.calls == ["stop", "restart"]


def test_a_failed_db_check_restores_the_config_and_clears_the_mark(tmp_path: Path, source: PostgresService,
                                                                    cluster: PostgresService) -> None:
    fill_source(source)
    with pgdata.session(superuser(cluster)) as conn:  # a mark a failed earlier run could have left
        pgdata.mark_live(conn, DATABASE, "earlier")
    units = RecordingUnits(db_check_error="login failed for airflow_user")
    s = settings(tmp_path, source, cluster)
    assert Agent(s, units=units).run() == 1
    record = latest_record(cluster, s["run_id"])
    assert [st["step"] for st in record["steps"] if not st["ok"]] == ["db_check"]
    assert Path(s["config"]).read_text() == OLD_CFG
    assert cluster_comment(cluster) is None
    assert units.calls == ["stop", "db_check", "restart"]


def test_a_unit_that_would_not_stop_is_restarted_on_the_source_and_recorded(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    fill_source(source)
    units = RecordingUnits(stop_error="Failed to stop airflow-api-server.service: Unit not loaded")
    s = settings(tmp_path, source, cluster)
    assert Agent(s, units=units).run() == 1
    record = latest_record(cluster, s["run_id"])
    assert record["outcome"] == "rolled_back" and "Unit not loaded" in record["detail"]
    assert units.calls == ["stop", "restart"] and Path(s["config"]).read_text() == OLD_CFG


def test_the_agent_removes_its_passwords_file_whatever_the_outcome(tmp_path: Path, source: PostgresService,
                                                                   cluster: PostgresService,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, source, cluster)
    settings_file = tmp_path / "cutover.json"
    settings_file.write_text(json.dumps(s))
    monkeypatch.setattr(cutover, "Agent", lambda settings, **kw: type("Failing", (), {"run": lambda self: 1})())
    assert cutover.main([str(settings_file)]) == 1
    assert not Path(s["pgpass"]).exists()


def test_the_passwords_file_stays_while_a_resume_may_need_it(tmp_path: Path, source: PostgresService,
                                                             cluster: PostgresService,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, source, cluster)
    settings_file = tmp_path / "cutover.json"
    settings_file.write_text(json.dumps(s))
    Path(s["state_file"]).parent.mkdir(mode=0o700)
    Path(s["state_file"]).write_text("{}")  # the host went down mid-cutover: unfinished
    monkeypatch.setattr(cutover, "Agent", lambda settings, **kw: type("Crashed", (), {"run": lambda self: 1})())
    assert cutover.main([str(settings_file)]) == 1
    assert Path(s["pgpass"]).exists()


def test_drain_waits_for_airflow_sessions_then_gives_up(tmp_path: Path, source: PostgresService,
                                                        cluster: PostgresService) -> None:
    fill_source(source)
    s = settings(tmp_path, source, cluster, drain_timeout=1)
    with pgdata.session(owner(source)):  # an Airflow component that did not stop
        assert Agent(s, units=RecordingUnits()).run() == 1
    record = latest_record(cluster, s["run_id"])
    assert [st["step"] for st in record["steps"] if not st["ok"]] == ["drain"]
    assert "1 Airflow sessions still open on the source" in record["detail"]


def test_a_follower_repoints_after_the_primary_succeeded(tmp_path: Path, source: PostgresService,
                                                         cluster: PostgresService) -> None:
    s = settings(tmp_path, source, cluster, role="follower", follower_timeout=10)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.record_cutover(conn, s["run_id"], "vm1", "primary", "success", json.dumps({}))
    units = RecordingUnits()
    assert Agent(s, units=units).run() == 0
    assert Path(s["config"]).read_text() == NEW_CFG
    assert units.calls == ["stop", "db_check", "start", "check_active"]


def test_logical_method_catches_up_and_syncs_sequences(tmp_path: Path, source: PostgresService,
                                                       cluster: PostgresService) -> None:
    restart_with(source, wal_level="logical")
    fill_source(source)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    pgpass = write_pgpass(tmp_path / "copy.pgpass", owner(source), superuser(cluster, DATABASE))
    schema = pgdata.dump_restore_command(owner(source), superuser(cluster, DATABASE), bin_dir=BIN_DIR, owner=OWNER,
                                         passfile=pgpass, schema_only=True)
    pgdata.run_pipeline(schema, timeout=60)
    with pgdata.session(superuser(source, DATABASE)) as conn:
        pgdata.ensure_publication(conn)
    with pgdata.session(superuser(cluster, DATABASE)) as conn:
        pgdata.create_subscription(conn, superuser(source, DATABASE))

        deadline = time.monotonic() + 30
        while pgdata.initial_sync_state(conn) != (0, 2):
            assert time.monotonic() < deadline, pgdata.initial_sync_state(conn)
            time.sleep(0.2)
    # Airflow keeps writing until the stop: rows and sequence values the initial copy did not see
    sql(owner(source), "INSERT INTO dag_run (dag_id, run_id) SELECT 'late', 'late_' || g FROM generate_series(1, 30) g",
        "SELECT nextval('log_id_seq') FROM generate_series(1, 25)")
    s = settings(tmp_path, source, cluster, method="logical_replication")
    assert Agent(s, units=RecordingUnits()).run() == 0

    record = latest_record(cluster, s["run_id"])
    steps = [st["step"] for st in record["steps"]]
    assert "catch_up" in steps and "sync_sequences" in steps and "copy" not in steps
    assert record["result"]["fingerprints"] == source_fingerprints(source)
    assert record["result"]["rows"] == 580
    seq = "SELECT last_value FROM log_id_seq"
    assert sql(superuser(cluster, DATABASE), seq) == sql(owner(source), seq) == [(75,)]
    assert sql(superuser(cluster, DATABASE), "SELECT count(*) FROM pg_subscription") == [(0,)]
    assert sql(superuser(source), "SELECT count(*) FROM pg_replication_slots") == [(0,)], "the slot went with it"


def test_run_pipeline_leaves_no_process_when_interrupted(tmp_path: Path, source: PostgresService,
                                                         cluster: PostgresService) -> None:
    fill_source(source)
    add_bulk(source, 100_000)
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    pgpass = write_pgpass(tmp_path / "copy.pgpass", owner(source), superuser(cluster, DATABASE))
    command = pgdata.dump_restore_command(owner(source), superuser(cluster, DATABASE), bin_dir=BIN_DIR, owner=OWNER,
                                          passfile=pgpass)
    # a lock pg_dump must wait for holds the pipeline open, however fast this machine copies 100 000 rows
    with pgdata.session(owner(source)) as holder:
        holder.autocommit = False
        holder.cursor().execute("LOCK TABLE bulk IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(subprocess.TimeoutExpired):
            pgdata.run_pipeline(command, timeout=1.0)
        holder.rollback()
    assert pipelines_of(pgpass) == []


def pipelines_of(marker: str) -> list[str]:
    """pg_dump/pg_restore processes whose environment or command line names ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ("pg_dump" in cmdline or "pg_restore" in cmdline) and (marker in environ or marker in cmdline):
            found.append(cmdline)
    return found


def test_db_check_runs_with_the_environment_of_the_running_unit(tmp_path: Path) -> None:
    """`db check` must test what the units will use: their own environment, read before the stop."""
    import subprocess

    from pgha.cutover import AirflowUnits

    unit_process = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin", "PGHA_UNIT_ONLY": "a b%c",
                                                          "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    # until the child has exec'd, /proc/<pid>/environ is still this process's (seen under load)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{unit_process.pid}/cmdline").read_bytes().startswith(b"sleep") \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    seen, fake_airflow = tmp_path / "env", tmp_path / "airflow"
    fake_airflow.write_text(f"#!/bin/sh\nenv > {seen}\n")
    fake_airflow.chmod(0o755)

    class UnitsOfThisTest(AirflowUnits):
        def main_pid(self, unit: str) -> int:
            return unit_process.pid

    try:
        units = UnitsOfThisTest({"units": ["airflow-scheduler"], "config": str(tmp_path / "airflow.cfg"),
                                 "airflow_user": "root", "airflow_bin": str(fake_airflow)}, log=print)
        units.environment = units.units_environment()
        units.db_check()
    finally:
        unit_process.kill()
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines())
    assert env["PGHA_UNIT_ONLY"] == "a b%c" and env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW_HOME"] == str(tmp_path)


# ------------------------------------------------------------------ the arming task's success starts it


def test_the_agent_begins_once_airflow_records_the_arming_task_a_success(tmp_path: Path, source: PostgresService,
                                                                        cluster: PostgresService) -> None:
    """The arming task may be slow to report (or its worker is on this host): nothing stops before it is done."""
    fill_source(source)
    units = RecordingUnits(task_states=["running", RuntimeError("airflow: database is locked"), "running", "success"])
    s = settings(tmp_path, source, cluster)
    assert Agent(s, units=units).run() == 0
    assert units.task_asked == [s["task"]] * 4 and units.calls[0] == "stop"
    log = (Path(s["log_dir"]) / f"cutover-{s['run_id']}.log").read_text()
    shown = "task cutover of pg_ha_migration run manual__2026-12-04T10:00:00+00:00"
    assert f"{shown}: running\n" in log and f"{shown}: unknown (airflow: database is locked)" in log
    assert log.index(f"{shown}: success") < log.index("step stop: begin")


@pytest.mark.parametrize(("role", "states", "why"), [
    ("primary", ["running", "failed"], "ended failed: nothing was changed"),
    ("follower", ["running", "failed"], "ended failed: nothing was changed"),
    ("follower", ["up_for_retry", "upstream_failed"], "ended upstream_failed: nothing was changed"),
    ("primary", ["running"], "not a success after 0.05s (last seen: running): nothing was changed"),
])
def test_an_arming_task_that_is_not_a_success_leaves_everything_as_it_was(
        tmp_path: Path, source: PostgresService, cluster: PostgresService, role: str, states: list[str],
        why: str) -> None:
    units = RecordingUnits(task_states=list(states))
    s = settings(tmp_path, source, cluster, role=role, task_timeout=0.05)
    mark = cluster_comment(cluster)
    assert Agent(s, units=units).run() == 1
    record = record_of(cluster, s["run_id"], role)
    assert record["outcome"] == "not_started" and record["detail"].endswith(why), record
    assert [st["step"] for st in record["steps"]] == ["await_task"]
    assert units.calls == [] and units.resume_calls == [], "no unit stopped, no resume armed"
    assert Path(s["config"]).read_text() == OLD_CFG and Path(s["staged"]).read_text() == NEW_CFG
    assert not Path(s["state_file"]).exists() and cluster_comment(cluster) == mark


@pytest.mark.parametrize("primary", ["success", "not_started"])
def test_a_follower_that_cannot_confirm_the_task_follows_the_primary(
        tmp_path: Path, source: PostgresService, cluster: PostgresService, primary: str) -> None:
    """Its Airflow cannot say: it must not stay behind on its own config while the primary moves on."""
    s = settings(tmp_path, source, cluster, role="follower", task_timeout=0.05, follower_timeout=10)
    primary_recorded(cluster, s["run_id"], primary)
    units = RecordingUnits(task_states=[RuntimeError("airflow: cannot connect to the metadata database")])
    assert Agent(s, units=units).run() == (0 if primary == "success" else 1)
    record = record_of(cluster, s["run_id"], "follower")
    assert record["outcome"] == ("success" if primary == "success" else "rolled_back"), record
    assert units.calls == (["stop", "db_check", "start", "check_active"] if primary == "success"
                           else ["stop", "restart"])
    log = (Path(s["log_dir"]) / f"cutover-{s['run_id']}.log").read_text()
    assert "not a success after 0.05s (last seen: unknown (airflow: cannot connect to the metadata database)): " \
           "following the source host's decision instead" in log


# ------------------------------------------------------------------ followers: forward only; crash safety


def record_of(cluster: PostgresService, run_id: str, role: str) -> dict[str, Any]:
    rows = sql(superuser(cluster), "SELECT outcome, record FROM pgha_cutover_log WHERE run_id = %s AND role = %s "
               "ORDER BY id", params=(run_id, role))
    assert rows, f"no {role} record"
    return {"outcome": rows[-1][0], **rows[-1][1]}


def primary_recorded(cluster: PostgresService, run_id: str, outcome: str) -> None:
    with pgdata.session(superuser(cluster)) as conn:
        pgdata.record_cutover(conn, run_id, "vm1", "primary", outcome, json.dumps({}))


def follower(tmp_path: Path, source: PostgresService, cluster: PostgresService, **extra: Any) -> dict[str, Any]:
    return settings(tmp_path, source, cluster, **{"role": "follower", "follower_timeout": 10,
                                                  "follower_retry_seconds": 0.1, **extra})


def assert_disarmed(s: dict[str, Any], units: RecordingUnits) -> None:
    """The cutover is over on the host: no state file, the resume unit disabled and its file gone."""
    assert not Path(s["state_file"]).exists()
    assert not (Path(s["unit_dir"]) / RESUME_UNIT).exists()
    assert units.resume_calls[-2:] == [f"disable {RESUME_UNIT}", "daemon-reload"]


def test_a_follower_keeps_checking_the_cluster_after_the_primary_committed(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    """vm4's `db check` through HAProxy timed out while vm1 had committed: it waits, it never goes back."""
    s = follower(tmp_path, source, cluster)
    primary_recorded(cluster, s["run_id"], "success")
    units = RecordingUnits(db_check_failures=3)
    units.unit_dir = Path(s["unit_dir"])
    assert Agent(s, units=units).run() == 0
    assert record_of(cluster, s["run_id"], "follower")["outcome"] == "success"
    assert units.calls == ["stop", "db_check", "db_check", "db_check", "db_check", "start", "check_active"]
    assert Path(s["config"]).read_text() == NEW_CFG
    assert units.resume_calls[0] == f"enable {RESUME_UNIT}"
    unit = units.resume_unit_text or ""
    assert "Before=airflow-api-server.service" in unit and "Type=oneshot" in unit
    assert "ExecStart=/opt/airflow/bin/python -m pgha.cutover --resume /etc/pgha/cutover.json" in unit
    assert_disarmed(s, units)


def test_a_follower_that_cannot_reach_the_cluster_is_stuck_never_rolled_back(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    s = follower(tmp_path, source, cluster, follower_forward_timeout=0.5)
    primary_recorded(cluster, s["run_id"], "success")
    units = RecordingUnits(db_check_error="connection to 127.0.0.1:5433 timed out")
    assert Agent(s, units=units).run() == 1
    record = record_of(cluster, s["run_id"], "follower")
    assert record["outcome"] == "stuck" and "airflow db check still failing" in record["detail"]
    assert Path(s["config"]).read_text() == NEW_CFG, "never back onto the source once the primary committed"
    assert "start" not in units.calls and "restart" not in units.calls
    assert_disarmed(s, units)


def test_a_follower_rolls_back_when_the_primary_did(tmp_path: Path, source: PostgresService,
                                                    cluster: PostgresService) -> None:
    s = follower(tmp_path, source, cluster)
    primary_recorded(cluster, s["run_id"], "rolled_back")
    units = RecordingUnits()
    assert Agent(s, units=units).run() == 1
    assert record_of(cluster, s["run_id"], "follower")["outcome"] == "rolled_back"
    assert units.calls == ["stop", "restart"] and Path(s["config"]).read_text() == OLD_CFG
    assert_disarmed(s, units)


def crash_after_stop(s: dict[str, Any], *, repointed: bool = False) -> None:
    """The agent's steps up to the stop (and the repoint), then the host goes down."""
    agent = Agent(s, units=RecordingUnits(), settings_path="/etc/pgha/cutover.json")
    agent.arm_resume()
    agent.units.stop()
    agent.save_state("waiting")
    if repointed:
        agent.repoint()
        agent.save_state("repointed")
    state = json.loads(Path(s["state_file"]).read_text())
    assert state["run_id"] == s["run_id"] and state["role"] == s["role"] and state["phase"] in ("waiting", "repointed")
    assert oct(Path(s["state_file"]).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("repointed", [False, True])
def test_a_follower_restarted_mid_cutover_completes_forward(tmp_path: Path, source: PostgresService,
                                                            cluster: PostgresService, repointed: bool) -> None:
    s = follower(tmp_path, source, cluster)
    crash_after_stop(s, repointed=repointed)
    primary_recorded(cluster, s["run_id"], "success")
    units = RecordingUnits(db_check_failures=1)
    assert Agent(s, units=units, resuming=True).resume() == 0
    assert units.no_block, "ordered before the units: a blocking start would wait for itself"
    assert units.calls == ["db_check", "db_check", "start"]
    assert Path(s["config"]).read_text() == NEW_CFG
    assert record_of(cluster, s["run_id"], "follower")["outcome"] == "success"
    assert_disarmed(s, units)


@pytest.mark.parametrize("repointed", [False, True])
def test_a_follower_restarted_mid_cutover_goes_back_when_the_primary_did(
        tmp_path: Path, source: PostgresService, cluster: PostgresService, repointed: bool) -> None:
    s = follower(tmp_path, source, cluster)
    crash_after_stop(s, repointed=repointed)
    primary_recorded(cluster, s["run_id"], "rolled_back")
    units = RecordingUnits()
    assert Agent(s, units=units, resuming=True).resume() == 1
    assert units.calls == ["restart"]
    assert Path(s["config"]).read_text() == OLD_CFG, "the old config back from the backup the state file names"
    assert record_of(cluster, s["run_id"], "follower")["outcome"] == "rolled_back"
    assert_disarmed(s, units)


def test_a_primary_restarted_mid_copy_rolls_back_everyone(tmp_path: Path, source: PostgresService,
                                                          cluster: PostgresService) -> None:
    fill_source(source)
    s = settings(tmp_path, source, cluster)
    agent = Agent(s, units=RecordingUnits(), settings_path="/etc/pgha/cutover.json")
    agent.arm_resume()
    agent.units.stop()
    agent.save_state("copying")
    units = RecordingUnits()
    assert Agent(s, units=units, resuming=True).resume() == 1
    record = latest_record(cluster, s["run_id"])
    assert record["outcome"] == "rolled_back" and "restarted during the cutover (phase copying)" in record["detail"]
    assert units.calls == ["restart"] and Path(s["config"]).read_text() == OLD_CFG
    assert cluster_comment(cluster) is None
    assert_disarmed(s, units)


def test_a_primary_restarted_after_its_success_keeps_it(tmp_path: Path, source: PostgresService,
                                                        cluster: PostgresService) -> None:
    """Committed, then down before the cleanup: the resume neither rolls back nor copies again."""
    fill_source(source)
    s = settings(tmp_path, source, cluster)
    agent = Agent(s, units=RecordingUnits())
    agent.disarm_resume = lambda: None  # type: ignore[method-assign]  # the host went down before it
    assert agent.run() == 0
    assert Path(s["state_file"]).exists()
    units = RecordingUnits()
    assert Agent(s, units=units, resuming=True).resume() == 0
    assert units.calls == [] and Path(s["config"]).read_text() == NEW_CFG
    assert latest_record(cluster, s["run_id"])["outcome"] == "success"
    assert_disarmed(s, units)


def test_the_primary_disarms_after_success_and_rollback(tmp_path: Path, source: PostgresService,
                                                        cluster: PostgresService) -> None:
    fill_source(source)
    units = RecordingUnits()
    s = settings(tmp_path, source, cluster)
    assert Agent(s, units=units).run() == 0
    assert_disarmed(s, units)
    units = RecordingUnits(db_check_error="login failed")
    (tmp_path / "again").mkdir()
    s = settings(tmp_path / "again", source, cluster)
    assert Agent(s, units=units).run() == 1
    assert_disarmed(s, units)


def test_a_resume_with_nothing_unfinished_only_removes_itself(tmp_path: Path, source: PostgresService,
                                                              cluster: PostgresService) -> None:
    s = follower(tmp_path, source, cluster)
    (Path(s["unit_dir"]) / RESUME_UNIT).write_text("[Unit]\n")
    units = RecordingUnits()
    assert Agent(s, units=units, resuming=True).resume() == 0
    assert units.calls == []
    assert_disarmed(s, units)


def test_a_follower_without_the_primarys_outcome_stays_stopped(tmp_path: Path, source: PostgresService,
                                                               cluster: PostgresService) -> None:
    """Only the primary decides a rollback: without its outcome the follower neither moves nor goes back."""
    s = follower(tmp_path, source, cluster, follower_timeout=1)
    units = RecordingUnits()
    assert Agent(s, units=units).run() == 1
    record = record_of(cluster, s["run_id"], "follower")
    assert record["outcome"] == "stuck" and "no outcome from the source host's cutover agent" in record["detail"]
    assert units.calls == ["stop"] and Path(s["config"]).read_text() == OLD_CFG
    assert_disarmed(s, units)


PROBE_DAG = """
import datetime as dt

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

with DAG(dag_id="pgha_arming_probe", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    EmptyOperator(task_id="cutover")

    @task
    def move(host):  # mapped over the Airflow hosts, as move_airflow_onto_pgbouncer is
        return host

    move.expand(host=["vm1", "vm4"])
"""


def test_the_task_state_comes_from_the_hosts_own_airflow_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`airflow tasks state`, run as the agent runs it (runuser, the units' environment), against a real
    metadata database in which a DAG run has just recorded its task a success."""
    import os
    import sys

    from drill_lab import airflow_metadata_db
    from pgha_testing import AIRFLOW_RELEASE, DagBag

    from pgha.cutover import AirflowUnits

    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "pgha_arming_probe.py").write_text(PROBE_DAG)
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
        {"name": "arming-probe", "classpath": local, "kwargs": {"path": str(tmp_path / "dags")}}]))
    airflow_metadata_db()
    dag = DagBag(dag_folder=str(tmp_path / "dags")).dags["pgha_arming_probe"]
    run = dag.test()
    if AIRFLOW_RELEASE < (3, 1):  # 3.0's `tasks state` reads the DAG the DAG processor serialized; dag.test() did not
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "reserialize"], check=True,
                       capture_output=True)
    home = os.environ["AIRFLOW_HOME"]
    units = AirflowUnits({"units": ["airflow-scheduler"], "config": f"{home}/airflow.cfg", "airflow_user": "root",
                          "airflow_bin": str(Path(sys.executable).parent / "airflow")}, log=print)
    units.environment = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")}
    task = {"dag_id": "pgha_arming_probe", "task_id": "cutover", "run_id": run.run_id}
    assert units.task_state(task) == "success"
    assert units.task_state({**task, "task_id": "move", "map_index": 1}) == "success"
    with pytest.raises(RuntimeError, match="tasks state pgha_arming_probe cutover no-such-run failed"):
        units.task_state({**task, "run_id": "no-such-run"})


# ------------------------------------------------------------------ role pooler: Airflow onto its PgBouncer


def pooler(tmp_path: Path, source: PostgresService, cluster: PostgresService, **extra: Any) -> dict[str, Any]:
    """A move onto PgBouncer: its "cluster" is the database as Airflow reaches it through PgBouncer (here the
    cluster server itself), its record stays in its log, its state file and resume unit are its own."""
    s = settings(tmp_path, source, cluster, **extra)
    s.update(role="pooler", run_id=f"pgha-pgbouncer-move-{tmp_path.name}", record="log", log_prefix="",
             state_file=str(tmp_path / "state" / "pgbouncer-move-state.json"),
             resume_unit_name="pgha-pgbouncer-move-resume.service",
             task={**s["task"], "task_id": "pgbouncer.move_airflow_onto_pgbouncer", "map_index": 0})
    for key in ("source", "method", "bin_dir"):
        s.pop(key)
    return s


def records_in_log(s: dict[str, Any]) -> list[dict[str, Any]]:
    text = (Path(s["log_dir"]) / f"{s['run_id']}.log").read_text()
    return [json.loads(line.split(" RECORD ", 1)[1]) for line in text.splitlines() if " RECORD " in line]


def assert_pooler_disarmed(s: dict[str, Any], units: RecordingUnits) -> None:
    assert not Path(s["state_file"]).exists()
    assert not (Path(s["unit_dir"]) / s["resume_unit_name"]).exists()
    assert units.resume_calls == [f"enable {s['resume_unit_name']}", f"disable {s['resume_unit_name']}",
                                  "daemon-reload"]


def test_the_pooler_move_restarts_airflow_on_the_staged_config_and_records_in_its_log_only(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    s = pooler(tmp_path, source, cluster)
    units = RecordingUnits()
    assert Agent(s, units=units).run() == 0
    assert units.task_asked == [s["task"]], "it waited for its own mapped task instance"
    assert units.calls == ["stop", "db_check", "start", "check_active"]
    assert Path(s["config"]).read_text() == NEW_CFG and not Path(s["staged"]).exists()
    backups = list(Path(s["backup_dir"]).iterdir())
    assert [b.read_text() for b in backups] == [OLD_CFG]
    [record] = records_in_log(s)
    assert record["outcome"] == "success" and record["role"] == "pooler"
    assert [st["step"] for st in record["steps"]] == ["await_task", "arm_resume", "stop", "repoint", "db_check",
                                                       "start", "healthy"]
    with pgdata.session(superuser(cluster)) as conn:  # nothing written to a server: no cluster exists yet
        assert pgdata.cutover_records(conn, s["run_id"]) == []
    assert_pooler_disarmed(s, units)


def test_a_pooler_move_whose_db_check_fails_puts_the_config_back_and_restarts(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    s = pooler(tmp_path, source, cluster)
    units = RecordingUnits(db_check_error="FATAL:  password authentication failed (PgBouncer)")
    assert Agent(s, units=units).run() == 1
    assert units.calls == ["stop", "db_check", "restart"]
    assert Path(s["config"]).read_text() == OLD_CFG
    [record] = records_in_log(s)
    assert record["outcome"] == "rolled_back" and "password authentication failed" in record["detail"]
    assert_pooler_disarmed(s, units)


def test_a_pooler_move_begins_only_once_every_mapped_move_succeeded(tmp_path: Path, source: PostgresService,
                                                                    cluster: PostgresService) -> None:
    """Its host's restart would cut a sibling move task still running in the same scheduler."""
    s = pooler(tmp_path, source, cluster)
    s["task"]["map_indexes"] = [0, 1]
    units = RecordingUnits(task_states=["success", "running", "success", "success"])
    assert Agent(s, units=units).run() == 0
    assert [t["map_index"] for t in units.task_asked] == [0, 1, 0, 1]
    units = RecordingUnits(task_states=["success", "failed"])
    (tmp_path / "again").mkdir()
    s = pooler(tmp_path / "again", source, cluster)
    s["task"]["map_indexes"] = [0, 1]
    assert Agent(s, units=units).run() == 1
    assert units.calls == [] and records_in_log(s)[-1]["outcome"] == "not_started"


def test_a_pooler_move_that_was_not_a_success_changes_nothing(tmp_path: Path, source: PostgresService,
                                                              cluster: PostgresService) -> None:
    s = pooler(tmp_path, source, cluster)
    units = RecordingUnits(task_states=["running", "failed"])
    assert Agent(s, units=units).run() == 1
    assert units.calls == [] and Path(s["config"]).read_text() == OLD_CFG
    assert records_in_log(s)[-1]["outcome"] == "not_started"


def test_the_pooler_agent_removes_its_own_secrets_and_never_a_cutovers(tmp_path: Path, source: PostgresService,
                                                                       cluster: PostgresService,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    s = pooler(tmp_path, source, cluster)
    settings_file = tmp_path / "pgbouncer-move.json"
    settings_file.write_text(json.dumps(s))
    cutover_key = tmp_path / "cutover-client.key"
    cutover_key.write_text("key")
    monkeypatch.setattr(cutover, "CLIENT_KEY", str(cutover_key))
    monkeypatch.setattr(cutover, "Agent", lambda settings, **kw: type("NotStarted", (), {"run": lambda self: 1})())
    assert cutover.main([str(settings_file)]) == 1
    assert not Path(s["pgpass"]).exists() and not Path(s["staged"]).exists(), "the staged config holds a password"
    assert cutover_key.exists()


def test_a_host_restarted_mid_pooler_move_comes_back_on_the_previous_config(
        tmp_path: Path, source: PostgresService, cluster: PostgresService) -> None:
    s = pooler(tmp_path, source, cluster)
    crash_after_stop(s, repointed=True)
    assert Path(s["config"]).read_text() == NEW_CFG
    units = RecordingUnits()
    assert Agent(s, units=units, resuming=True).resume() == 1
    assert units.calls == ["restart"] and Path(s["config"]).read_text() == OLD_CFG
    record = records_in_log(s)[-1]
    assert record["outcome"] == "rolled_back" and "restarted during the move onto PgBouncer" in record["detail"]
    assert not Path(s["state_file"]).exists()
