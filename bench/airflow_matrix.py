#!/usr/bin/env python3
"""pgha on every supported Airflow release: the DAGs parse and the unit tests pass.

For each release of tests/airflow_releases.py (or those given), in that release's cached virtualenv
(/var/cache/pgha-test/airflow-<release>-py311, built when missing: Airflow, the two providers, then
requirements.txt's test tools with Airflow held at the release by a constraint):
  parse  pip install -e this checkout; that Airflow's `airflow dag-processor --num-runs 1` parses dags/,
         `airflow dags list-import-errors` must be empty and both DAGs listed;
  unit   `pytest -q -m "not lab and not install" tests` with that virtualenv's python.
Then prints: release | parse | unit (passed/failed) | duration.

    .venv/bin/python bench/airflow_matrix.py                 # every supported release
    .venv/bin/python bench/airflow_matrix.py 3.0.6 --no-unit # parse only
    .venv/bin/python bench/airflow_matrix.py 3.3.2 -- tests/test_dag_integrity.py  # another pytest selection
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from airflow_releases import (  # noqa: E402
    PIP,
    SUPPORTED,
    airflow_version,
    deployment_venv,
    install_test_requirements,
    locked,
    outside_env,
    parse_dags,
    run,
    venv_path,
)

UNIT_SELECTION = ["-m", "not lab and not install", "tests"]
DAG_IDS = {"pg_ha_migration", "pg_ha_failover_drill"}


def prepare(release: str) -> Path:
    venv = deployment_venv(release)
    install_test_requirements(venv, release)
    run([venv / "bin/python", *PIP, "--no-deps", "-e", REPO_ROOT])
    found = airflow_version(venv)
    if found != release:
        raise RuntimeError(f"{venv} holds Airflow {found}, not {release}")
    return venv


def parse(venv: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="pgha-matrix-") as home:
        dag_ids, errors = parse_dags(venv, Path(home))
    if errors:
        return "FAIL: " + "; ".join(f"{e.get('filename')}: {str(e.get('stack_trace', e))[-300:]}" for e in errors)
    if not DAG_IDS <= dag_ids:
        return f"FAIL: missing {sorted(DAG_IDS - dag_ids)}"
    return "ok"


def unit(venv: Path, selection: list[str], log: Path) -> str:
    """passed/failed of the selection, counted from pytest's JUnit XML (the console's summary varies with -q)."""
    report = log.with_suffix(".xml")
    report.unlink(missing_ok=True)
    result = subprocess.run([venv / "bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--junitxml={report}", *selection],
                            cwd=REPO_ROOT, env=outside_env(), capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if not report.exists():
        return f"FAIL (exit {result.returncode}, no report; {log})"
    suites = ElementTree.parse(report).getroot().iter("testsuite")
    tests = failures = errors = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    text = f"{tests - failures - errors - skipped}/{failures}"
    if errors:
        text += f" ({errors} errors)"
    if skipped:
        text += f" ({skipped} skipped)"
    return text if result.returncode == 0 else f"{text} FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("releases", nargs="*", default=list(SUPPORTED), help="Airflow releases (default: all supported)")
    parser.add_argument("--no-unit", action="store_true", help="only install and parse")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "pgha-airflow-matrix")
    argv = sys.argv[1:]
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    selection = pytest_args or UNIT_SELECTION
    args.log_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    failed = False
    for release in args.releases:
        started = time.monotonic()
        parsed, tested = "-", "-"
        with locked(venv_path(release)):
            try:
                venv = prepare(release)
                parsed = parse(venv)
                if not args.no_unit:
                    tested = unit(venv, selection, args.log_dir / f"unit-{release}.log")
            except Exception as exc:  # noqa: BLE001 - a release that cannot even install is a row, not a crash
                parsed = f"FAIL: {str(exc).splitlines()[0][:200]}"
                (args.log_dir / f"setup-{release}.log").write_text(str(exc))
            finally:  # the venv is shared by every checkout on the machine: leave it without this one's pgha
                if (venv_path(release) / "bin/python").exists():
                    subprocess.run([venv_path(release) / "bin/python", "-m", "pip", "uninstall", "-q", "-y", "pgha"],
                                   capture_output=True)
        duration = time.monotonic() - started
        failed |= parsed != "ok" or "FAIL" in tested
        rows.append((release, parsed, tested, f"{duration / 60:.1f} min"))
        print(f"{release}: parse {parsed}; unit {tested}; {duration:.0f}s", file=sys.stderr, flush=True)

    header = ("release", "parse", "unit (passed/failed)", "duration")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"logs: {args.log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
