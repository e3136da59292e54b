"""The cutover through PgBouncer's pause on the lab (pooler pgbouncer, logical replication): a PgBouncer
on vm1 and vm4, Airflow moved onto it by its own step (the agent restarts the units, the scheduler's
own included), then the cutover done under PAUSE while the probe writer, an Airflow-like unit, commits
every 100 ms through vm1's PgBouncer: no Airflow unit restarts during the cutover, the probe never
fails a transaction, and every acknowledged write is in the cluster."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from lab_fixtures import VM1, WRITE_PORT, Lab, topology

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"
PGBOUNCER_PORT = 6432
UNITS = {topology.AIRFLOW_HOST: ["airflow-scheduler", "airflow-api-server", "airflow-dag-processor",
                                 "airflow-triggerer", "airflow-probe"],
         topology.WORKER_HOST: ["airflow-celery-worker"]}


def units_state(lab: Lab) -> dict[str, tuple[int, int]]:
    """Each Airflow unit's (start time in epoch seconds, automatic restarts)."""
    found = {}
    for host, units in UNITS.items():
        for unit in units:
            shown = lab.ssh(host, f"systemctl show --timestamp=unix -P ActiveEnterTimestamp {unit}; "
                                  f"systemctl show -P NRestarts {unit}").split()
            found[f"{host}/{unit}"] = (int(shown[0].lstrip("@")), int(shown[1]))
    return found


@pytest.fixture(scope="module")
def paused(lab: Lab) -> dict[str, Any]:
    lab.reset_to_provisioned()
    inventory = lab.install_probe()
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"inventory_path": inventory, "migration_method": "logical_replication",
                                   "pooler": "pgbouncer", "run_failover_test": False})
    state = lab.api.wait(DAG, run_id, timeout=2400, progress=lab.progress(DAG, run_id))
    tasks = {(t["task_id"], t["map_index"]): t for t in lab.api.task_instances(DAG, run_id)}
    return {"run_id": run_id, "state": state, "tasks": tasks, "units": units_state(lab),
            "result": (lab.api.xcom(DAG, run_id, "paused_cutover") or {}).get("result") or {}}


def test_the_run_cut_over_through_the_pause(lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    states = {f"{task_id}[{index}]": t["state"] for (task_id, index), t in paused["tasks"].items()}
    assert states["paused_cutover[-1]"] == "success" and states["cutover[-1]"] == "skipped", states
    assert states["undo_logical_source[-1]"] == "success", states
    for host in UNITS:  # every Airflow host moved by its agent, reported by its sensor
        assert any(k.startswith("pgbouncer.airflow_on_pgbouncer[") and v == "success" for k, v in states.items())
    print(f"paused cutover: Airflow waited {paused['result'].get('paused_s')}s, attempt "
          f"{paused['result'].get('attempt')}")
    assert paused["result"]["outcome"] == "success" and paused["result"]["paused_s"] < 30


def test_no_airflow_unit_restarted_during_the_cutover_and_the_probe_never_failed(
        lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    began = datetime.fromisoformat(paused["tasks"][("paused_cutover", -1)]["start_date"]).timestamp()
    restarted = {unit: started for unit, (started, _) in paused["units"].items() if started >= began}
    assert restarted == {}, f"started after the cutover began at {began}: {restarted}"
    failed = {unit: count for unit, (_, count) in paused["units"].items() if count}
    assert failed == {}, f"units that died and were restarted by systemd (a failed transaction): {failed}"


def test_airflow_goes_through_pgbouncer_to_the_cluster_with_every_write_kept(
        lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    for host in UNITS:
        config = lab.ssh(host, "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg")
        assert f"@127.0.0.1:{PGBOUNCER_PORT}/" in config, (host, config.split("@")[-1])
        shown = lab.ssh(host, "cd / && runuser -u postgres -- psql -X -At -h /var/run/postgresql "
                              f"-p {PGBOUNCER_PORT} -U postgres -d pgbouncer -c 'SHOW DATABASES' | grep '^airflow_db|'")
        assert shown.split("|")[2] == str(WRITE_PORT), shown  # HAProxy's write port
    acks = lab.probe_acks()
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq FROM pgha_probe")
        stored = {row[0] for row in cur.fetchall()}
        # the longest wait between two of the probe's commits (one every 100 ms) from the cutover's start on
        began = datetime.fromisoformat(paused["tasks"][("paused_cutover", -1)]["start_date"]).timestamp()
        cur.execute("SELECT coalesce(max(gap), 0) FROM (SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY seq)) "
                    "AS gap FROM pgha_probe WHERE at >= to_timestamp(%s)) g", (began,))
        longest = float(cur.fetchone()[0])
        cur.execute("SELECT count(*) FROM pg_subscription")
        assert cur.fetchone()[0] == 0, "the subscription is gone after the cutover"
    print(f"probe: {len(acks)} acknowledged commits, longest gap between two commits {longest:.2f}s")
    assert len(acks) > 100 and set(acks) - stored == set(), "every acknowledged write is in the cluster"
    smoke = lab.api.trigger("lab_smoke")
    assert lab.api.wait("lab_smoke", smoke, timeout=600) == "success", "Airflow is healthy on the cluster"
