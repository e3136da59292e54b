"""The drill operators' steps after the precheck on recorded hosts (the probe host keeps the drill's
records) with Patroni's REST API as a real-HTTP stand-in: what each step runs where, and that a retry
never injects twice or heals what already answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from fixture_secrets import PATRONI_REST_PASSWORD, POSTGRES_PASSWORD
from pgha.operators.drill import (
    AnalyseDrillOperator,
    DrillOperator,
    DrillPrecheckOperator,
    HealOperator,
    InjectFaultOperator,
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


@pytest.mark.parametrize("os", BOTH)
def test_patroni_stop_is_injected_once(fleet: Fleet, tmp_path: Path, apis: ClusterApis, os: str) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, os)
    vm1, psg1 = fleet["vm1"], fleet["psg1"]
    first = step(InjectFaultOperator, inventory, plan())
    assert psg1.mutations() == ["systemctl stop patroni.service"] and not psg1.units["patroni.service"].active
    assert all(fleet[n].commands == [] for n in ("psg2", "psg3"))
    record = json.loads(vm1.files[FAULT_RECORD].content)
    assert record["scenario"] == "patroni_stop" and record["detail"] == "systemctl stop patroni.service"
    assert record["t_inject"] <= record["t_injected"] and vm1.files[FAULT_RECORD].mode == "600"
    # the record is written before the fault, so a worker lost mid-injection still never injects twice
    assert vm1.mutations() == [f"put_file {FAULT_RECORD} (root:root 0600)"] * 2
    assert first["changes"] == ["patroni_stop injected on psg1: systemctl stop patroni.service"]

    fleet.forget()
    retry = step(InjectFaultOperator, inventory, plan())
    assert not retry["changed"] and retry["result"] == record
    assert psg1.commands == [] and vm1.mutations() == []


def test_switchover_is_asked_of_patroni_with_the_planned_candidate(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                                   logins: None) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    step(InjectFaultOperator, inventory, plan("switchover"))
    [switchover] = apis.changes()
    assert (switchover.path, switchover.body) == ("/switchover", {"leader": "psg1", "candidate": "psg2"})
    assert all(fleet[n].commands == [] for n in ("psg1", "psg2", "psg3"))
    apis.requests.clear()
    assert not step(InjectFaultOperator, inventory, plan("switchover"))["changed"]
    assert apis.changes() == []


def test_host_crash_runs_the_inventorys_command_on_the_fault_injector(fleet: Fleet, tmp_path: Path,
                                                                     apis: ClusterApis,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis, **HOST_FAULTS)
    host = injector(fleet, monkeypatch)
    step(InjectFaultOperator, inventory, plan("host_crash"))
    assert host.mutations() == ["systemctl stop lab-node@psg1.service"]
    assert fleet["psg1"].commands == []


def test_no_fault_when_the_leader_moved_since_the_precheck(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = drill_inventory(fleet, tmp_path, apis)
    apis.members[0]["role"], apis.members[1]["role"] = "replica", "leader"
    with pytest.raises(AirflowFailException, match=r"the leader moved since the precheck \(psg1 -> psg2\): "
                                                   "not injecting; trigger a new drill"):
        step(InjectFaultOperator, inventory, plan())
    assert FAULT_RECORD not in fleet["vm1"].files and fleet["psg1"].commands == []


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


def precheck(inventory: str, **params: Any) -> dict:
    return DrillPrecheckOperator(task_id="precheck", inventory_path=inventory).execute({"params": params})


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
