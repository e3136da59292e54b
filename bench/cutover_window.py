#!/usr/bin/env python3
"""Benchmark: Airflow's stopped window during the cutover, per method and database size.

For each method (dump_restore, logical_replication) and each size, RUNS times:
put vm1 and vm4 back to their provisioned snapshots (Airflow on its single
PostgreSQL), grow airflow_db on vm1 with ballast rows in Airflow's own `log`
table, run pg_ha_migration through the REST API, and read the cutover agent's
record (table pgha_cutover_log): the window is from the agent stopping the
first Airflow unit to the scheduler heartbeating on the cluster. Prints a
table (median and max per cell). Needs the lab: lab/lab up.

A run starts from empty database hosts when there is no Patroni cluster; otherwise it keeps the cluster
(phases 1-5 then find everything in place, as on a re-run) and drop its
airflow_db first (the previous run's copy; vm1 is its own source again), which
saves the package installs but not one second of the cutover being measured.
--fresh resets the database hosts before every run.

Every finished run is appended to --results (JSON lines), and a later
invocation skips the runs already there, so an interrupted benchmark resumes.

    .venv/bin/python bench/cutover_window.py [--sizes 50,1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from lab_fixtures import NODES as NODE_ADDRESSES  # noqa: E402  (the lab's hosts table, lab/pghalab/topology.py)
from lab_fixtures import VM1, WRITE_PORT, Lab  # noqa: E402
from pghalab import cluster_api  # noqa: E402
from lab_fixtures import lab as lab_cli  # noqa: E402

DAG = "pg_ha_migration"
METHODS = ("dump_restore", "logical_replication")
NODES = tuple(NODE_ADDRESSES.values())


def grow(lab: Lab, megabytes: int) -> str:
    """Add ballast to vm1's airflow_db until it is about ``megabytes`` large; returns its size."""
    rows = max(0, megabytes - 15) * 1000  # ~1 kB per row on top of the provisioned ~15 MB
    sql = (
        "INSERT INTO log (dttm, event, owner, extra) "
        f"SELECT now(), 'pgha-bench', 'bench', repeat(md5(g::text), 30) FROM generate_series(1, {rows}) g; "
        "SELECT pg_size_pretty(pg_database_size('airflow_db'));"
    )
    out = lab.ssh("vm1", f"runuser -u postgres -- psql -X -q -At -d airflow_db -c \"{sql}\"", timeout=3600)
    return out.strip().splitlines()[-1]


def cluster_exists() -> bool:
    """A Patroni leader answers on one of the database nodes (an earlier run's cluster)."""
    for address in NODES:
        try:
            members = cluster_api.patroni(address, "/cluster", timeout=3).json()["members"]
        except (requests.RequestException, ValueError, KeyError):
            continue
        if any(m["role"] == "leader" for m in members):
            return True
    return False


def drop_cluster_copy(lab: Lab) -> None:
    """DROP the cluster's airflow_db (the previous run's copy) on the Patroni leader, by psql as the postgres OS
    user on that node: pg_hba refuses the superuser from this machine, and `lab provision` took HAProxy away."""
    for node in NODE_ADDRESSES:
        recovery = lab.ssh(node, "runuser -u postgres -- psql -X -At -c 'SELECT pg_is_in_recovery()' || true").strip()
        if recovery == "f":
            lab.ssh(node, "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "
                          "-c 'DROP DATABASE IF EXISTS airflow_db WITH (FORCE)'")
            return
    raise RuntimeError("no Patroni leader to drop airflow_db on")


def wait_for_record(lab: Lab, cutover_id: str, role: str = "primary", timeout: float = 900) -> dict:
    """An agent's record of this cutover (earlier runs' records stay in pgha_cutover_log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with lab.connect(VM1, WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT record FROM pgha_cutover_log WHERE run_id = %s AND role = %s "
                            "ORDER BY id DESC LIMIT 1", (cutover_id, role))
                row = cur.fetchone()
                if row:
                    return row[0]
        except Exception:  # HAProxy or the table not there yet during the switch
            pass
        time.sleep(5)
    raise RuntimeError(f"no {role} record of cutover {cutover_id} after {timeout}s")


def one_run(lab: Lab, method: str, megabytes: int, fresh: bool) -> dict:
    if fresh:
        lab.reset_to_provisioned()
    else:
        lab_cli("provision")  # vm1 and vm4 back to Airflow on the single PostgreSQL
        drop_cluster_copy(lab)
    size = grow(lab, megabytes)
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"migration_method": method, "run_failover_test": False})
    state = lab.api.wait(DAG, run_id, timeout=7200, poll=10)
    if state != "success":
        raise RuntimeError(f"{method} {megabytes} MB: {lab.failure_report(DAG, run_id)}")
    cutover_id = lab.api.xcom(DAG, run_id, "cutover")["result"]["run_id"]
    record = wait_for_record(lab, cutover_id)
    if record["outcome"] != "success":
        raise RuntimeError(f"{method} {megabytes} MB: cutover {cutover_id} ended {record['outcome']}")
    steps = {step["step"]: round(step["seconds"], 2) for step in record["steps"]}
    # vm4's follower finishes after the primary: the next run's restore must not cut it short
    follower = wait_for_record(lab, cutover_id, role="follower")
    waited = lab.ssh("vm1", f"grep -h 'waiting for' /var/log/pgha/cutover-{cutover_id}.log || true").splitlines()
    return {"method": method, "mb": megabytes, "size": size, "window": round(sum(steps.values()), 2),
            "steps": steps, "cutover": cutover_id, "drain_waited_for": [line.split(" ", 1)[1] for line in waited],
            "follower": {step["step"]: round(step["seconds"], 2) for step in follower["steps"]}}


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,1024", help="database sizes in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--fresh", action="store_true", help="reset the database hosts before every run")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "cutover_window_lab.jsonl")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    done = load(args.results)
    lab = Lab()
    for megabytes in sizes:
        for method in methods:
            while sum(1 for r in done if (r["method"], r["mb"]) == (method, megabytes)) < args.runs:
                run = one_run(lab, method, megabytes, fresh=args.fresh or not cluster_exists())
                done.append(run)
                with args.results.open("a") as results:
                    results.write(json.dumps(run) + "\n")
                print(f"  {method:20s} {run['size']:>8s}  {run['window']:6.1f}s  {run['steps']}", flush=True)
    print_table(done, methods, sizes)
    return 0


def print_table(done: list[dict], methods: list[str], sizes: list[int]) -> None:
    print("\nStopped window (first Airflow unit stopped -> scheduler heartbeating on the cluster), seconds")
    print(f"{'method':20s} {'db size':>9s} {'runs':>4s} {'median':>7s} {'max':>6s}   all runs")
    for megabytes in sizes:
        for method in methods:
            runs = [r for r in done if (r["method"], r["mb"]) == (method, megabytes)]
            if not runs:
                continue
            windows = [r["window"] for r in runs]
            print(f"{method:20s} {runs[-1]['size']:>9s} {len(runs):4d} {statistics.median(windows):7.1f} "
                  f"{max(windows):6.1f}   " + " ".join(f"{w:.1f}" for w in windows))


if __name__ == "__main__":
    sys.exit(main())
