"""The failover drill: its arithmetic on synthetic series, its DAG, and real drills on loopback.

The drills run the real DAG (dags/pg_ha_failover_drill.py, with ``dag.test()``:
dependencies, trigger rules, Params and rescheduling sensors as the scheduler
runs them) against the loopback lab of tests/drill_lab.py (real Patroni,
PostgreSQL, etcd, HAProxy and sshd; systemctl and systemd-run stand-ins). The
lab runs the same DAG under real systemd (and host_crash / host_isolate
through ``lab/lab`` behind the fault gate).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from pgha.compat import AirflowFailException, AirflowSkipException
from drill_lab import FAULT_GATE, NODES, DrillRun, Lab, drill_through_dag, fault_injector, loopback_lab
from fixture_secrets import PATRONI_REST_PASSWORD, PATRONI_REST_USER, PATRONI_SUPERUSER_PASSWORD
from pgha.drill import (
    Ack,
    ProbeLog,
    analyse,
    default_rto_slo_s,
    duration_s,
    enabled_scenarios,
    fault_state,
    first_ack_on,
    longest_gap,
    missing_acks,
    parse_probe_log,
    promotion_time,
    rto_slo_s,
    scenario_of_the_day,
    schedule_from_inventory,
    summary,
)
from pgha.inventory import DRILL_SCENARIOS, Drill, FaultCommands, FaultInjector, InventoryError, load_inventory, parse_inventory
from pgha_testing import shipped_inventory, write_inventory
from services import wait_until

# The loopback drill cluster has fixed addresses and ports (127.0.0.11-13): one pytest-xdist worker at a time.
pytestmark = pytest.mark.xdist_group("drill_lab")

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- arithmetic


def _acks(times: list[float], server: str = "10.0.0.1", first_seq: int = 1) -> list[Ack]:
    return [Ack(first_seq + i, t, server) for i, t in enumerate(times)]


PLAN = {"drill_id": "d1", "scenario": "switchover", "target": "a", "leader": "a", "rto_slo_s": 3.0,
        "leader_must_change": True}


def _analyse(probe: ProbeLog, present: set[int] | None = None, new_leader: str | None = "b",
             incomplete: list[str] | None = None, **plan: Any) -> Any:
    return analyse(
        plan={**PLAN, **plan}, injection={"t_inject": 100.0, "t_injected": 100.2}, probe=probe,
        present={a.seq for a in probe.acks} if present is None else present, new_leader=new_leader,
        new_leader_address="10.0.0.2", promoted_at=101.0, old_leader_streaming_at=106.5,
        incomplete=incomplete or [],
    )


def test_probe_log_parses_acks_events_and_ignores_a_torn_line() -> None:
    text = ("# start 99.0 seq=1\n1 99.05 10.0.0.1\n2 99.10 10.0.0.1\n# error 99.2 OperationalError: gone\n"
            "3 101.5 10.0.0.2\n# stopped 102.0\n4 10")
    log = parse_probe_log(text)
    assert [a.seq for a in log.acks] == [1, 2, 3] and log.acks[2].server == "10.0.0.2"
    assert log.starts == [99.0] and log.errors == [(99.2, "OperationalError: gone")] and log.stopped == 102.0


def test_rto_is_the_longest_gap_and_a_probe_that_never_recovers_counts_until_its_stop() -> None:
    gap = longest_gap([1.0, 1.05, 1.1, 3.6, 3.65])
    assert gap is not None and (gap.start, gap.end) == (1.1, 3.6) and round(gap.seconds, 2) == 2.5
    silent = longest_gap([1.0, 1.05], end=30.0)
    assert silent is not None and silent.seconds == 28.95
    assert longest_gap([1.0]) is None and longest_gap([]) is None


def test_rpo_counts_acknowledged_writes_missing_from_the_table() -> None:
    assert missing_acks([1, 2, 3, 4], {1, 2, 4, 5}) == [3]  # 5: committed, never acknowledged: not lost
    assert missing_acks([1, 2], {1, 2}) == []


def test_first_ack_on_the_new_leader_and_promotion_time() -> None:
    acks = _acks([99.0, 99.05]) + _acks([101.2, 101.25], server="10.0.0.2", first_seq=3)
    assert first_ack_on(acks, "10.0.0.2", after=100.0) == acks[2]
    assert first_ack_on(acks, "10.0.0.3", after=100.0) is None
    history = [[1, 50331808, "no recovery target specified", "1970-01-01T00:01:41.250000+00:00", "b"]]
    assert promotion_time(history, "b", after=100.0) == 101.25
    assert promotion_time(history, "b", after=200.0) is None  # an older promotion
    assert promotion_time(history, "c", after=0) is None


def test_a_clean_drill_passes_with_its_timeline() -> None:
    # the fault is injected at 100.0; the client commits until 100.3, then on the new leader from 101.5
    times = [99.35 + 0.05 * i for i in range(20)] + [101.5 + 0.05 * i for i in range(20)]
    probe = ProbeLog(acks=_acks(times[:20]) + _acks(times[20:], server="10.0.0.2", first_seq=21), stopped=103.0)
    result = _analyse(probe)
    assert result.passed, result.problems
    assert result.rto_s == pytest.approx(1.2, abs=0.01) and result.outage_start == pytest.approx(100.3)
    # the timeline counts from the last commit before the outage
    assert result.time_to_new_leader_s == pytest.approx(0.7) and result.time_to_routing_s == pytest.approx(1.2)
    assert result.time_to_old_leader_streaming_s == pytest.approx(6.2)
    screen = summary(result, "lb", 50)
    assert "PASS" in screen and "RTO           1.20s  (SLO 3.0s)" in screen and len(screen.splitlines()) <= 24


def test_a_lost_write_a_slow_recovery_or_a_missing_step_fails_the_drill() -> None:
    times = [99.0 + 0.05 * i for i in range(20)] + [104.0 + 0.05 * i for i in range(5)]
    probe = ProbeLog(acks=_acks(times), stopped=104.5)
    result = _analyse(probe, present={a.seq for a in probe.acks} - {20}, incomplete=["routing"])
    assert not result.passed
    assert result.problems == [
        "step did not complete: routing",
        "RPO: 1 acknowledged write(s) missing (seq [20])",
        "RTO 4.05s exceeds the SLO of 3.0s",
    ]
    never = _analyse(ProbeLog(acks=_acks([99.0, 99.05]), stopped=130.0), new_leader="a")
    assert "the probe never committed after the fault" in never.problems
    assert "a is still the leader after switchover" in never.problems
    assert never.rto_s == pytest.approx(30.95)


def test_postmaster_restart_in_place_is_no_failover() -> None:
    probe = ProbeLog(acks=_acks([99.0, 99.05, 101.0, 101.05]), stopped=102.0)
    result = _analyse(probe, new_leader="a", scenario="postmaster_kill", leader_must_change=False, rto_slo_s=4.0)
    assert result.passed, result.problems
    assert result.time_to_new_leader_s is None and result.time_to_old_leader_streaming_s is None


def test_slo_defaults_follow_the_timing_settings_and_can_be_overridden() -> None:
    raw = shipped_inventory()
    raw["patroni"].update(ttl=30, loop_wait=10, retry_timeout=10)  # the runbook's timings
    raw["haproxy"].update(inter="3s", fall=3, rise=2)
    for key in ("fastinter", "downinter"):
        raw["haproxy"].pop(key, None)
    inv = parse_inventory(raw)
    assert duration_s("500ms") == 0.5 and duration_s("3s") == 3.0
    assert default_rto_slo_s(inv, "switchover") == 10 + 6 + 2
    assert default_rto_slo_s(inv, "host_crash") == 30 + 10 + 6 + 2
    assert default_rto_slo_s(inv, "postmaster_kill") == 10 + 9 + 6 + 2
    assert rto_slo_s(inv, "switchover", 2.5) == 2.5
    # ours (include/inventory.yml): up = 1 x downinter 250ms, down = 1s + 1 x fastinter 250ms
    ours = load_inventory()
    assert default_rto_slo_s(ours, "switchover") == pytest.approx(2 + 0.25 + 2, abs=0.06)  # rounded to 0.1 s
    assert default_rto_slo_s(ours, "host_isolate") == pytest.approx(20 + 2 + 1.25 + 0.25 + 2, abs=0.06)
    raw["drill"] = {"rto_slo_s": {"switchover": 3}}
    assert rto_slo_s(parse_inventory(raw), "switchover") == 3.0


# --------------------------------------------------------------------------- inventory and DAG


def test_drill_section_is_validated_by_field() -> None:
    raw = shipped_inventory()
    raw["drill"] = {"inject_commands": {"host_crash": {"inject": "virsh destroy {node}", "heal": "virsh start {host}"}},
                    "probe_host": "vm9"}
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw)
    assert "drill.probe_host: 'vm9' is not a host" in str(caught.value)
    raw["drill"].pop("probe_host")
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw)
    assert "drill.inject_commands.host_crash.heal: unknown placeholder(s) ['host']" in str(caught.value)
    assert "drill.fault_injector: is required" in str(caught.value)
    raw["drill"] = {"schedule": "every night", "probe_interval_ms": 5}
    with pytest.raises(InventoryError, match="drill.probe_interval_ms") as caught:
        parse_inventory(raw)
    assert "drill.schedule" in str(caught.value)
    raw["drill"] = {"schedule": None, "fault_injector": {"ssh_conn_id": "pgha_fault_injector"},
                    "inject_commands": {"host_isolate": {"inject": "isolate {node}", "heal": "heal {node}"}}}
    drill = parse_inventory(raw).drill
    assert drill.schedule is None and drill.inject_commands["host_isolate"].heal == "heal {node}"


def test_schedule_comes_from_the_inventory_and_survives_a_broken_one(tmp_path: Path) -> None:
    raw = shipped_inventory()
    raw["drill"] = {"schedule": "30 2 * * 1-5"}
    assert schedule_from_inventory(write_inventory(tmp_path, raw)) == "30 2 * * 1-5"
    broken = tmp_path / "broken.yml"
    broken.write_text("hosts: 3\n")
    assert schedule_from_inventory(str(broken)) == "0 3 * * *"


def test_the_rotation_enables_host_faults_only_with_a_fault_injector() -> None:
    assert enabled_scenarios(Drill()) == ["switchover", "patroni_stop", "postmaster_kill"]
    crash = {"host_crash": FaultCommands(inject="crash {node}", heal="start {node}")}
    assert enabled_scenarios(Drill(inject_commands=crash)) == ["switchover", "patroni_stop", "postmaster_kill"]
    injector = FaultInjector(ssh_conn_id="pgha_fault_injector")
    assert enabled_scenarios(Drill(fault_injector=injector, inject_commands=crash)) == [
        "switchover", "patroni_stop", "host_crash", "postmaster_kill"]
    both = {**crash, "host_isolate": FaultCommands(inject="isolate {node}", heal="heal {node}")}
    assert enabled_scenarios(Drill(fault_injector=injector, inject_commands=both)) == list(DRILL_SCENARIOS)


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_consecutive_nightly_and_weekly_drills_run_different_scenarios_and_all_get_drilled(count: int) -> None:
    enabled = list(DRILL_SCENARIOS[:count])
    night = datetime(2026, 1, 1, 3, tzinfo=timezone.utc)
    nightly = [scenario_of_the_day(enabled, night + timedelta(days=n)) for n in range(60)]
    assert all(a != b for a, b in zip(nightly, nightly[1:]))
    assert set(nightly[:count]) == set(enabled)  # every scenario within `count` nights
    weekly = [scenario_of_the_day(enabled, night + timedelta(weeks=n)) for n in range(20)]
    assert all(a != b for a, b in zip(weekly, weekly[1:])) and set(weekly) == set(enabled)


def test_the_rotation_is_deterministic_by_utc_day() -> None:
    enabled = ["switchover", "patroni_stop", "postmaster_kill"]
    at = datetime(2026, 3, 1, 3, tzinfo=timezone.utc)  # day 20513 since 1970-01-01; 20513 % 3 == 2
    assert scenario_of_the_day(enabled, at) == "postmaster_kill"
    assert scenario_of_the_day(enabled, at.replace(hour=23, minute=59)) == "postmaster_kill"  # a re-run, same night
    assert scenario_of_the_day(enabled, at.replace(tzinfo=None)) == "postmaster_kill"  # naive: UTC
    # 01:00 in UTC+2 is still the day before in UTC
    assert scenario_of_the_day(enabled, datetime(2026, 3, 2, 1, tzinfo=timezone(timedelta(hours=2)))) == \
        "postmaster_kill"
    with pytest.raises(ValueError, match="no drill scenario is enabled"):
        scenario_of_the_day([], at)


def test_fault_record_states() -> None:
    assert fault_state(None) is None
    assert fault_state({"state": "attempted", "t_inject": 1.0}) == "attempted"
    assert fault_state({"state": "confirmed", "t_inject": 1.0}) == "confirmed"
    # records of an earlier pgha: written before the fault, and again with t_injected after it
    assert fault_state({"t_inject": 1.0}) == "attempted"
    assert fault_state({"t_inject": 1.0, "t_injected": 1.5}) == "confirmed"


DRILL_TASKS = ["precheck", "start_probe", "inject", "new_leader", "client_writes", "routing", "heal",
               "cluster_whole", "etcd_leader", "stop_probe", "analyse"]
WAITS = {"new_leader", "client_writes", "routing", "cluster_whole"}


def test_dag_parses_with_a_broken_inventory_and_keeps_its_safety_rails(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from pgha_testing import DagBag
    from airflow.sdk import BaseSensorOperator

    broken = tmp_path / "broken.yml"
    broken.write_text("hosts: [\n")
    monkeypatch.setenv("PGHA_INVENTORY", str(broken))
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["pg_ha_failover_drill"]
    assert dag.max_active_runs == 1 and not dag.catchup
    assert [t.task_id for t in dag.tasks] == DRILL_TASKS
    assert [[u.task_id for u in t.upstream_list] for t in dag.tasks] == [[]] + [[p] for p in DRILL_TASKS[:-1]]
    assert {t.task_id for t in dag.tasks if t.trigger_rule == "all_done"} == {
        "heal", "cluster_whole", "stop_probe", "analyse"}
    assert all(t.retries >= 1 for t in dag.tasks)
    sensors = {t.task_id: t for t in dag.tasks if isinstance(t, BaseSensorOperator)}
    assert set(sensors) == WAITS
    assert all(s.mode == "reschedule" and 0 < s.timeout < 7 * 24 * 3600 for s in sensors.values())
    assert set(dag.params.keys()) == {"inventory_path", "scenario", "target", "rto_slo_s", "max_lag_bytes"}
    scenario = dag.params.get_param("scenario")
    assert scenario.value == "rotation" and scenario.schema["enum"] == [
        "rotation", "switchover", "patroni_stop", "host_crash", "host_isolate", "postmaster_kill"]


def _worst_case_s(task: Any) -> float:
    """A task's longest possible time with all its retries: every try runs into its execution_timeout (a
    rescheduling sensor: its timeout, counted from the try's first poke, then one more poke)."""
    from airflow.sdk import BaseSensorOperator

    per_try = task.execution_timeout.total_seconds()
    if isinstance(task, BaseSensorOperator):
        per_try += task.timeout + task.poke_interval
    return (task.retries + 1) * per_try + task.retries * task.retry_delay.total_seconds()


