"""The DAG imports cleanly and reads like the runbook."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha_testing import DagBag
from airflow.sdk import BaseSensorOperator

REPO_ROOT = Path(__file__).resolve().parent.parent
PHASE_GROUPS = [
    "preflight",
    "phase1_prepare_hosts",
    "phase2_install_postgres",
    "phase3_etcd_cluster",
    "phase4_patroni",
    "phase5_bootstrap",
    "phase6_data_migration",
    "phase7_haproxy",
    "phase8_repoint_airflow",
    "phase9_validate",
]
SEVEN_DAYS = 7 * 24 * 3600


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    # DagBag(include_examples=False) raises TypeError on 3.3; examples are off via env (conftest).
    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag: DagBag):  # type: ignore[no-untyped-def]
    return dagbag.dags["pg_ha_migration"]


def test_dags_import_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert "pg_ha_migration" in dagbag.dags


def _group(task_id: str) -> str:
    return task_id.split(".", 1)[0] if "." in task_id else task_id


def test_preflight_then_nine_phases_in_runbook_order(dag) -> None:  # type: ignore[no-untyped-def]
    groups = [g for g in dag.task_group.children if g in PHASE_GROUPS]
    assert groups == PHASE_GROUPS
    # every task of a phase runs after every task of the previous phase
    order = {g: i for i, g in enumerate(PHASE_GROUPS)}
    for task in dag.tasks:
        for upstream in task.upstream_list:
            a, b = _group(upstream.task_id), _group(task.task_id)
            if a in order and b in order:
                assert order[a] <= order[b], f"{upstream.task_id} -> {task.task_id} goes backwards"
    # after phase 9, the approval a person gives (with approve_cutover), then the cutover
    approval = dag.get_task("approve_cutover")
    assert {_group(t.task_id) for t in approval.upstream_list} == {"phase9_validate"}
    assert _next(dag, "approve_cutover") == ["cutover", "paused_cutover"]
    cutover = dag.get_task("cutover")
    # the run's last task waits for the outcome the cutover agents record
    assert [t.task_id for t in cutover.downstream_list] == ["cutover_outcome"]
    # then, after a success only (a failed outcome stops it), the source loses what logical replication added
    outcome = dag.get_task("cutover_outcome")
    assert [t.task_id for t in outcome.downstream_list] == ["undo_logical_source"]
    assert dag.get_task("undo_logical_source").trigger_rule == "none_failed"
    # or after the cutover through PgBouncer's pause (pooler pgbouncer), which needs no outcome sensor
    assert [t.task_id for t in dag.get_task("paused_cutover").downstream_list] == ["undo_logical_source"]
    assert not dag.get_task("undo_logical_source").downstream_list


def test_first_task_validates_the_inventory(dag) -> None:  # type: ignore[no-untyped-def]
    """After the one check that no failover drill is running (a drill breaks the cluster on purpose)."""
    roots = [t.task_id for t in dag.roots]
    assert roots == ["preflight.no_drill_running"]
    assert _next(dag, "preflight.no_drill_running") == ["preflight.validate_inventory"]


def test_retries_are_set(dag) -> None:  # type: ignore[no-untyped-def]
    for task in dag.tasks:
        # a bad inventory does not fix itself; a person's answer (or its timeout) is not asked for again
        if task.task_id not in ("preflight.validate_inventory", "approve_cutover"):
            assert task.retries >= 1, task.task_id


def test_every_sensor_has_a_real_timeout(dag) -> None:  # type: ignore[no-untyped-def]
    sensors = [t for t in dag.tasks if isinstance(t, BaseSensorOperator)]
    assert {type(s).__name__ for s in sensors} == {"EtcdHealthSensor", "PatroniLeaderSensor", "HAProxyRoutingSensor",
                                                   "LogicalSyncSensor", "CutoverOutcomeSensor"}
    for sensor in sensors:
        assert sensor.timeout and sensor.timeout < SEVEN_DAYS, sensor.task_id
        assert sensor.mode in {"reschedule", "poke"}


def test_per_node_work_is_mapped_not_copied(dag) -> None:  # type: ignore[no-untyped-def]
    ids = {t.task_id for t in dag.tasks}
    assert not any(name in task_id for task_id in ids for name in ("psg1", "psg2", "psg3", "vm1"))
    mapped = {t.task_id for t in dag.tasks if type(t).__name__ == "MappedOperator"}
    assert {"phase2_install_postgres.install_postgres", "phase3_etcd_cluster.configure_etcd",
            "phase4_patroni.configure_patroni"} <= mapped


def test_params_form_has_no_password(dag) -> None:  # type: ignore[no-untyped-def]
    params = dag.params
    assert set(params.keys()) == {"inventory_path", "phases", "migration_method", "pooler", "run_failover_test",
                                   "defer_waits", "dry_run", "approve_cutover"}
    assert params["dry_run"] is False and params["approve_cutover"] is False  # a plain trigger migrates, unasked
    for key in params.keys():
        assert "pass" not in key.lower() and "secret" not in key.lower()
        param = params.get_param(key)
        assert param.description and param.schema.get("section"), key
    assert params.get_param("phases").schema["items"]["enum"][0] == "1_prepare_hosts"


def _next(dag, task_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(t.task_id for t in dag.get_task(task_id).downstream_list)


def test_waits_are_visible_sensors_after_the_work_they_wait_for(dag) -> None:  # type: ignore[no-untyped-def]
    """HAProxy's routing and the switchover's new leader are waited for by sensors, not inside operators."""
    assert _next(dag, "phase7_haproxy.switch_haproxy") == ["phase7_haproxy.haproxy_routes_like_patroni"]
    assert [t.task_id for t in dag.get_task("phase9_validate.routing_through_haproxy").upstream_list] == [
        "phase9_validate.haproxy_routes_like_patroni"]
    assert _next(dag, "phase9_validate.switchover_test") == ["phase9_validate.cluster_healthy_after_switchover"]
    assert _next(dag, "phase9_validate.cluster_healthy_after_switchover") == [
        "phase9_validate.haproxy_follows_the_switchover"]
    assert _next(dag, "phase9_validate.haproxy_follows_the_switchover") == ["phase9_validate.routing_after_switchover"]


def test_the_sensor_after_the_switchover_waits_for_another_leader(dag) -> None:  # type: ignore[no-untyped-def]
    """not_leader renders the switchover's old leader from its XCom, and nothing when the test was skipped."""
    import jinja2

    sensor = dag.get_task("phase9_validate.cluster_healthy_after_switchover")
    template = jinja2.Environment().from_string(sensor.not_leader)

    class TI:
        def __init__(self, value: object) -> None:
            self.value = value

        def xcom_pull(self, task_ids: str) -> object:
            assert task_ids == "phase9_validate.switchover_test"
            return self.value

    summary = {"changed": True, "result": {"old_leader": "psg1", "new_leader": "psg2"}}
    assert template.render(ti=TI(summary)) == "psg1"
    assert template.render(ti=TI(None)) == ""


