"""The cutover through PgBouncer's pause on the lab (pooler pgbouncer, logical replication): a PgBouncer
on vm1 and vm4, Airflow moved onto it by its own step (the agent restarts the units, the scheduler's
own included), then the cutover done under PAUSE while the probe writer, an Airflow-like unit, commits
every 100 ms through vm1's PgBouncer. Phase 6 restarts the source (wal_level = logical) under PAUSE too.

First a forced failure inside the pause: a row only the cluster has (written there through HAProxy
once phase 7 set it up) makes the comparison fail, every try resumes on the source, and the run fails with nothing
lost. Then the row goes, the cutover is cleared and succeeds. Throughout: no Airflow unit restarts
after the move, the probe never fails a transaction, and every acknowledged write is kept; the cluster
holds the source's history of Airflow runs row for row, copied over a subscription that verified the
source's certificate (this is the main session's logical-replication migration). Last, the
nightly drill's switchover with pgbouncer.enabled: Airflow's PgBouncers paused until HAProxy sends
writes to the new leader, no Airflow transaction failed."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from lab_fixtures import VM1, WRITE_PORT, Lab, topology

VM1_NAME = topology.AIRFLOW_HOST
INVENTORY = "/etc/pgha/inventory-probe.yml"  # Lab.install_probe's

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"
PGBOUNCER_PORT = 6432
UNITS = {topology.AIRFLOW_HOST: ["airflow-scheduler", "airflow-api-server", "airflow-dag-processor",
                                 "airflow-triggerer", "airflow-probe"],
         topology.WORKER_HOST: ["airflow-celery-worker"]}


def units_state(lab: Lab) -> dict[str, tuple[int, int]]:
    """Each Airflow unit's (start time in epoch seconds, automatic restarts so far); every one must be active."""
    found = {}
    for host, units in UNITS.items():
        for unit in units:
            shown = dict(line.split("=", 1) for line in lab.ssh(
                host, f"systemctl show --timestamp=unix -p ActiveState -p ActiveEnterTimestamp -p NRestarts {unit}"
            ).splitlines() if "=" in line)
            assert shown.get("ActiveState") == "active", f"{host}/{unit}: {shown}"
            found[f"{host}/{unit}"] = (int(shown["ActiveEnterTimestamp"].lstrip("@")), int(shown["NRestarts"]))
    return found


DRIFT_SEQ = 10**12  # a probe row the source never has
HISTORY = ("SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM task_instance t "
           "WHERE dag_id = 'lab_history'")  # the lab's provisioned history of Airflow runs


def pgbouncer_backends(lab: Lab) -> dict[str, tuple[str, int]]:
    found = {}
    for host in UNITS:
        shown = lab.ssh(host, "cd / && runuser -u postgres -- psql -X -At -h /var/run/postgresql "
                              f"-p {PGBOUNCER_PORT} -U postgres -d pgbouncer -c 'SHOW DATABASES' | grep '^airflow_db|'")
        fields = shown.strip().split("|")
        found[host] = (fields[1], int(fields[2]))
    return found


def wait_for_task(lab: Lab, run_id: str, task_id: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {t["task_id"]: t["state"] for t in lab.api.task_instances(DAG, run_id)}
        if states.get(task_id) == "success":
            return
        if lab.api.run_state(DAG, run_id) in ("failed", "success") or time.monotonic() > deadline:
            raise AssertionError(f"{task_id} did not succeed: {states.get(task_id)}\n"
                                 + lab.failure_report(DAG, run_id))
        time.sleep(5)


def cluster_sql(lab: Lab, statement: str, *args: Any) -> None:
    with lab.connect(host=VM1, port=WRITE_PORT, superuser=True) as conn, conn.cursor() as cur:
        cur.execute(statement, args)


@pytest.fixture(scope="module")
def paused(lab: Lab) -> dict[str, Any]:
    lab.reset_to_provisioned()
    history_before = lab.source_sql(HISTORY).strip()
    inventory = lab.install_probe()
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"inventory_path": inventory, "migration_method": "logical_replication",
                                   "pooler": "pgbouncer", "run_failover_test": False})
    # Airflow moved onto PgBouncer (by then its agents are done); from here on no unit may restart: not for
    # phase 6's source restart (done under PAUSE), not for the cutover
    wait_for_task(lab, run_id, "phase3_etcd_cluster.etcd_healthy")
    moved_at, before = time.time(), units_state(lab)
    wait_for_task(lab, run_id, "phase7_haproxy.haproxy_routes_like_patroni")  # HAProxy's write port exists
    drifted_at = time.time()
    cluster_sql(lab, "INSERT INTO pgha_probe (seq) VALUES (%s)", DRIFT_SEQ)
    failed = lab.api.wait(DAG, run_id, timeout=2400, progress=lab.progress(DAG, run_id))
    after_failure = {"state": failed, "backends": pgbouncer_backends(lab), "units": units_state(lab),
                     "acks": lab.probe_acks(), "source_seqs": {int(x) for x in lab.source_sql(
                         "SELECT seq FROM pgha_probe").split()}}
    cluster_sql(lab, "DELETE FROM pgha_probe WHERE seq = %s", DRIFT_SEQ)
    lab.api.clear(DAG, run_id, ["paused_cutover", "undo_logical_source"])
    state = lab.api.wait(DAG, run_id, timeout=1200, progress=lab.progress(DAG, run_id))
    tasks = {(t["task_id"], t["map_index"]): t for t in lab.api.task_instances(DAG, run_id)}
    return {"run_id": run_id, "state": state, "tasks": tasks, "units": units_state(lab), "drifted_at": drifted_at,
            "moved_at": moved_at, "units_before": before, "history_before": history_before,
            "after_failure": after_failure,
            "result": (lab.api.xcom(DAG, run_id, "paused_cutover") or {}).get("result") or {}}


