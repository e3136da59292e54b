"""AirflowOnPgBouncerSensor over a real loopback sshd: it reads the agent's settings and log on the host, as
the agent (pgha.cutover, role pooler) leaves them, and the host's airflow.cfg."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pgha.compat import AirflowFailException, AirflowSkipException
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from services import SshdService

from pgha.sensors.pgbouncer import AirflowOnPgBouncerSensor

RUN = "pgha-pgbouncer-move-1780000000"
STEPS = [{"step": "await_task", "ok": True, "seconds": 4.1}, {"step": "stop", "ok": True, "seconds": 7.9},
         {"step": "repoint", "ok": True, "seconds": 0.01}, {"step": "db_check", "ok": True, "seconds": 3.6},
         {"step": "start", "ok": True, "seconds": 0.4}, {"step": "healthy", "ok": True, "seconds": 14.2}]
DIRECT = "[database]\nsql_alchemy_conn = postgresql://airflow_user:pw@10.0.0.5:5432/airflow_db\n"
THROUGH = "[database]\nsql_alchemy_conn = postgresql://airflow_user:pw@127.0.0.1:6432/airflow_db\n"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SshdService) -> dict[str, Path]:
    raw = loopback_inventory([("pg1", "127.0.0.11"), ("pg2", "127.0.0.12"), ("pg3", "127.0.0.13")])
    raw["airflow"]["hosts"][0]["config"] = str(tmp_path / "airflow.cfg")
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    (tmp_path / "airflow.cfg").write_text(DIRECT)
    return {"inventory": Path(write_inventory(tmp_path, raw)), "config": tmp_path / "airflow.cfg",
            "settings": tmp_path / "pgbouncer-move.json", "log": tmp_path / f"{RUN}.log"}


def sensor(host: dict[str, Path]) -> AirflowOnPgBouncerSensor:
    return AirflowOnPgBouncerSensor(task_id="airflow_on_pgbouncer", inventory_path=str(host["inventory"]),
                                    host="lb", settings_path=str(host["settings"]))


def armed(host: dict[str, Path], *records: dict, running: bool = True) -> None:
    """The agent's settings and log; ``running``: its state file exists (it is at work, or a restart
    interrupted it). No unit of that name runs on this test machine."""
    state_file = host["log"].parent / "pgbouncer-move-state.json"
    if running:
        state_file.write_text("{}")
    host["settings"].write_text(json.dumps({"role": "pooler", "run_id": RUN, "log_dir": str(host["log"].parent),
                                            "log_prefix": "", "state_file": str(state_file)}))
    host["log"].write_text("2026-12-05T16:00:00.000+00:00 move onto PgBouncer begins on lb\n" + "".join(
        f"2026-12-05T16:00:30.000+00:00 RECORD {json.dumps({'run_id': RUN, 'host': 'lb', 'role': 'pooler', **r})}\n"
        for r in records))


def test_the_agents_success_carries_its_steps(host: dict[str, Path]) -> None:
    armed(host, {"outcome": "success", "detail": "Airflow goes through PgBouncer 127.0.0.1:6432", "steps": STEPS,
                 "seconds": 30.6})
    host["config"].write_text(THROUGH)
    result = sensor(host).poke({})
    assert result.is_done and result.xcom_value["outcome"] == "success"
    assert result.xcom_value["log"] == str(host["log"])
    assert [s["step"] for s in result.xcom_value["steps"]] == [s["step"] for s in STEPS]


def test_no_record_yet_keeps_the_sensor_waiting(host: dict[str, Path]) -> None:
    armed(host)
    assert sensor(host).poke({}).is_done is False


def test_an_agent_gone_without_a_record_fails_the_task_naming_its_journal(host: dict[str, Path]) -> None:
    armed(host, running=False)
    with pytest.raises(AirflowFailException, match=rf"ended_without_outcome: agent {RUN} is gone and recorded "
                                                   rf"nothing: see `journalctl -u {RUN}`"):
        sensor(host).poke({})


def test_a_rollback_fails_the_task_with_its_reason(host: dict[str, Path]) -> None:
    armed(host, {"outcome": "rolled_back", "detail": "airflow db check failed (1): password authentication failed",
                 "steps": [*STEPS[:3], {"step": "db_check", "ok": False, "seconds": 3.0, "error": "auth"}]})
    with pytest.raises(AirflowFailException, match=r"\[lb\] move onto PgBouncer .* rolled_back: airflow db check"):
        sensor(host).poke({})


def test_success_with_a_config_that_no_longer_goes_through_pgbouncer_fails(host: dict[str, Path]) -> None:
    armed(host, {"outcome": "success", "detail": "ok", "steps": STEPS})
    with pytest.raises(AirflowFailException, match="reverted: .*no longer points at PgBouncer"):
        sensor(host).poke({})


def test_nothing_armed_is_fine_only_when_airflow_already_goes_through_pgbouncer(host: dict[str, Path]) -> None:
    with pytest.raises(AirflowFailException, match="not_armed"):
        sensor(host).poke({})
    host["config"].write_text(THROUGH)
    assert sensor(host).poke({}).is_done


def test_it_skips_with_pooler_none(host: dict[str, Path]) -> None:
    with pytest.raises(AirflowSkipException, match="pooler is none"):
        sensor(host).execute({"params": {"pooler": "none"}})
