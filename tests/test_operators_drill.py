"""The drill operators' steps after the precheck on recorded hosts (the probe host keeps the drill's
records) with Patroni's REST API as a real-HTTP stand-in: what each step runs where, and that a retry
never injects twice or heals what already answers."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import recording_host
from pgha.compat import AirflowException, AirflowFailException, AirflowSkipException
from fixture_secrets import PATRONI_REST_PASSWORD, POSTGRES_PASSWORD
from pgha.hooks.postgres import NodePostgresHook
from pgha.operators import drill as drill_operators
from pgha.operators.drill import (
    AnalyseDrillOperator,
    DrillOperator,
    DrillPrecheckOperator,
    HealOperator,
    InjectFaultOperator,
    NoDrillRunningOperator,
    StopProbeOperator,
)
from pgha_testing import set_connection
from pgha.hooks.remote import CommandFailed, CommandResult
from recording_host import DEBIAN_12, ROCKY_9, ClusterApis, FakeFile, Fleet, FakeHost, Unit, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
DRILL_ID = "20260101T030000Z-patroni_stop-psg1"
STATE = f"/var/lib/pgha/drill/{DRILL_ID}"
FAULT_RECORD = f"{STATE}/fault.json"
HOST_FAULTS = {"fault_injector": {"ssh_conn_id": "ssh_injector", "name": "injector"},
               "inject_commands": {"host_crash": {"inject": "systemctl stop lab-node@{node}.service",
                                                  "heal": "systemctl start lab-node@{node}.service"}}}


def plan(scenario: str = "patroni_stop", target: str = "psg1", **changes: Any) -> dict[str, Any]:
    return {"drill_id": DRILL_ID, "scenario": scenario, "target": target, "leader": "psg1",
            "candidate": "psg2" if scenario == "switchover" else None, "leader_must_change": target == "psg1",
            "must_leave": "psg1", "probe_host": "vm1", "probe_python": "/usr/bin/python3", "rto_slo_s": 30.0,
            "etcd_leader": "psg2", **changes}


def step(cls: type, inventory: str, the_plan: dict[str, Any] | None, **kwargs: Any) -> dict:
    return cls(task_id=cls.__name__, inventory_path=inventory, plan={"result": the_plan}, **kwargs).execute({})


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password=PATRONI_REST_PASSWORD)
    for conn_id in ("pgha_pg_superuser", "pgha_airflow_db"):
        set_connection(monkeypatch, conn_id, conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)


def drill_inventory(fleet: Fleet, tmp_path: Path, apis: ClusterApis, os: str = DEBIAN_12, **drill: Any) -> str:
    inventory = fleet_inventory(fleet, tmp_path, os, drill=drill, **apis.sections())
    for node in ("psg1", "psg2", "psg3"):
        fleet[node].units["patroni.service"] = Unit(enabled=True, active=True)
    return inventory


def injector(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    """The fault injector (an SSH connection of its own, not an inventory host) as a fake host."""
    host = fleet.add("injector", DEBIAN_12, "10.9.9.9")
    for node in ("psg1", "psg2", "psg3"):
        host.units[f"lab-node@{node}.service"] = Unit(enabled=True, active=True)
    monkeypatch.setattr(DrillOperator, "injector", lambda self: host)
    return host


# ------------------------------------------------------------------ InjectFaultOperator


def fault(fleet: Fleet) -> dict[str, Any]:
    return json.loads(fleet["vm1"].files[FAULT_RECORD].content)


def record_attempt(fleet: Fleet, scenario: str = "patroni_stop", **fields: Any) -> None:
    """An attempt an earlier try recorded and never confirmed (its worker lost, its injection failed)."""
    fleet["vm1"].files[FAULT_RECORD] = type(fleet["vm1"].files["/etc/hosts"])(json.dumps(
        {"scenario": scenario, "target": "psg1", "state": "attempted", "attempt": 1, "t_inject": 1.0,
         "errors": [], **fields}), mode="600")


def switchover_answers(apis: ClusterApis, *answers: tuple[int, str]) -> None:
    """POST /switchover answers ``answers`` in turn, then 200; a 200 hands the leadership to the candidate
    (Patroni answers once the new leader took over)."""
    queue, patroni = list(answers), apis._patroni

    def answer(request: Any) -> tuple[int, Any]:
        if (request.method, request.path) != ("POST", "/switchover") or request.auth is None:
            return patroni(request)
        status, text = queue.pop(0) if queue else (200, f"Successfully switched over to \"{request.body['candidate']}\"")
        if status == 200:
            for member in apis.members:
                if member["name"] == request.body["leader"]:
                    member.update(role="replica", state="streaming")
                elif member["name"] == request.body["candidate"]:
                    member.update(role="leader", state="running")
        return status, text

    apis._patroni = answer  # type: ignore[method-assign]


@pytest.mark.parametrize("os", BOTH)
def test_patroni_stop_is_injected_once(fleet: Fleet, tmp_path: Path, apis: ClusterApis, os: str) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, os)
    vm1, psg1 = fleet["vm1"], fleet["psg1"]
    first = step(InjectFaultOperator, inventory, plan())
    assert psg1.mutations() == ["systemctl stop patroni.service"] and not psg1.units["patroni.service"].active
    assert psg1.ran("is-active") == ["systemctl is-active --quiet patroni.service"]  # seen to take effect
    assert all(fleet[n].commands == [] for n in ("psg2", "psg3"))
    record = fault(fleet)
    assert record["scenario"] == "patroni_stop" and record["detail"] == "systemctl stop patroni.service"
    assert record["state"] == "confirmed" and record["evidence"] == "patroni.service inactive on psg1"
    assert record["t_inject"] <= record["t_injected"] <= record["t_confirmed"] and vm1.files[FAULT_RECORD].mode == "600"
    # attempted before the fault, confirmed after it showed
    assert vm1.mutations() == [f"put_file {FAULT_RECORD} (root:root 0600)"] * 2
    assert first["changes"] == ["patroni_stop injected on psg1: systemctl stop patroni.service; "
                                "confirmed: patroni.service inactive on psg1"]

    fleet.forget()
    retry = step(InjectFaultOperator, inventory, plan())
    assert not retry["changed"] and retry["result"] == record
    assert psg1.commands == [] and vm1.mutations() == []


def test_switchover_is_asked_of_patroni_with_the_planned_candidate(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                                   logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    switchover_answers(apis)
    step(InjectFaultOperator, inventory, plan("switchover"))
    [switchover] = apis.changes()
    assert (switchover.path, switchover.body) == ("/switchover", {"leader": "psg1", "candidate": "psg2"})
    assert fault(fleet)["evidence"] == "psg2 leads (was psg1)"
    assert all(fleet[n].commands == [] for n in ("psg1", "psg2", "psg3"))
    apis.requests.clear()
    assert not step(InjectFaultOperator, inventory, plan("switchover"))["changed"]
    assert apis.changes() == []


def test_a_switchover_through_the_pause_to_a_server_set_aside_in_haproxy_is_refused_before_the_attempt(
        fleet: Fleet, tmp_path: Path, apis: ClusterApis, logins: None) -> None:
    """The planned candidate is in MAINT in HAProxy's write backend: refused before the attempt is recorded
    (not a failed attempt, no retry spent on it), nothing paused, nothing asked of Patroni."""
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, edit=lambda raw: raw.update(pgbouncer={"enabled": True}),
                                **apis.sections())
    for node in ("psg1", "psg2", "psg3"):
        fleet[node].units["patroni.service"] = Unit(enabled=True, active=True)
    lb = fleet["vm1"]
    lb.units["haproxy.service"] = Unit(enabled=True, active=True)
    lb.haproxy_servers_state = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
        "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state\n"
        "2 postgres_write 1 psg1 10.0.0.1 2 0 1 1 5 6 3 4 6\n2 postgres_write 2 psg2 10.0.0.2 0 1 1 1 5 6 3 4 14\n")
    switchover_answers(apis)
    with pytest.raises(AirflowFailException, match=r"not switching over from psg1: HAProxy on vm1 .*\(psg2: MAINT\)"):
        step(InjectFaultOperator, inventory, plan("switchover"))
    assert apis.changes() == [] and FAULT_RECORD not in lb.files and lb.mutations() == []


def test_a_refused_switchover_is_asked_again_on_retry_not_taken_as_injected(fleet: Fleet, tmp_path: Path,
                                                                           apis: ClusterApis, logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    refusal = (412, "candidate name does not match with sync_standby")
    switchover_answers(apis, refusal)
    with pytest.raises(AirflowException, match="POST /switchover psg1 -> psg2 refused: HTTP 412 candidate name"):
        step(InjectFaultOperator, inventory, plan("switchover"))
    attempted = fault(fleet)
    assert attempted["state"] == "attempted" and attempted["attempt"] == 1
    assert attempted["errors"] == [f"attempt 1: POST /switchover psg1 -> psg2 refused: HTTP 412 {refusal[1]}"]

    # the retry sees psg1 still leading: the attempt did not take effect, so it asks again
    retry = step(InjectFaultOperator, inventory, plan("switchover"))
    assert [r.path for r in apis.changes()] == ["/switchover", "/switchover"]
    record = retry["result"]
    assert record["state"] == "confirmed" and record["attempt"] == 2 and record["errors"] == attempted["errors"]
    assert record["evidence"] == "psg2 leads (was psg1)" and record["t_inject"] > attempted["t_inject"]
    assert "already" not in " ".join(retry["changes"] + retry["unchanged"])


def test_a_switchover_refused_on_every_try_fails_with_patronis_reason(fleet: Fleet, tmp_path: Path,
                                                                      apis: ClusterApis, logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    switchover_answers(apis, *[(412, "switchover is not possible: no good candidates")] * 4)
    for _ in range(4):
        with pytest.raises(AirflowException, match="refused: HTTP 412 switchover is not possible"):
            step(InjectFaultOperator, inventory, plan("switchover"))
    record = fault(fleet)
    assert record["state"] == "attempted" and record["attempt"] == 4 and len(record["errors"]) == 4
    assert apis.members[0]["role"] == "leader"
    with pytest.raises(AirflowFailException, match=r"attempted 4 time\(s\) but never seen to take effect "
                                                   r"\(attempt 1: POST /switchover"):
        step(AnalyseDrillOperator, inventory, plan("switchover"), steps={"inject": None})


def test_an_attempt_that_took_effect_is_confirmed_not_repeated(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                               logins: None) -> None:
    """The worker was lost after POST /switchover: the retry finds another leader and only confirms."""
    inventory = drill_inventory(fleet, tmp_path, apis)
    record_attempt(fleet, "switchover")
    apis.members[0].update(role="replica", state="streaming")
    apis.members[1].update(role="leader", state="running")
    confirmed = step(InjectFaultOperator, inventory, plan("switchover"))
    assert apis.changes() == []
    assert confirmed["changes"] == ["attempt 1 took effect; confirmed: psg2 leads (was psg1)"]
    assert fault(fleet)["state"] == "confirmed" and fault(fleet)["t_inject"] == 1.0


def test_no_single_leader_after_an_unconfirmed_switchover_is_not_switched_again(
        fleet: Fleet, tmp_path: Path, apis: ClusterApis, logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    record_attempt(fleet, "switchover")
    apis.members[0].update(role="replica", state="stopped")  # the election is under way
    with pytest.raises(AirflowException, match=r"never confirmed and the cluster does not show whether it took "
                                               r"effect: Patroni has no single leader .* not injecting again"):
        step(InjectFaultOperator, inventory, plan("switchover"))
    assert apis.changes() == [] and fault(fleet)["state"] == "attempted"


@pytest.mark.parametrize("active, injected_again", [(True, True), (False, False)], ids=["not-stopped", "stopped"])
def test_a_retry_after_an_unconfirmed_patroni_stop_looks_at_the_unit(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                                    active: bool, injected_again: bool) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    record_attempt(fleet, errors=["attempt 1: ssh: connection reset"])
    psg1 = fleet["psg1"]
    psg1.units["patroni.service"].active = active
    result = step(InjectFaultOperator, inventory, plan())["result"]
    assert psg1.mutations() == (["systemctl stop patroni.service"] if injected_again else [])
    assert result["state"] == "confirmed" and result["attempt"] == (2 if injected_again else 1)
    assert result["evidence"] == "patroni.service inactive on psg1"


def test_a_fault_that_does_not_show_is_not_confirmed(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The injector's command succeeded but the target still answers: the attempt stays unconfirmed (heal and
    cluster_whole still run) and the retry injects again."""
    monkeypatch.setattr(drill_operators, "CONFIRM_TIMEOUT_S", 0.3)
    inventory = drill_inventory(fleet, tmp_path, apis, **HOST_FAULTS)
    host = injector(fleet, monkeypatch)
    with pytest.raises(AirflowException, match=r"host_crash on psg1 was not seen to take effect within 0.3s: the "
                                               r"Patroni REST API on psg1 answers \(HTTP 200\)"):
        step(InjectFaultOperator, inventory, plan("host_crash"))
    assert host.mutations() == ["systemctl stop lab-node@psg1.service"] and fault(fleet)["state"] == "attempted"
    assert fault(fleet)["errors"][0].startswith("attempt 1: host_crash on psg1 was not seen to take effect")

    host.forget()
    apis.stop_patroni("psg1")  # the host went down after all
    confirmed = step(InjectFaultOperator, inventory, plan("host_crash"))
    assert host.mutations() == [] and confirmed["result"]["attempt"] == 1
    assert confirmed["changes"] == ["attempt 1 took effect; confirmed: the Patroni REST API on psg1 does not answer"]