def test_bad_inventory_does_not_break_parsing_and_fails_the_first_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgha.operators.host import ValidateInventoryOperator
    from pgha.inventory import InventoryError

    bad = tmp_path / "bad.yml"
    bad.write_text("hosts: 3\n")
    monkeypatch.setenv("PGHA_INVENTORY", str(bad))
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    assert bag.dags["pg_ha_migration"].params["inventory_path"] == str(bad)
    with pytest.raises(InventoryError, match="hosts: 3 is not of type array"):
        ValidateInventoryOperator(task_id="validate_inventory", inventory_path=str(bad)).execute({"params": {}})


def test_missing_connections_are_named_before_any_host_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgha.compat import AirflowException
    from pgha.operators.host import ValidateInventoryOperator

    for conn_id in ("ssh_vm1", "ssh_psg1", "ssh_psg2", "pgha_source_db", "pgha_pg_superuser", "pgha_pg_replication",
                    "pgha_airflow_db", "pgha_patroni_api", "pgha_etcd_root", "pgha_etcd_patroni"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", '{"conn_type": "generic", "host": "x"}')
    # etcd RBAC is on by default: its users' Connections are named too, before phase 3 would need them
    with pytest.raises(AirflowException, match=r"missing Airflow connections: ssh_psg3 \(SSH to psg3\), "
                                               r"pgha_etcd_pgha \(pgha's etcd user\)$"):
        ValidateInventoryOperator(task_id="validate_inventory").execute({"params": {}})


def test_form_and_grid_read_like_the_runbook(dag) -> None:  # type: ignore[no-untyped-def]
    """Phases as a multi-select (an array with examples), per-host names for mapped tasks, a doc for every task."""
    phases = dag.params.get_param("phases").schema
    assert phases["type"] == "array" and phases["examples"] == phases["items"]["enum"]
    assert set(phases["values_display"]) == set(phases["examples"])
    mapped = [t for t in dag.tasks if type(t).__name__ == "MappedOperator"]
    assert mapped and all(t.map_index_template == "{{ task.host }}" for t in mapped)
    assert [t.task_id for t in dag.tasks if not t.doc_md] == []


# ------------------------------------------------------------------ the failover drill


@pytest.fixture(scope="module")
def drill(dagbag: DagBag):  # type: ignore[no-untyped-def]
    return dagbag.dags["pg_ha_failover_drill"]


def _try_s(task) -> float:  # type: ignore[no-untyped-def]
    """One try at its longest: its execution_timeout; a rescheduling sensor's try lasts until its timeout
    (counted from the try's first poke) plus one more poke."""
    seconds = task.execution_timeout.total_seconds()
    if isinstance(task, BaseSensorOperator):
        seconds += task.timeout + task.poke_interval
    return seconds


def _worst_s(task) -> float:  # type: ignore[no-untyped-def]
    assert task.execution_timeout is not None and not task.retry_exponential_backoff, task.task_id
    return (task.retries + 1) * _try_s(task) + task.retries * task.retry_delay.total_seconds()


def test_the_drills_run_timeout_never_cuts_heal_short(drill) -> None:  # type: ignore[no-untyped-def]
    """A run timeout ends the run's tasks: one before heal and cluster_whole ended would leave a host crashed,
    isolated or without Patroni. Every task runs one after the other, so the run must outlast the sum of all
    their worst cases (every try into its timeout, every retry taken), with time left to schedule each try."""
    timeout = drill.dagrun_timeout.total_seconds()
    path = [t.task_id for t in drill.tasks]
    assert [[u.task_id for u in t.upstream_list] for t in drill.tasks] == [[]] + [[p] for p in path[:-1]]
    heal = drill.get_task("heal")
    up_to_heal = [drill.get_task(t) for t in path[:path.index("heal")]]
    assert timeout >= sum(_worst_s(t) for t in up_to_heal) + _worst_s(heal)
    assert timeout >= sum(_worst_s(t) for t in drill.tasks)
    tries = sum(t.retries + 1 for t in drill.tasks)
    assert timeout - sum(_worst_s(t) for t in drill.tasks) >= 30 * tries  # scheduling slack per try
    assert _worst_s(heal) >= 4 * 7 * 60  # heal keeps its 7 minutes and 3 retries
    assert timeout < 24 * 3600  # the next night's drill is not blocked by a stuck run


def test_every_drill_task_says_what_it_does(drill) -> None:  # type: ignore[no-untyped-def]
    for task in drill.tasks:
        assert task.doc_md and len(task.doc_md) > 40, task.task_id
    assert "precheck" in drill.doc_md and "every scenario is drilled" in " ".join(drill.doc_md.split())


def test_the_drill_scenario_is_a_select_that_defaults_to_the_rotation(drill) -> None:  # type: ignore[no-untyped-def]
    from pgha.inventory import DRILL_SCENARIOS

    scenario = drill.params.get_param("scenario")
    assert scenario.value == "rotation"
    assert scenario.schema["enum"] == ["rotation", *DRILL_SCENARIOS]
    assert set(scenario.schema["values_display"]) == set(scenario.schema["enum"])
    for key in drill.params.keys():
        param = drill.params.get_param(key)
        assert param.description and param.schema.get("section") and param.schema.get("title"), key