def test_the_run_timeout_never_cuts_the_heal_short() -> None:
    from pgha_testing import DagBag

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["pg_ha_failover_drill"]
    assert all(t.execution_timeout is not None for t in dag.tasks)
    worst = sum(_worst_case_s(t) for t in dag.tasks)
    assert worst <= dag.dagrun_timeout.total_seconds(), (worst, dag.dagrun_timeout)
    # the wait for the whole cluster keeps its 20 minutes, however long the recovery before it took
    assert dag.get_task("cluster_whole").timeout >= 1200


class _FakeTI:
    """Just enough of a task instance for template rendering: XComs by task id."""

    def __init__(self, xcoms: dict[str, Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str | None = None, **kwargs: Any) -> Any:
        return self.xcoms.get(task_ids or "")


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "precheck-skipped"])
def test_plan_and_step_xcoms_reach_the_operators_as_objects(planned: bool) -> None:
    from pgha_testing import DagBag

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["pg_ha_failover_drill"]
    plan = {"drill_id": "x", "leader": "psg1", "must_leave": "psg1", "rto_slo_s": 3.0}
    xcoms = {"precheck": {"changed": False, "result": plan}, "inject": {"result": {"t_inject": 1.5}},
             "new_leader": "psg2"} if planned else {}
    context = {"ti": _FakeTI(xcoms), "params": {"inventory_path": "/etc/pgha/inventory.yml"}}
    for task in dag.tasks:
        task.render_template_fields(context)
    assert dag.get_task("start_probe").plan == (plan if planned else None)
    assert dag.get_task("new_leader").not_leader == ("psg1" if planned else None)
    assert dag.get_task("client_writes").plan == (plan if planned else None)
    assert dag.get_task("analyse").steps == {
        "inject": {"result": {"t_inject": 1.5}} if planned else None,
        "new_leader": "psg2" if planned else None, "client_writes": None, "routing": None, "heal": None,
        "cluster_whole": None}
    assert {t.inventory_path for t in dag.tasks} == {"/etc/pgha/inventory.yml"}