def test_host_crash_runs_the_inventorys_command_on_the_fault_injector(fleet: Fleet, tmp_path: Path,
                                                                     apis: ClusterApis,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, **HOST_FAULTS)
    host = injector(fleet, monkeypatch)
    crash = host.run

    def run(command: str, **kwargs: Any) -> Any:
        result = crash(command, **kwargs)
        if command == "systemctl stop lab-node@psg1.service":
            apis.stop_patroni("psg1")  # the host is gone, and its REST API with it
        return result

    monkeypatch.setattr(host, "run", run)
    step(InjectFaultOperator, inventory, plan("host_crash"))
    assert host.mutations() == ["systemctl stop lab-node@psg1.service"]
    assert fleet["psg1"].commands == [] and fault(fleet)["state"] == "confirmed"


@pytest.fixture
def postmaster(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """psg1's postmaster as the fake host sees it: its pid file, and whether that pid runs."""
    state: dict[str, Any] = {"pid": 4242, "alive": True}
    pid_file = "/var/lib/postgresql/15/main/postmaster.pid"
    rules = [
        (re.compile(rf"head -n1 {pid_file}"), False, lambda h, m, stdin: (0, f"{state['pid']}\n", "")),
        (re.compile(r"kill -KILL (\d+)"), True,
         lambda h, m, stdin: (state.update(alive=False) or (0, "", "")) if int(m[1]) == state["pid"] else (1, "", "")),
        (re.compile(rf"test \"\$\(head -n1 {pid_file} 2>/dev/null\)\" = (\d+) && grep -qv '\) Z ' /proc/\d+/stat"),
         False, lambda h, m, stdin: (0 if state["alive"] and int(m[1]) == state["pid"] else 1, "", "")),
    ]
    monkeypatch.setattr(recording_host, "RULES", [*recording_host.RULES, *rules])
    monkeypatch.setattr(NodePostgresHook, "scalar", lambda self, query: "/var/lib/postgresql/15/main")
    # through HAProxy: a server that is not the target (None), so the target is asked itself (scalar above)
    monkeypatch.setattr(NodePostgresHook, "rows", lambda self, query: [("/elsewhere", None)])
    return state


def test_postmaster_kill_records_the_pid_before_and_confirms_it_is_gone(fleet: Fleet, tmp_path: Path,
                                                                        apis: ClusterApis, postmaster: dict) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    step(InjectFaultOperator, inventory, plan("postmaster_kill", leader_must_change=False))
    assert fleet["psg1"].mutations() == ["kill -KILL 4242"]
    record = fault(fleet)
    assert (record["pid"], record["state"], record["evidence"]) == (4242, "confirmed", "postmaster 4242 on psg1 is gone")


@pytest.mark.parametrize("alive", [True, False], ids=["still-running", "gone"])
def test_a_retry_after_an_unconfirmed_postmaster_kill_looks_at_the_recorded_pid(
        fleet: Fleet, tmp_path: Path, apis: ClusterApis, postmaster: dict, alive: bool) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    record_attempt(fleet, "postmaster_kill", pid=4242, data_dir="/var/lib/postgresql/15/main")
    postmaster["alive"] = alive
    result = step(InjectFaultOperator, inventory, plan("postmaster_kill"))["result"]
    assert fleet["psg1"].mutations() == (["kill -KILL 4242"] if alive else [])
    assert result["state"] == "confirmed" and result["attempt"] == (2 if alive else 1)


def test_no_fault_when_the_leader_moved_since_the_precheck(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    apis.members[0]["role"], apis.members[1]["role"] = "replica", "leader"
    with pytest.raises(AirflowFailException, match=r"the leader moved since the precheck \(psg1 -> psg2\): "
                                                   "not injecting; trigger a new drill"):
        step(InjectFaultOperator, inventory, plan())
    assert FAULT_RECORD not in fleet["vm1"].files and fleet["psg1"].commands == []


def test_heal_runs_after_an_unconfirmed_attempt(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    """The attempt may have taken effect although it was never confirmed: heal brings the target back."""
    inventory = drill_inventory(fleet, tmp_path, apis)
    record_attempt(fleet)
    fleet["psg1"].units["patroni.service"].active = False
    apis.stop_patroni("psg1")
    assert step(HealOperator, inventory, plan())["changes"] == ["patroni.service started on psg1"]


# ------------------------------------------------------------------ HealOperator


def injected(fleet: Fleet, scenario: str = "patroni_stop") -> None:
    fleet["vm1"].files[FAULT_RECORD] = type(fleet["vm1"].files["/etc/hosts"])(
        json.dumps({"scenario": scenario, "target": "psg1", "t_inject": 1.0}), mode="600")


@pytest.mark.parametrize("os", BOTH)
def test_heal_starts_patroni_only_while_it_does_not_answer(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                           os: str) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, os)
    injected(fleet)
    psg1 = fleet["psg1"]
    psg1.units["patroni.service"].active = False
    apis.stop_patroni("psg1")
    healed = step(HealOperator, inventory, plan())
    assert healed["changes"] == ["patroni.service started on psg1"]
    assert psg1.mutations() == ["systemctl start patroni.service"] and psg1.units["patroni.service"].active

    apis.start_patroni("psg1")  # Patroni answers again
    fleet.forget()
    again = step(HealOperator, inventory, plan())
    assert not again["changed"] and again["unchanged"] == ["Patroni on psg1 answers again"]
    assert psg1.commands == [] and fleet["vm1"].mutations() == []


def test_heal_leaves_a_switchover_to_patroni(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    injected(fleet, "switchover")
    result = step(HealOperator, inventory, plan("switchover"))
    assert result["unchanged"] == ["switchover: Patroni brings psg1 back by itself"]
    assert all(fleet[n].commands == [] for n in ("psg1", "psg2", "psg3"))


def test_heal_a_crashed_host_with_the_inventorys_command(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, **HOST_FAULTS)
    host = injector(fleet, monkeypatch)
    host.units["lab-node@psg1.service"].active = False
    injected(fleet, "host_crash")
    apis.stop_patroni("psg1")
    step(HealOperator, inventory, plan("host_crash"))
    assert host.mutations() == ["systemctl start lab-node@psg1.service"]


def test_heal_without_an_injected_fault_skips(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    with pytest.raises(AirflowSkipException, match="no fault was injected for this drill: nothing to heal"):
        step(HealOperator, inventory, plan())
    assert fleet["psg1"].commands == []


# ------------------------------------------------------------------ StopProbeOperator, AnalyseDrillOperator


@pytest.mark.parametrize("os", BOTH)
def test_stop_probe_stops_a_running_probe_once(fleet: Fleet, tmp_path: Path, apis: ClusterApis, os: str) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, os)
    vm1 = fleet["vm1"]
    vm1.units[f"pgha-drill-probe-{DRILL_ID}.service"] = Unit(active=True)
    stopped = step(StopProbeOperator, inventory, plan())
    assert vm1.mutations() == [f"systemctl stop pgha-drill-probe-{DRILL_ID}"]
    assert stopped["result"] == {"unit": f"pgha-drill-probe-{DRILL_ID}", "ack_file": f"{STATE}/acks"}
    fleet.forget()
    assert not step(StopProbeOperator, inventory, plan())["changed"] and vm1.mutations() == []


def test_stop_probe_removes_the_probe_settings_even_when_the_stop_fails(fleet: Fleet, tmp_path: Path,
                                                                        apis: ClusterApis) -> None:
    """probe.json holds the probe's password: stop_probe deletes it (an earlier drill's leftover too),
    also when stopping the unit fails; a retry that finds none changes nothing."""
    inventory = drill_inventory(fleet, tmp_path, apis)
    vm1 = fleet["vm1"]
    earlier = "/var/lib/pgha/drill/20251231T030000Z-switchover-psg2/probe.json"
    for path in (f"{STATE}/probe.json", earlier):
        vm1.files[path] = FakeFile('{"password": "x"}', mode="600")
    vm1.files[f"{STATE}/acks"] = FakeFile("1 0.1\n")
    vm1.units[f"pgha-drill-probe-{DRILL_ID}.service"] = Unit(active=True)
    failing = vm1.run

    def stop_fails(command: str, **kwargs: Any) -> Any:
        if command.startswith("systemctl stop"):
            raise CommandFailed(CommandResult("vm1", command, 5, "", "Failed to stop", 0.0))
        return failing(command, **kwargs)

    vm1.run = stop_fails  # type: ignore[method-assign]
    with pytest.raises(CommandFailed):
        step(StopProbeOperator, inventory, plan())
    assert f"{STATE}/probe.json" not in vm1.files and earlier not in vm1.files
    assert f"{STATE}/acks" in vm1.files  # the measurements stay
    del vm1.run
    fleet.forget()
    step(StopProbeOperator, inventory, plan())
    assert vm1.mutations() == [f"systemctl stop pgha-drill-probe-{DRILL_ID}"]


def test_analyse_removes_probe_settings_a_failed_stop_left(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    fleet["vm1"].files[f"{STATE}/probe.json"] = FakeFile('{"password": "x"}', mode="600")
    with pytest.raises(AirflowFailException, match="no fault was injected"):
        step(AnalyseDrillOperator, inventory, plan(), steps={"inject_fault": None})
    assert f"{STATE}/probe.json" not in fleet["vm1"].files
    assert fleet["vm1"].mutations() == ["rm -f /var/lib/pgha/drill/*/probe.json"]


def test_drill_steps_without_a_plan_skip(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    for cls in (InjectFaultOperator, HealOperator, StopProbeOperator, AnalyseDrillOperator):
        with pytest.raises(AirflowSkipException, match="no drill was planned"):
            step(cls, inventory, None)
    assert all(host.commands == [] for host in fleet.hosts.values())


def test_analyse_without_a_fault_fails_and_names_the_incomplete_steps(fleet: Fleet, tmp_path: Path,
                                                                      apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    with pytest.raises(AirflowFailException, match=r"no fault was injected: nothing to measure "
                                                   r"\(incomplete: \['inject_fault'\]\)"):
        step(AnalyseDrillOperator, inventory, plan(), steps={"inject_fault": None, "start_probe": {"result": {}}})
    assert fleet["vm1"].mutations() == []


# ------------------------------------------------------------------ DrillPrecheckOperator: configuration


class RunsOf:
    """The task instance's view of other DAG runs (``get_dr_count``, as the Task SDK asks the API server)."""

    def __init__(self, **runs: list[str]) -> None:
        self.runs = runs  # dag_id -> the states of its runs
        self.asked: list[tuple[str, list[str]]] = []

    def get_dr_count(self, dag_id: str, logical_dates: Any = None, run_ids: Any = None,
                     states: list[str] | None = None) -> int:
        self.asked.append((dag_id, states or []))
        return sum(1 for state in self.runs.get(dag_id, []) if states is None or state in states)


def precheck(inventory: str, ti: RunsOf | None = None, **params: Any) -> dict:
    return DrillPrecheckOperator(task_id="precheck", inventory_path=inventory).execute(
        {"params": params, "ti": ti or RunsOf()})


def test_precheck_refuses_an_unknown_scenario(fleet: Fleet, tmp_path: Path, apis: ClusterApis, logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    with pytest.raises(AirflowFailException, match=r"unknown scenario 'meteor'; one of \["):
        precheck(inventory, scenario="meteor")
    assert apis.requests == [] and all(host.commands == [] for host in fleet.hosts.values())


def test_precheck_names_what_a_host_fault_needs(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    with pytest.raises(AirflowFailException, match=r"scenario host_isolate needs drill.inject_commands.host_isolate "
                                                   r".* and drill.fault_injector"):
        precheck(inventory, scenario="host_isolate")
    assert apis.requests == []


def test_precheck_skips_an_unhealthy_cluster_before_touching_it(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                                logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    apis.members[0].update(role="replica", state="stopped")  # no leader: a failover is under way
    with pytest.raises(AirflowSkipException, match=r"cluster not healthy, not drilling: expected exactly one "
                                                   r"leader, found none"):
        precheck(inventory, scenario="patroni_stop")
    assert apis.changes() == [] and all(fleet[n].mutations() == [] for n in fleet.hosts)


def test_precheck_picks_the_nights_scenario_from_the_rotation(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                              logins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled run (the Param's default) drills the rotation's scenario of its logical date; without a fault
    injector the rotation leaves the host faults out."""
    inventory = drill_inventory(fleet, tmp_path, apis)
    seen: list[str] = []

    def skip_cluster(self: Any, scenario: str) -> None:
        seen.append(scenario)
        raise AirflowSkipException("stop here")

    monkeypatch.setattr(DrillPrecheckOperator, "_check_config", skip_cluster)
    for day in range(1, 4):
        with pytest.raises(AirflowSkipException):
            DrillPrecheckOperator(task_id="precheck", inventory_path=inventory).execute(
                {"params": {"scenario": "rotation"}, "ti": RunsOf(),
                 "logical_date": datetime(2026, 3, day, 3, tzinfo=timezone.utc)})
    # 2026-03-01 is day 20513 since 1970-01-01: 20513 % 3 == 2, the third of the three enabled scenarios
    assert seen == ["postmaster_kill", "switchover", "patroni_stop"]


def test_precheck_skips_while_a_migration_is_queued_or_running(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                               logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    runs = RunsOf(pg_ha_migration=["success", "queued"])
    with pytest.raises(AirflowSkipException, match=r"pg_ha_migration has 1 queued or running run\(s\): a drill never "
                                                   "starts while the migration works on the cluster"):
        precheck(inventory, runs, scenario="switchover")
    assert runs.asked == [("pg_ha_migration", ["queued", "running"])]
    assert apis.requests == [] and all(host.commands == [] for host in fleet.hosts.values())


def test_the_migration_refuses_to_start_while_a_drill_runs() -> None:
    check = NoDrillRunningOperator(task_id="no_drill_running")
    with pytest.raises(AirflowFailException, match=r"pg_ha_failover_drill has 1 running run\(s\): a drill breaks "
                                                   "the cluster on purpose"):
        check.execute({"ti": RunsOf(pg_ha_failover_drill=["running", "failed"])})
    ok = NoDrillRunningOperator(task_id="no_drill_running").execute({"ti": RunsOf(pg_ha_failover_drill=["success"])})
    assert not ok["changed"] and ok["unchanged"] == ["no pg_ha_failover_drill run is running"]
