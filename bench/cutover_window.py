#!/usr/bin/env python3
"""Benchmark: Airflow's stopped window during the cutover, per method and database size.

For each method (dump_restore, logical_replication) and each size, RUNS times:
reset the lab (empty database hosts, vm1 back to its provisioned snapshot),
grow airflow_db on vm1 with ballast rows in Airflow's own `log` table, run
pg_ha_migration through the REST API, and read the cutover agent's record
(table pgha_cutover_log): the window is from the agent stopping the first
Airflow unit to the scheduler heartbeating on the cluster. Prints a table
(median and max per cell). Needs the lab: lab/lab up.

    .venv/bin/python bench/cutover_window.py [--sizes 50,1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from lab_fixtures import Lab  # noqa: E402

DAG = "pg_ha_migration"
METHODS = ("dump_restore", "logical_replication")


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


def one_run(lab: Lab, method: str, megabytes: int) -> tuple[float, str]:
    lab.reset_to_provisioned()
    size = grow(lab, megabytes)
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"migration_method": method, "run_failover_test": False})
    state = lab.api.wait(DAG, run_id, timeout=7200, poll=10)
    if state != "success":
        raise RuntimeError(f"{method} {megabytes} MB: {lab.failure_report(DAG, run_id)}")
    deadline = time.monotonic() + 600
    while True:
        record = lab.cutover_record()
        if record["outcome"] == "success":
            break
        if time.monotonic() > deadline:
            raise RuntimeError("no cutover record")
        time.sleep(5)
    window = sum(step["seconds"] for step in record["steps"])
    return window, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,1024", help="database sizes in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    lab = Lab()
    results: dict[tuple[str, int], list[float]] = {}
    actual: dict[int, str] = {}
    for megabytes in sizes:
        for method in args.methods.split(","):
            for i in range(args.runs):
                window, actual[megabytes] = one_run(lab, method, megabytes)
                results.setdefault((method, megabytes), []).append(window)
                print(f"  {method:20s} {actual[megabytes]:>8s}  run {i + 1}: {window:6.1f}s", flush=True)
    print(f"\nStopped window (first Airflow unit stopped -> scheduler heartbeating on the cluster), {args.runs} runs")
    print(f"{'method':20s} {'db size':>9s} {'median s':>9s} {'max s':>7s}   runs")
    for (method, megabytes), windows in results.items():
        print(f"{method:20s} {actual[megabytes]:>9s} {statistics.median(windows):9.1f} {max(windows):7.1f}   "
              + " ".join(f"{w:.1f}" for w in windows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
