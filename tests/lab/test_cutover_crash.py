"""A remote Airflow host that crashes inside the cutover's stopped window is never left behind.

Issue 13 (review): vm4 was crashed about a second after its cutover agent had stopped the Celery
worker; it rebooted on the old database while vm1 moved to the cluster, and the run stayed green.
Here vm4 is crashed right after its agent (the follower) has stopped the worker and recorded that
it waits for the source host's decision, started again a few seconds later, and the run must end
with every Airflow host on the cluster (green) or every host back on the source (red, rolled
back): never green with vm4 on the source, never the hosts split.

The lab starts from the provisioned state (Airflow on vm1's single PostgreSQL) and runs the whole
migration, as tests/lab/test_cutover.py does: after a successful cutover the cluster database is
live and a second cutover arms nothing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from lab_fixtures import POSTGRES_PORT, VM1, WRITE_PORT, Lab, topology
from lab_fixtures import lab as run_lab

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"
VM4 = topology.address(topology.WORKER_HOST)
CONFIG = "/home/airflow/airflow/airflow.cfg"
STATE_FILE = "/var/lib/pgha/cutover-state.json"  # pgha.cutover.STATE_FILE
RESUME_UNIT = "pgha-cutover-resume.service"  # pgha.cutover.RESUME_UNIT
PGPASS = "/etc/pgha/cutover.pgpass"  # pgha.cutover.PGPASS
CLIENT_KEY = "/etc/pgha/cutover-client.key"  # pgha.cutover.CLIENT_KEY: goes with the pgpass file
LOG_DIR = "/var/log/pgha"
UNITS = {  # lab/inventory.yml's airflow hosts
    "vm1": ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer"),
    "vm4": ("airflow-celery-worker",),
}
WORKER = "airflow-celery-worker"
WAITING = '"phase": "waiting"'  # the follower's state once its units are stopped (Agent.save_state)


def crash_inside_the_stopped_window(lab: Lab) -> str:
    """Wait on vm4 until its follower agent has stopped the worker (state file phase "waiting"),
    then SIGKILL the whole host at once. Returns what vm4 showed just before the crash."""
    seen = lab.ssh("vm4", f"""
        for i in $(seq 3000); do grep -qs '{WAITING}' {STATE_FILE} && break; sleep 0.1; done
        if ! grep -qs '{WAITING}' {STATE_FILE}; then
            echo "vm4's follower never reached phase waiting; state: $(cat {STATE_FILE} 2>&1)" >&2
            ls -l {LOG_DIR} >&2; exit 3
        fi
        echo "worker=$(systemctl is-active {WORKER} || true)"
        echo "resume=$(systemctl is-enabled {RESUME_UNIT} 2>/dev/null || true)"
        """, timeout=600)
    run_lab("crash", "vm4", timeout=120)
    print(f"vm4 crashed inside the stopped window; it showed: {seen.split()}", flush=True)
    return seen


def start_again(lab: Lab) -> None:
    """Boot vm4. Its boot is held until the resume unit has completed the cutover (the Airflow units are
    ordered after it): `lab/lab start` may give up waiting for "running" while the host boots on."""
    try:
        run_lab("start", "vm4", timeout=900)
    except RuntimeError as exc:
        if "not booted in time" not in str(exc):
            raise
        print("vm4: boot not finished in lab/lab's time (the resume unit holds it); waiting for sshd", flush=True)
    deadline = time.monotonic() + 600
    while True:
        try:
            lab.ssh("vm4", "true", timeout=30)
            return
        except Exception:  # noqa: BLE001 - sshd not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def host_view(lab: Lab, host: str) -> dict[str, Any]:
    """Where ``host``'s Airflow points and runs: the database of airflow.cfg (no credentials), its units'
    states, the worker process's age against the config's, the database connections it holds."""
    units = " ".join(UNITS[host])
    out = lab.ssh(host, f"""
        for key in sql_alchemy_conn result_backend; do
            echo "$key=$(sed -n "s/^$key *= *//p" {CONFIG} | sed 's/.*@//')"
        done
        for u in {units}; do echo "unit:$u=$(systemctl is-active $u || true)"; done
        pid=$(systemctl show -P MainPID {UNITS[host][0]})
        [ "${{pid:-0}}" -gt 0 ] && echo "process_age=$(ps -o etimes= -p "$pid" | tr -d ' ')"
        echo "config_age=$(( $(date +%s) - $(stat -c %Y {CONFIG}) ))"
        peers="( dport = :{POSTGRES_PORT} or dport = :{WRITE_PORT} )"
        echo "db_peers=$(ss -Htn state established "$peers" | awk '{{print $4}}' | sort | tr '\\n' ' ')"
        """, timeout=120)
    view: dict[str, Any] = {"units": {}}
    for line in out.splitlines():
        key, _, value = line.strip().partition("=")
        if key.startswith("unit:"):
            view["units"][key[5:]] = value
        elif key:
            view[key] = value.strip()
    view["database"] = database_of(view.get("sql_alchemy_conn", ""))
    view["peers"] = view.get("db_peers", "").split()
    return view


def database_of(target: str) -> str:
    """'cluster' (HAProxy's write port), 'source' (vm1's old PostgreSQL) or the target as found."""
    address = target.split("/", 1)[0]
    if address in (f"127.0.0.1:{WRITE_PORT}", f"{VM1}:{WRITE_PORT}"):
        return "cluster"
    if address in (f"127.0.0.1:{POSTGRES_PORT}", f"{VM1}:{POSTGRES_PORT}"):
        return "source"
    return f"unknown ({target!r})"


def records(lab: Lab, cutover_run: str) -> list[tuple[str, str, str, str]]:
    """(host, role, outcome, detail) as the agents recorded them in pgha_cutover_log, oldest first."""
    with lab.connect(host=VM1, port=WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, role, outcome, record->>'detail' FROM pgha_cutover_log WHERE run_id = %s "
                    "ORDER BY id", (cutover_run,))
        return cur.fetchall()


def source_sessions_of_vm4(lab: Lab) -> int:
    """Sessions vm4 holds on the source's airflow_db (psql binds the address as a literal)."""
    query = f"\\set addr {VM4}\nSELECT count(*) FROM pg_stat_activity WHERE datname = 'airflow_db' " \
            "AND client_addr = :'addr'::inet;\n"
    return int(lab.source_sql(query).strip().splitlines()[-1])


