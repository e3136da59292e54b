"""The dry_run param: every file rendered and diffed against each host, the command plan logged, nothing changed.

The phase operators run against recording fakes (tests/recording_host.py) seen through a dry run;
the tests compare each fake host's whole state before and after, and read the task logs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from command_plan import PLAN_PASSWORD, _connections
from pgha.compat import AirflowFailException, AirflowSkipException
from pgha.hooks.dryrun import reads_only
from pgha.inventory import load_inventory
from recording_host import DEBIAN_12, FakeFile, Fleet, fleet_inventory

STATE = ("files", "dirs", "packages", "units", "users", "sysctl", "firewalld_ports", "selinux_ports",
         "selinux_booleans", "hostname", "binaries")
DRY = {"params": {"dry_run": True, "migration_method": "dump_restore"}}
OLD_AIRFLOW_SECRET = "source-db-secret-in-airflow-cfg"


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    """What the tasks logged (Airflow's task logger writes to the captured stdout/stderr here)."""
    captured = capsys.readouterr()
    return captured.out + captured.err


def snapshot(fleet: Fleet) -> dict[str, Any]:
    return {name: copy.deepcopy({key: getattr(host, key) for key in STATE}) for name, host in fleet.hosts.items()}


@pytest.fixture
def dry_fleet(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Fleet, str]:
    path = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    for name, value in _connections(load_inventory(path)).items():
        monkeypatch.setenv(name, value)
    return fleet, path


def run_dry(cls: type, path: str, **kwargs: Any) -> Any:
    """Execute one task in a dry run: its XCom, or the skip it ended with."""
    try:
        return cls(task_id=cls.__name__, inventory_path=path, **kwargs).execute(DRY)
    except AirflowSkipException as skip:
        return skip


def phase_tasks(path: str) -> list[tuple[type, dict[str, Any]]]:
    """The host-changing tasks of phases 1-5, 7 and 8 in the DAG's order (mapped ones host by host)."""
    from pgha.operators.airflow import StageAirflowConfigOperator
    from pgha.operators.etcd import ConfigureEtcdOperator, InstallEtcdOperator
    from pgha.operators.haproxy import HAProxySwitchOperator, InstallHAProxyOperator
    from pgha.operators.host import PrepareHostOperator
    from pgha.operators.patroni import ConfigurePatroniOperator, InstallPatroniOperator, StartPatroniOperator
    from pgha.operators.postgres import InstallPostgresOperator

    inv = load_inventory(path)
    nodes = list(inv.database_nodes)
    tasks: list[tuple[type, dict[str, Any]]] = [(PrepareHostOperator, {"host": h}) for h in inv.managed_host_names]
    for cls in (InstallPostgresOperator, InstallEtcdOperator, ConfigureEtcdOperator, InstallPatroniOperator,
                ConfigurePatroniOperator, StartPatroniOperator):
        tasks += [(cls, {"host": h}) for h in nodes]
    tasks += [(InstallHAProxyOperator, {}), (HAProxySwitchOperator, {})]
    tasks += [(StageAirflowConfigOperator, {"host": a.host}) for a in inv.airflow_hosts]
    return tasks


def test_a_dry_run_of_every_phase_changes_nothing_and_logs_diffs_and_commands(
        dry_fleet: tuple[Fleet, str], capsys: pytest.CaptureFixture[str]) -> None:
    fleet, path = dry_fleet
    inv = load_inventory(path)
    airflow = inv.airflow_hosts[0]
    fleet[airflow.host].files[airflow.config] = FakeFile(
        f"[database]\nsql_alchemy_conn = postgresql://airflow:{OLD_AIRFLOW_SECRET}@10.0.0.9/airflow_db\n")
    fleet["psg1"].files["/etc/hosts"] = FakeFile("127.0.0.1\tlocalhost\n10.9.9.9\tpsg1-old\n")
    before = snapshot(fleet)

    outcomes = [(cls.__name__, kwargs, run_dry(cls, path, **kwargs)) for cls, kwargs in phase_tasks(path)]

    assert snapshot(fleet) == before
    for name, host in fleet.hosts.items():
        assert host.mutations() == [], name  # only reads reached a host
    log = logged(capsys)
    # the command plan: what each task would have run
    assert "DRY RUN would run: DEBIAN_FRONTEND=noninteractive apt-get install" in log
    assert "DRY RUN would run: systemctl enable --quiet etcd" in log
    assert "DRY RUN would run: systemctl start patroni" in log
    # every file rendered, with its unified diff against the host's (a new file against /dev/null)
    assert "would create /etc/systemd/system/etcd.service (root:root 0644)" in log
    assert "+++ /etc/systemd/system/etcd.service (as pgha would write it)" in log
    assert "--- /etc/hosts (on the host now)" in log and " 10.9.9.9\tpsg1-old\n+# BEGIN pgha managed hosts" in log
    # a file that holds secrets: that it changes, never its content
    assert "would create /etc/patroni/patroni.yml (postgres:postgres 0600)" in log
    assert "it holds secrets, its content is not shown" in log
    for conn_id in _connections(inv):
        assert PLAN_PASSWORD.format(conn_id=conn_id.removeprefix("AIRFLOW_CONN_").lower()) not in log
    assert OLD_AIRFLOW_SECRET not in log
    # each task ends with its plan: planned through (XCom) or stopped, skipped, with the reason
    plans = {(name, kw.get("host")): out for name, kw, out in outcomes}
    prepared = plans[("PrepareHostOperator", "psg1")]
    assert prepared["dry_run"] is True and any("/etc/hosts" in line for line in prepared["plan"])
    assert "DRY RUN PLAN PrepareHostOperator:" in log
    stopped = plans[("StageAirflowConfigOperator", airflow.host)]  # it proves a login through HAProxy: not there
    assert isinstance(stopped, AirflowSkipException) and "the plan stops here" in str(stopped)
    assert not any(isinstance(out, Exception) and not isinstance(out, AirflowSkipException) for *_, out in outcomes)


def test_a_dry_run_on_hosts_already_done_plans_no_change(dry_fleet: tuple[Fleet, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """After a real run of phase 1, a dry run of it finds nothing to do and says so."""
    from pgha.operators.host import PrepareHostOperator

    fleet, path = dry_fleet
    PrepareHostOperator(task_id="prepare", inventory_path=path, host="psg1").execute({"params": {}})
    result = run_dry(PrepareHostOperator, path, host="psg1")
    assert result["plan"] == []
    assert "DRY RUN PLAN PrepareHostOperator: no change" in logged(capsys)


@pytest.mark.parametrize("command", [
    "cat /etc/os-release", "systemctl is-active --quiet patroni", "systemctl cat etcd.service >/dev/null",
    "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' -- haproxy socat", "sysctl -n net.ipv4.ip_forward",
    "/usr/bin/etcd --version", "stat -c '%U %G %a' /etc/hosts", "firewall-cmd --permanent --query-port=5432/tcp",
    "cat /tmp/x 2>/dev/null || true", "date +%s.%N", "hostname",
])
def test_reads_run_in_a_dry_run(command: str) -> None:
    assert reads_only(command)


@pytest.mark.parametrize("command", [
    "systemctl start patroni", "hostname psg1", "sysctl -w vm.swappiness=1", "cat /etc/hosts; rm -rf /",
    "cat /etc/hosts > /etc/passwd", "test -e /x && reboot", "echo show stat | socat -t 5 stdio /run/haproxy.sock",
    "date -s 2020-01-01", "cat $(rm -f /etc/hosts)", "ls `reboot`", "apt-get install -y haproxy",
    "firewall-cmd --permanent --add-port=5432/tcp", "rpm -q x\nreboot", "systemctl enable --quiet etcd",
])
def test_anything_else_is_only_planned(command: str) -> None:
    assert not reads_only(command)


# ------------------------------------------------------------------ the DAG in a dry run


@pytest.fixture(scope="module")
def dag():  # type: ignore[no-untyped-def]
    from pgha_testing import DagBag

    return DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags")).dags["pg_ha_migration"]


def test_a_dry_run_skips_the_cutover_and_everything_that_would_wait_or_change_a_database(
        dag, fleet: Fleet) -> None:  # type: ignore[no-untyped-def]
    """Every task from the approval on, every sensor and every database task skips itself before it
    reaches any host; only preflight (reads) and the host-planning tasks run."""
    after_phase9 = {"approve_cutover", "cutover", "cutover_outcome", "undo_logical_source", "paused_cutover"}
    assert after_phase9 <= {t.task_id for t in dag.tasks}
    modes = {t.task_id: getattr(t.operator_class if type(t).__name__ == "MappedOperator" else t, "dry_run_mode", None)
             for t in dag.tasks}
    planning = {t for t, mode in modes.items() if mode == "plan"}
    checking = {t for t, mode in modes.items() if mode == "check"}
    assert checking == {"preflight.no_drill_running", "preflight.validate_inventory", "preflight.check_host",
                        "preflight.check_airflow_host", "preflight.check_source_db", "preflight.managed_hosts",
                        "preflight.database_nodes", "preflight.airflow_hosts"}
    assert not {t for t in planning if not t.startswith(("phase1", "phase2", "phase3", "phase4", "phase5",
                                                          "phase7", "phase8"))}
    skipping = [t for t in dag.tasks if modes[t.task_id] == "skip" and type(t).__name__ != "MappedOperator"]
    assert after_phase9 <= {t.task_id for t in skipping}
    for task in skipping:
        with pytest.raises(AirflowSkipException, match="^dry run: not run"):
            task.execute({"params": {"dry_run": True, "phases": ["8_repoint_airflow", *dag.params["phases"]]},
                          "ti": None})
    assert all(not host.commands for host in fleet.hosts.values())


def test_without_dry_run_the_cutover_tasks_do_not_skip_for_it(dag) -> None:  # type: ignore[no-untyped-def]
    from pgha.runtime import InventoryMixin

    task = dag.get_task("cutover")
    assert isinstance(task, InventoryMixin)
    task.skip_unless_selected({"params": {"dry_run": False}})  # no skip
    assert task.in_dry_run is False


# ------------------------------------------------------------------ the approval before the cutover


def approval_text(path: str, **kwargs: Any) -> tuple[str, str]:
    from pgha.approval import cutover_summary

    return cutover_summary(load_inventory(path), **{"method": "dump_restore", "pooler": "none",
                                                    "size_bytes": 1180 * 1024**2, "size_pretty": "1180 MB",
                                                    **kwargs})


def test_the_approval_says_size_method_window_and_hosts_to_restart(dry_fleet: tuple[Fleet, str]) -> None:
    _, path = dry_fleet
    inv = load_inventory(path)
    subject, body = approval_text(path)
    assert inv.postgres.database in subject and "psg1, psg2, psg3" in subject
    assert "1180 MB (1,237,319,680 bytes)" in body
    assert "dump_restore: the whole database is copied while Airflow is stopped" in body
    assert "**Expected stopped window:** about 117 s (up to 3 min 54 s on a slower machine)" in body  # lab: 120 s
    for airflow in inv.airflow_hosts:
        assert f"`{airflow.host}`: " + ", ".join(f"`{u}`" for u in airflow.units) in body
    _, logical = approval_text(path, method="logical_replication")
    assert "about 62 s" in logical  # the lab measured 63 s at this size
    _, pooled = approval_text(path, pooler="pgbouncer")
    assert "Hosts to restart:** none" in pooled and "PAUSE" in pooled
    # every table is compared before the pause; inside it only the changed ones: all of them at worst
    assert ("about 1.0 s plus the compare of the tables Airflow writes meanwhile (at most about 38 s if every table "
            "changed, up to 76 s on a slower machine)") in pooled
    _, unknown = approval_text(path, size_bytes=None, size_pretty=None)
    assert "unknown" in unknown


def test_preflight_estimates_every_way_to_cut_over_from_the_size() -> None:
    from pgha.approval import window_estimates

    small = window_estimates(54 * 1024**2)
    assert small == {
        "dump_restore (Airflow stopped)": "about 29 s (up to 58 s on a slower machine)",
        "logical_replication (Airflow stopped)": "about 27 s (up to 53 s on a slower machine)",
        "logical_replication + pooler pgbouncer (Airflow running, its transactions held)":
            "about 1.0 s plus the compare of the tables Airflow writes meanwhile (at most about 2.7 s if every table "
            "changed, up to 5.4 s on a slower machine)",
    }
    assert set(window_estimates(None).values()) == {"unknown (no size)"}


def test_the_approval_skips_unless_asked_for(dry_fleet: tuple[Fleet, str]) -> None:
    from pgha.operators.approval import CutoverApprovalOperator

    _, path = dry_fleet
    op = CutoverApprovalOperator(task_id="approve_cutover", inventory_path=path, phase="8_repoint_airflow")
    with pytest.raises(AirflowSkipException, match="approve_cutover is off"):
        op.execute({"params": {"approve_cutover": False}})
    with pytest.raises(AirflowSkipException, match="^dry run: not run"):
        op.execute({"params": {"approve_cutover": True, "dry_run": True}})
    with pytest.raises(AirflowSkipException, match="not selected"):
        op.execute({"params": {"approve_cutover": True, "phases": ["9_validate"]}})


def test_the_approval_is_airflows_human_in_the_loop_operator_where_airflow_has_one() -> None:
    import airflow
    from packaging.version import Version
    from pgha.operators import approval

    if Version(airflow.__version__) >= Version("3.1"):
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        assert issubclass(approval.CutoverApprovalOperator, ApprovalOperator)
        op = approval.CutoverApprovalOperator(task_id="approve_cutover")
        assert op.ignore_downstream_trigger_rules  # Reject skips the cutover and everything after it
    else:
        assert approval.ApprovalOperator is None and approval.HITL_MISSING


def test_an_approval_asked_for_on_airflow_without_hitl_fails_and_says_why(
        dry_fleet: tuple[Fleet, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3.0 (no human-in-the-loop operator): the cutover never starts unapproved."""
    from pgha.operators import approval

    _, path = dry_fleet
    monkeypatch.setattr(approval, "ApprovalOperator", None)
    monkeypatch.setattr(approval, "HITL_MISSING", "Human in the loop functionality needs Airflow 3.1+.")
    op = approval.CutoverApprovalOperator(task_id="approve_cutover", inventory_path=path)
    with pytest.raises(AirflowFailException, match="needs Airflow 3.1 or later.*does not start unapproved"):
        op.execute({"params": {"approve_cutover": True}})
