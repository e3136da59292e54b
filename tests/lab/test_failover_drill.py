"""pg_ha_failover_drill on the lab: every scenario once, triggered as an operator would.

The drill runs against the cluster that holds Airflow's own metadata DB (the
state the migration tests leave; this module runs last and migrates first if
it has to). Host crash and isolation go through the fault injector: an sshd
on the outer machine whose key may only run include/drill/fault_gate.py,
which calls `lab/lab crash|start|isolate|heal`.

The DAG is nightly: unpausing it lets the scheduler run the latest scheduled
drill (a switchover) by itself. Each test waits until the scheduler's own runs
are done before it triggers its own, judges its run by that run's own history
row (the leader its precheck saw just before its fault), and pauses the DAG
again afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from lab_fixtures import NODES, VM1, WRITE_PORT, Lab, wait_for_mail
from pghalab import cluster_api

pytestmark = pytest.mark.lab

DAG = "pg_ha_failover_drill"
# The lab's hosts share two cores with everything else on the machine: RTO is measured by
# bench/failover_drill.py against the inventory's SLOs; these tests judge behaviour (no acknowledged
# write lost, the leader moved, the cluster whole again), so they give the RTO a budget no healthy
# failover exceeds.
BEHAVIOUR_ONLY = {"rto_slo_s": 120}
SCENARIOS = ("switchover", "patroni_stop", "postmaster_kill", "host_crash", "host_isolate")


@pytest.fixture(scope="module")
def migrated(lab: Lab) -> None:
    lab.ensure_migrated()


def cluster_view() -> dict[str, Any]:
    for address in NODES.values():
        try:
            return cluster_api.patroni(address, "/cluster", timeout=5).json()
        except (requests.RequestException, ValueError):
            continue
    raise AssertionError("no Patroni member answers")


def wait_whole(timeout: float = 120) -> dict[str, Any]:
    """One leader, two streaming replicas on the leader's timeline, one of them synchronous."""
    deadline, view = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        view = cluster_view()
        members = view.get("members", [])
        leaders = [m for m in members if m["role"] == "leader"]
        replicas = [m for m in members if m["role"] in ("replica", "sync_standby") and m["state"] == "streaming"]
        if (len(members) == 3 and len(leaders) == 1 and len(replicas) == 2
                and any(m["role"] == "sync_standby" for m in replicas)
                and all(m.get("timeline") == leaders[0].get("timeline") for m in replicas)):
            return view
        time.sleep(2)
    raise AssertionError(f"the cluster is not whole: {view}")


