#!/usr/bin/env python3
"""The lab matrix: whole migrations of source major x cluster major x Airflow release x method, each in
its own lab session (lab up, provision from the profile's snapshot, one migration with the probe writer,
lab down), through tests/lab/test_lab_combination.py. Prints a table: combination | result | duration.

`make test` runs two of these combinations in CI (13 -> 15 dump_restore and 13 -> 17 logical on
Airflow 3.0.6, tests/lab/test_lab_pg13_source.py) besides the main lab suite on 15 -> 15 and 3.3.2;
this script runs them all (those two included) side by side, for the record.

    .venv/bin/python bench/lab_matrix.py                       # every combination below
    .venv/bin/python bench/lab_matrix.py 13:17:3.0.6:logical_replication   # source:cluster:airflow:method
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMBINATIONS = (  # source major, cluster major, Airflow release, method
    (15, 15, "3.3.2", "dump_restore"),
    (15, 17, "3.3.2", "logical_replication"),
    (13, 15, "3.0.6", "dump_restore"),
    (13, 15, "3.0.6", "logical_replication"),
    (13, 17, "3.0.6", "logical_replication"),
)


def parse(text: str) -> tuple[int, int, str, str]:
    source, cluster, release, method = text.split(":")
    return int(source), int(cluster), release, method


def run(source: int, cluster: int, release: str, method: str, log_dir: Path) -> tuple[str, float]:
    env = {**os.environ, "PGHA_LAB_SOURCE_MAJOR": str(source), "PGHA_LAB_AIRFLOW": release,
           "PGHA_LAB_COMBINATION": f"{method}:{cluster}"}
    log = log_dir / f"lab-{source}-{cluster}-{release}-{method}.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "lab",
                               "tests/lab/test_lab_combination.py"], cwd=REPO_ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    duration = time.monotonic() - started
    summary = next((line for line in reversed(log.read_text().splitlines()) if re.search(r"passed|failed|error", line)),
                   f"exit {proc.returncode}")
    result = "passed" if proc.returncode == 0 and "1 passed" in summary else f"FAILED ({summary.strip()}; {log})"
    return result, duration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("combinations", nargs="*", help="source:cluster:airflow:method (default: all)")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/pgha-lab-matrix"))
    args = parser.parse_args()
    combinations = [parse(c) for c in args.combinations] or list(COMBINATIONS)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], False
    for source, cluster, release, method in combinations:
        result, duration = run(source, cluster, release, method, args.log_dir)
        failed |= result != "passed"
        rows.append((f"{source} -> {cluster}", release, method, result, f"{duration / 60:.1f} min"))
        print(f"{rows[-1]}", file=sys.stderr, flush=True)
    header = ("source -> cluster", "Airflow", "method", "result", "duration")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