def agent_log(lab: Lab, host: str, cutover_run: str, lines: int = 40) -> str:
    try:
        return lab.ssh(host, f"tail -n {lines} {LOG_DIR}/cutover-{cutover_run}.log", timeout=60)
    except Exception as exc:  # noqa: BLE001 - a report must not hide the assertion it explains
        return f"({host}: no agent log: {exc})"


def report(lab: Lab, cutover_run: str, views: dict[str, dict[str, Any]]) -> str:
    """What each host runs, what the agents recorded and the end of vm4's agent log, for a failure message."""
    lines = [f"{host}: Airflow on {v['database']} ({v.get('sql_alchemy_conn')}), units {v['units']}, "
             f"db connections to {v['peers'] or 'none'}" for host, v in views.items()]
    try:
        lines.append(f"pgha_cutover_log: {records(lab, cutover_run)}")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"pgha_cutover_log unreadable: {exc}")
    lines.append(f"vm4's agent log:\n{agent_log(lab, 'vm4', cutover_run)}")
    return "\n".join(lines)


def wait_for_worker(lab: Lab, timeout: float = 300) -> dict[str, Any]:
    """vm4's view once its worker is active (the resume unit starts it after the boot's queue), else the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        view = host_view(lab, "vm4")
        if view["units"].get(WORKER) == "active" or time.monotonic() > deadline:
            return view
        time.sleep(5)


def wait_for_peer(lab: Lab, port: int, timeout: float = 120) -> dict[str, Any]:
    """vm4's view once it holds a database connection to vm1:``port``, else the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        view = host_view(lab, "vm4")
        if f"{VM1}:{port}" in view["peers"] or time.monotonic() > deadline:
            return view
        time.sleep(5)


def celery_task_runs_on_vm4(lab: Lab) -> None:
    run_id = lab.api.trigger("lab_celery_smoke")
    assert lab.api.wait("lab_celery_smoke", run_id, timeout=900) == "success", \
        lab.failure_report("lab_celery_smoke", run_id)
    assert lab.api.xcom("lab_celery_smoke", run_id, "on_worker") == "vm4"