def _fault_gate() -> Any:
    spec = importlib.util.spec_from_file_location("fault_gate", FAULT_GATE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fault_gate_runs_only_a_configured_verb_on_a_configured_node() -> None:
    gate = _fault_gate()
    config = {"nodes": ["psg1"], "verbs": {"crash": ["/srv/lab/lab", "crash"]}}
    wrapped = "sudo -n -- bash -o pipefail -c 'crash psg1'"
    assert gate.resolve(config, gate.requested(wrapped)) == ["/srv/lab/lab", "crash", "psg1"]
    assert gate.resolve(config, gate.requested("bash -o pipefail -c 'crash psg1'")) == ["/srv/lab/lab", "crash",
                                                                                         "psg1"]
    for request, reason in (("crash vm1", "node 'vm1'"), ("reboot psg1", "verb 'reboot'"),
                            ("bash -o pipefail -c 'crash psg1; rm -rf /'", "got 5 word"),
                            ("crash psg1 psg2", "got 3 word")):
        with pytest.raises(gate.Refused, match=reason):
            gate.resolve(config, gate.requested(request))


# --------------------------------------------------------------------------- drills on loopback


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The loopback lab (tests/drill_lab.py): 3 Patroni members, etcd, HAProxy, one sshd per host."""
    with pytest.MonkeyPatch.context() as mp, loopback_lab(tmp_path_factory.mktemp("drill"), mp) as started:
        yield started


class _NoRuns:
    """A task instance that sees no other DAG run (no migration running)."""

    def get_dr_count(self, dag_id: str, **criteria: Any) -> int:
        return 0


def _history(lab: Lab, drill_id: str) -> tuple[Any, ...]:
    conn = psycopg2.connect(host="127.0.0.1", port=lab.write_port, user="postgres",
                            password=PATRONI_SUPERUSER_PASSWORD, dbname="postgres", connect_timeout=5)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT scenario, passed, rpo_missing, rto_s FROM pgha_drill_history WHERE drill_id = %s",
                    (drill_id,))
        row = cur.fetchone()
    conn.close()
    return row


def _assert_drill(lab: Lab, drill: DrillRun, scenario: str) -> dict[str, Any]:
    """Every task of the DAG succeeded, no acknowledged write is missing, the cluster is whole again,
    and the verdict is on the cluster (pgha_drill_history). Returns the verdict."""
    assert drill.states == dict.fromkeys(DRILL_TASKS, "success"), drill.states
    result = drill.result
    assert result is not None and result["passed"], result
    assert result["rpo_missing"] == 0 and result["acked"] > 20
    members = lab.cluster.cluster()["members"]
    assert len(members) == 3 and lab.cluster.healthy(sync=True), members
    assert _history(lab, result["drill_id"]) == (scenario, True, 0, result["rto_s"])
    return result


def test_switchover_drill_moves_the_leader_without_losing_a_write(lab: Lab) -> None:
    old = lab.leader()
    result = _assert_drill(lab, drill_through_dag(lab.inventory, "switchover"), "switchover")
    assert result["old_leader"] == result["target"] == old and result["new_leader"] != old
    assert lab.leader() == result["new_leader"]
    assert result["time_to_new_leader_s"] is not None and result["time_to_routing_s"] is not None
    assert result["time_to_old_leader_streaming_s"] is not None


def test_inject_never_twice_per_drill(lab: Lab) -> None:
    from pgha.operators.drill import InjectFaultOperator

    leader = lab.leader()
    plan = {"drill_id": "replayed", "probe_host": "lb", "scenario": "switchover", "target": leader, "leader": leader}
    recorded = {"scenario": "switchover", "target": leader, "t_inject": 1.0, "t_injected": 1.5}
    drill_dir = Path(load_inventory(lab.inventory).drill.state_dir) / "replayed"
    drill_dir.mkdir(parents=True, exist_ok=True)
    (drill_dir / "fault.json").write_text(json.dumps(recorded))
    again = InjectFaultOperator(task_id="inject", plan=plan, inventory_path=lab.inventory).execute({})
    assert again["result"] == recorded and not again["changed"]
    assert lab.leader() == leader


def test_the_wait_for_a_whole_cluster_resumes_from_its_record(lab: Lab) -> None:
    from pgha.sensors.drill import DrillClusterWholeSensor

    leader = lab.leader()
    plan = {"drill_id": "resumed", "probe_host": "lb", "scenario": "switchover", "target": leader, "leader": leader}
    drill_dir = Path(load_inventory(lab.inventory).drill.state_dir) / "resumed"
    drill_dir.mkdir(parents=True, exist_ok=True)

    def poke() -> Any:
        return DrillClusterWholeSensor(task_id="cluster_whole", plan=plan, inventory_path=lab.inventory).poke({})

    with pytest.raises(AirflowSkipException, match="no fault was injected"):
        poke()
    (drill_dir / "fault.json").write_text(json.dumps({"scenario": "switchover", "target": leader, "t_inject": 1.0}))
    (drill_dir / "target_back.json").write_text(json.dumps({"target": leader, "back_at": 2.5}))
    whole = poke()  # an earlier poke saw the target back at 2.5: that moment counts, not this poke's
    assert whole.is_done and whole.xcom_value["back_at"] == 2.5 and whole.xcom_value["target"] == leader
    assert whole.xcom_value["routing"]["write"] == [leader]


def test_patroni_stop_drill_fails_over_and_heals_the_old_leader(lab: Lab) -> None:
    old = lab.leader()
    result = _assert_drill(lab, drill_through_dag(lab.inventory, "patroni_stop"), "patroni_stop")
    assert result["old_leader"] == old and result["new_leader"] != old and lab.leader() == result["new_leader"]
    members = {m["name"]: m for m in lab.cluster.cluster()["members"]}
    assert members[old]["state"] == "streaming"


def test_postmaster_kill_drill_recovers_without_losing_a_write(lab: Lab) -> None:
    old = lab.leader()
    result = _assert_drill(lab, drill_through_dag(lab.inventory, "postmaster_kill"), "postmaster_kill")
    assert result["old_leader"] == old  # restarted in place: Patroni may keep it or fail over, both pass


def test_a_paused_cluster_is_not_drilled(lab: Lab) -> None:
    from pgha.hooks.patroni import PatroniHook
    from pgha.operators.drill import DrillPrecheckOperator

    member = lab.cluster.members[0]
    auth = (PATRONI_REST_USER, PATRONI_REST_PASSWORD)
    requests.patch(f"{member.rest_url}/config", json={"pause": True}, auth=auth, timeout=5).raise_for_status()
    try:
        wait_until(lambda: PatroniHook([member.rest_url]).cluster().paused, 15, "Patroni to pause")
        with pytest.raises(AirflowSkipException, match="Patroni is paused"):
            DrillPrecheckOperator(task_id="precheck", inventory_path=lab.inventory).execute(
                {"params": {"scenario": "switchover"}, "ti": _NoRuns()})
    finally:
        requests.patch(f"{member.rest_url}/config", json={"pause": False}, auth=auth, timeout=5).raise_for_status()
    wait_until(lambda: not PatroniHook([member.rest_url]).cluster().paused, 15, "Patroni to resume")


def test_precheck_refuses_what_it_cannot_drill(lab: Lab) -> None:
    from pgha.operators.drill import DrillPrecheckOperator

    def precheck(**params: Any) -> Any:
        return DrillPrecheckOperator(task_id="precheck", inventory_path=lab.inventory).execute(
            {"params": params, "ti": _NoRuns()})

    with pytest.raises(AirflowFailException, match="needs drill.inject_commands.host_crash"):
        precheck(scenario="host_crash")
    replica = next(name for name, _ in NODES if name != lab.leader())
    with pytest.raises(AirflowFailException, match="target must be 'leader'"):
        precheck(scenario="switchover", target=replica)
    with pytest.raises(AirflowFailException, match="not a member"):
        precheck(scenario="patroni_stop", target="pg-z")
    with pytest.raises(AirflowSkipException, match="lags 0 bytes"):
        precheck(scenario="switchover", max_lag_bytes=-1)


def test_host_crash_drill_through_the_fault_gate(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgha.hooks.remote import RemoteHook

    old = lab.leader()
    with fault_injector(lab, tmp_path, monkeypatch) as injector:
        drill = drill_through_dag(injector.inventory, "host_crash")
        refused = RemoteHook("pgha_fault_injector", host_name="hypervisor").run("rm -rf /tmp/x", check=False)
    result = _assert_drill(lab, drill, "host_crash")
    assert result["new_leader"] != old and lab.leader() == result["new_leader"]
    assert result["rto_s"] >= 10  # the leader lock has to expire first
    assert refused.exit_code == 126
    log = injector.log.read_text()
    assert f"crash {old}" in log and f"start {old}" in log and "REFUSED" in log and "rm -rf /tmp/x" in log


def test_the_write_probe_verifies_the_cluster_when_tls_is_on() -> None:
    """The probe's settings carry the host's CA file: the name is checked through HAProxy's address; on
    loopback (the probe on HAProxy's own host) the chain only. Without TLS, libpq's default."""
    from pgha.hooks.drill import probe_tls

    raw = shipped_inventory()
    raw["tls"] = {**raw.get("tls", {}), "enabled": True}
    inventory = parse_inventory(raw)
    assert probe_tls(inventory, local=False) == {"sslmode": "verify-full", "sslrootcert": "/etc/pgha/tls/ca.crt"}
    assert probe_tls(inventory, local=True) == {"sslmode": "verify-ca", "sslrootcert": "/etc/pgha/tls/ca.crt"}
    raw["tls"]["enabled"] = False
    assert probe_tls(parse_inventory(raw), local=False) == {}