def test_a_failure_inside_the_pause_resumed_on_the_source_with_nothing_lost(
        lab: Lab, paused: dict[str, Any]) -> None:
    seen = paused["after_failure"]
    assert seen["state"] == "failed", "the cluster differed: the cutover must not have gone through"
    log = "\n".join(lab.api.task_log(DAG, paused["run_id"], "paused_cutover", try_number=1))
    assert "the cluster differs from the source" in log and "undone" in log, log[-3000:]
    source_port = topology.POSTGRES_PORT
    assert seen["backends"] == {topology.AIRFLOW_HOST: ("127.0.0.1", source_port),
                                topology.WORKER_HOST: (VM1, source_port)}, "every PgBouncer back on the source"
    assert set(seen["acks"]) - seen["source_seqs"] == set(), "every acknowledged write is in the source"
    assert DRIFT_SEQ not in seen["source_seqs"]
    restarted = {u: t for u, (t, _) in seen["units"].items() if t >= paused["drifted_at"]}
    assert restarted == {}, f"Airflow units started while the cutover failed: {restarted}"


def test_the_run_cut_over_through_the_pause(lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    states = {f"{task_id}[{index}]": t["state"] for (task_id, index), t in paused["tasks"].items()}
    assert states["paused_cutover[-1]"] == "success" and states["cutover[-1]"] == "skipped", states
    assert states["undo_logical_source[-1]"] == "success", states
    moved = [k for k, v in states.items() if k.startswith("pgbouncer.airflow_on_pgbouncer[") and v == "success"]
    assert len(moved) == len(UNITS), states  # every Airflow host moved by its agent, reported by its sensor
    print(f"paused cutover: Airflow waited {paused['result'].get('paused_s')}s, attempt "
          f"{paused['result'].get('attempt')}")
    assert paused["result"]["outcome"] == "success" and paused["result"]["paused_s"] < 30


def test_no_airflow_unit_restarted_from_the_move_through_the_cutover_and_the_probe_never_failed(
        lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    began = paused["moved_at"]  # the move done; before phase 6 restarts the source and the cutover's first try
    restarted = {unit: started for unit, (started, _) in paused["units"].items() if started >= began}
    assert restarted == {}, f"started after Airflow's move onto PgBouncer at {began}: {restarted}"
    failed = {unit: (paused["units_before"][unit][1], count) for unit, (_, count) in paused["units"].items()
              if count != paused["units_before"][unit][1]}
    assert failed == {}, f"units systemd restarted after they died (a failed transaction), before/after: {failed}"


def test_airflow_goes_through_pgbouncer_to_the_cluster_with_every_write_kept(
        lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    for host in UNITS:
        config = lab.ssh(host, "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg")
        assert f"@127.0.0.1:{PGBOUNCER_PORT}/" in config, (host, config.split("@")[-1])
    assert pgbouncer_backends(lab) == {topology.AIRFLOW_HOST: ("127.0.0.1", WRITE_PORT),
                                       topology.WORKER_HOST: (VM1, WRITE_PORT)}, "HAProxy's write port"
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
        cur.execute(HISTORY)
        count, digest = cur.fetchone()
    # the same history of Airflow runs as the source had, row for row
    assert f"{count}|{digest}" == paused["history_before"]
    # the source's certificate is the cluster CA's (the lab's vm1, as an operator's CA would sign it): the
    # subscription verified it, so the copy could not be read by a man in the middle
    start = paused["tasks"][("phase6_data_migration.start_logical_replication", -1)]
    log = "\n".join(lab.api.task_log(DAG, paused["run_id"], start["task_id"], start["try_number"], start["map_index"]))
    assert "the subscription connects to the source with sslmode=verify-full" in log, log[-3000:]
    print(f"probe: {len(acks)} acknowledged commits, longest gap between two commits {longest:.2f}s")
    assert len(acks) > 100 and set(acks) - stored == set(), "every acknowledged write is in the cluster"
    smoke = lab.api.trigger("lab_smoke")
    assert lab.api.wait("lab_smoke", smoke, timeout=600) == "success", "Airflow is healthy on the cluster"


DRILL = "pg_ha_failover_drill"


def drill_switchover_through_the_pause(lab: Lab, inventory: str) -> dict[str, Any]:
    """The nightly drill's switchover with pgbouncer.enabled in its inventory (a copy of ``inventory``)."""
    import yaml

    raw = yaml.safe_load(lab.ssh(VM1_NAME, f"cat {inventory}"))
    raw["pgbouncer"] = {"enabled": True, "port": PGBOUNCER_PORT}
    with_pgbouncer = "/etc/pgha/inventory-pgbouncer.yml"
    lab.put(VM1_NAME, with_pgbouncer, yaml.safe_dump(raw))
    lab.ssh(VM1_NAME, f"chmod 0644 {with_pgbouncer}")
    lab.unpause_settled(DRILL)  # the scheduled drill that unpausing starts runs (and ends) first
    # That run is the plain drill (the lab's own inventory: no pgbouncer.enabled): its switchover may fail a
    # transaction in flight, which ends the probe by design (and systemd gives up restarting it while no
    # leader answers). The probe starts again, so that the drill under test starts from running units.
    lab.ssh(VM1_NAME, "systemctl is-active --quiet airflow-probe || "
                      "{ systemctl reset-failed airflow-probe; systemctl start airflow-probe; }")
    before = units_state(lab)
    try:
        run_id = lab.api.trigger(DRILL, {"scenario": "switchover", "inventory_path": with_pgbouncer,
                                         "rto_slo_s": 120})
        state = lab.api.wait(DRILL, run_id, timeout=1200, progress=lab.progress(DRILL, run_id))
    finally:
        lab.api.pause(DRILL)
    inject = (lab.api.xcom(DRILL, run_id, "inject") or {}).get("result") or {}
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(gap), 0) FROM (SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY seq)) "
                    "AS gap FROM pgha_probe WHERE at >= to_timestamp(%s)) g", (inject.get("t_inject", 0),))
        longest = float(cur.fetchone()[0])
    return {"run_id": run_id, "state": state, "inject": inject, "before": before, "after": units_state(lab),
            "longest_gap": longest, "log": "\n".join(lab.api.task_log(DRILL, run_id, "inject", try_number=1))}