def test_a_worker_host_crashed_in_the_stopped_window_ends_with_the_others_never_split(lab: Lab) -> None:
    lab.reset_to_provisioned()
    try:
        lab.api.unpause(DAG)
        run_id = lab.api.trigger(DAG, {"run_failover_test": False})
        lab.wait_for_task(DAG, run_id, "cutover", timeout=2400)
        armed = (lab.api.xcom(DAG, run_id, "cutover") or {}).get("result") or {}  # the operator's summary
        assert armed.get("armed") and armed.get("hosts", {}).get("vm4") == "follower", armed
        cutover_run = armed["run_id"]

        # The agents begin once the task is recorded a success: vm4's stops the worker, then waits for vm1's decision.
        seen = crash_inside_the_stopped_window(lab)
        assert "worker=inactive" in seen or "worker=failed" in seen, f"the worker was not stopped: {seen}"
        assert "resume=enabled" in seen, f"the resume unit was not enabled before the crash point: {seen}"
        time.sleep(5)
        start_again(lab)

        state = lab.api.wait(DAG, run_id, timeout=2400, progress=lab.progress(DAG, run_id))
        outcome = next(t for t in lab.api.task_instances(DAG, run_id) if t["task_id"] == "cutover_outcome")
        views = {"vm1": host_view(lab, "vm1"), "vm4": wait_for_worker(lab)}
        found = report(lab, cutover_run, views)
        print(f"run {run_id}: {state}, cutover_outcome {outcome['state']}\n{found}", flush=True)

        where = {host: v["database"] for host, v in views.items()}
        assert where["vm1"] == where["vm4"], f"SPLIT: vm1 on {where['vm1']}, vm4 on {where['vm4']}\n{found}"
        for host, view in views.items():
            assert database_of(view.get("result_backend", "")) == view["database"], \
                f"{host}: result_backend and sql_alchemy_conn point at different databases\n{found}"
        assert all(s == "active" for v in views.values() for s in v["units"].values()), \
            f"an Airflow unit is not active\n{found}"
        log = agent_log(lab, "vm4", cutover_run, lines=400)
        assert "resumed on" in log and "after a restart in phase waiting" in log, \
            f"vm4's resume unit did not complete the cutover it was crashed in\n{found}"
        leftovers = lab.ssh("vm4", f"ls -d {STATE_FILE} {PGPASS} {CLIENT_KEY} /etc/systemd/system/{RESUME_UNIT} 2>/dev/null; "
                                   f"systemctl is-enabled {RESUME_UNIT} 2>/dev/null || true").split()
        assert leftovers in ([], ["not-found"]), f"the resume left on vm4: {leftovers}"
        by_host = {host: (role, result, detail) for host, role, result, detail in records(lab, cutover_run)}

        if state == "success":
            assert outcome["state"] == "success", outcome
            assert where["vm4"] == "cluster", f"GREEN with vm4 on {where['vm4']}\n{found}"
            assert by_host.get("vm4", ("", "", ""))[1] == "success" and "resumed" in by_host["vm4"][2], \
                f"vm4's success must be the resumed follower's\n{found}"
            # the worker running now was started on the installed config, not before it
            age, config_age = int(views["vm4"].get("process_age", -1)), int(views["vm4"]["config_age"])
            assert 0 <= age <= config_age, f"vm4's worker ({age}s old) predates its airflow.cfg ({config_age}s)"
            celery_task_runs_on_vm4(lab)
            view = wait_for_peer(lab, WRITE_PORT)
            assert f"{VM1}:{WRITE_PORT}" in view["peers"], f"vm4 holds no session through HAProxy: {view}"
            assert f"{VM1}:{POSTGRES_PORT}" not in view["peers"], f"vm4 holds a session on the source: {view}"
            assert source_sessions_of_vm4(lab) == 0, "the source's pg_stat_activity shows a session of vm4"
        else:
            assert outcome["state"] == "failed", outcome
            assert where["vm4"] == "source", f"RED but not rolled back: vm4 on {where['vm4']}\n{found}"
            results = {host: result for host, (_, result, _) in by_host.items()}
            assert results == {"vm1": "rolled_back", "vm4": "rolled_back"}, \
                f"a red run must be a rollback on every host (never 'stuck')\n{found}"
            with lab.connect(host=VM1, port=WRITE_PORT, database="postgres", superuser=True) as conn, \
                    conn.cursor() as cur:
                cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                            ("airflow_db",))
                assert cur.fetchone()[0] is None, "the cluster database is marked live after a rollback"
            celery_task_runs_on_vm4(lab)
    finally:
        cleanup(lab)


def cleanup(lab: Lab) -> None:
    """vm4 booted and the migration DAG paused, whatever happened (later modules reset the hosts)."""
    try:
        run_lab("start", "vm4", timeout=900)  # a no-op when it runs
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the test's own failure
        print(f"cleanup: lab/lab start vm4: {exc}", flush=True)
    try:
        lab.api.pause(DAG)
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: pausing {DAG}: {exc}", flush=True)