def history_row(lab: Lab, run_id: str) -> dict[str, Any]:
    with lab.connect(VM1, WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_jsonb(h) FROM pgha_drill_history h WHERE dag_run_id = %s", (run_id,))
        rows = cur.fetchall()
    assert len(rows) == 1, f"{len(rows)} history rows for {run_id}"
    return rows[0][0]


def etcd_members() -> list[str]:
    answer = cluster_api.etcd(NODES['psg1'], "/v3/cluster/member/list", {}, timeout=5).json()
    return sorted(m["name"] for m in answer["members"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_drill_keeps_every_write_and_the_cluster_whole(lab: Lab, migrated: None, scenario: str) -> None:
    lab.unpause_settled(DAG)  # the scheduled drill that unpausing starts runs (and ends) first
    try:
        wait_whole()
        run_id = lab.api.trigger(DAG, {"scenario": scenario, **BEHAVIOUR_ONLY})
        state = lab.api.wait(DAG, run_id, timeout=1800, progress=lab.progress(DAG, run_id))
    finally:
        lab.api.pause(DAG)  # no run of the scheduler's own during the checks below or the next test
    assert state == "success", lab.failure_report(DAG, run_id)

    row = history_row(lab, run_id)
    print(f"{scenario}: {row}")
    assert row["scenario"] == scenario and row["passed"] is True, row
    assert row["rpo_missing"] == 0 and row["acked"] > 0, row
    view = wait_whole()
    leader_after = next(m["name"] for m in view["members"] if m["role"] == "leader")
    # The baseline is this run's own: the leader its precheck saw just before its fault (the inject
    # refuses a leader that moved since), whatever ran before it.
    if scenario != "postmaster_kill":  # Patroni restarts a killed postmaster in place
        assert leader_after != row["old_leader"], (row, view)
    assert etcd_members() == ["psg1", "psg2", "psg3"]
    assert lab.api.run_state(DAG, run_id) == "success"  # the drilled cluster holds Airflow's own DB


def test_a_degraded_cluster_skips_the_drill_and_mails_why(lab: Lab, migrated: None) -> None:
    """A drill on a cluster that is not whole would test nothing and risk everything: the precheck
    skips, and the skip is news (a night without a drill), so it is mailed with the reason."""
    lab.unpause_settled(DAG)
    wait_whole()
    replica = next(m["name"] for m in cluster_view()["members"] if m["role"] != "leader")
    lab.ssh(replica, "systemctl stop patroni")
    try:
        run_id = lab.api.trigger(DAG, {"scenario": "switchover"})
        lab.api.wait(DAG, run_id, timeout=900)
        precheck = next(t for t in lab.api.task_instances(DAG, run_id) if t["task_id"] == "precheck")
        assert precheck["state"] == "skipped", precheck
        mail = wait_for_mail(lambda m: "precheck" in m["subject"] and run_id in m["body"])
        assert "skipped" in mail["subject"] and "cluster not healthy" in mail["body"], mail
        assert replica in mail["body"], mail
    finally:
        lab.api.pause(DAG)
        lab.ssh(replica, "systemctl start patroni")
    wait_whole(300)


def test_two_nightly_drills_in_a_row_drill_different_scenarios(lab: Lab, migrated: None) -> None:
    """The rotation: each night's scenario comes from its date, so consecutive nights differ."""
    scenarios = []
    lab.unpause_settled(DAG)
    for day in ("2026-11-30T03:00:00+00:00", "2026-12-01T03:00:00+00:00"):
        wait_whole(300)
        run_id = lab.api.trigger(DAG, dict(BEHAVIOUR_ONLY), logical_date=day)  # scenario: the rotation
        state = lab.api.wait(DAG, run_id, timeout=1800, progress=lab.progress(DAG, run_id))
        assert state == "success", lab.failure_report(DAG, run_id)
        row = history_row(lab, run_id)
        assert row["passed"] is True and row["rpo_missing"] == 0, row
        scenarios.append(row["scenario"])
    lab.api.pause(DAG)
    assert scenarios[0] != scenarios[1], scenarios
    wait_whole(300)


def test_the_drill_page_shows_the_history_in_a_browser(lab: Lab, migrated: None) -> None:
    """An operator's view: log into Airflow's UI in a real (headless) Chromium, open the drill page
    from Airflow's menu, and read per scenario what pgha_drill_history holds."""
    from drill_page_browser import drill_page_in_browser
    from lab_fixtures import REPO_ROOT, topology

    with lab.connect(VM1, WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT scenario, count(*), count(*) FILTER (WHERE passed), count(*) FILTER (WHERE NOT passed) "
                    "FROM pgha_drill_history GROUP BY scenario ORDER BY scenario")
        history = cur.fetchall()
    assert history, "the drills above left history"
    shots = REPO_ROOT / "lab" / ".state" / "screenshots"
    view = drill_page_in_browser(topology.api_url(), "admin", lab.secrets["admin_password"],
                                 shots / "drill-page-in-airflow.png", inside_airflow_ui=True)
    rows = view.table.splitlines()
    for scenario, drills, passed, failed in history:
        assert any(line.startswith(f"{scenario} {drills} {passed} {failed} ") for line in rows), (scenario, rows)
    leader = next(m["name"] for m in cluster_view()["members"] if m["role"] == "leader")
    assert f"Leader {leader}" in view.text or leader in view.text.split("Leader", 1)[-1][:200], view.text[:2000]
    assert view.screenshot.stat().st_size > 10_000