def test_the_drills_switchover_through_the_pause_fails_no_airflow_transaction(
        lab: Lab, paused: dict[str, Any]) -> None:
    assert paused["state"] == "success", lab.failure_report(DAG, paused["run_id"])
    drilled = drill_switchover_through_the_pause(lab, INVENTORY)
    assert drilled["state"] == "success", lab.failure_report(DRILL, drilled["run_id"])
    print(f"drill switchover through the pause: {drilled['inject'].get('detail')}; the probe's longest gap "
          f"between two commits {drilled['longest_gap']:.2f}s")
    assert "Airflow's PgBouncers paused until HAProxy sent writes to" in drilled["inject"].get("detail", "")
    assert "PAUSE airflow_db done" in drilled["log"] and "RESUME airflow_db on" in drilled["log"], drilled["log"][-3000:]
    assert drilled["after"] == drilled["before"], "no Airflow unit (the probe among them) failed and restarted"


def test_no_secret_left_outside_the_files_that_must_hold_one(lab: Lab, paused: dict[str, Any]) -> None:
    """The move's and the cutover's pgpass files and the staged airflow.cfg are gone; PgBouncer's files hold
    verifiers, never a password."""
    import secret_scan

    hits = secret_scan.scan(lab.secrets)
    problems = secret_scan.problems(hits)
    assert not problems, "secrets where they must not be:\n  " + "\n  ".join(problems)
