#!/usr/bin/env python3
"""Failover benchmark: each drill scenario N times per timing profile, RTO side by side.

    .venv/bin/python bench/failover_drill.py --on lab [--runs 5] [--profiles runbook,lab] 2>bench.log
    .venv/bin/python bench/failover_drill.py --on loopback [--runs 5] [--profiles runbook,tuned] 2>bench.log

Runs the drill's own operators (precheck, probe, fault, heal, analysis) and
prints min / median / max of the client-side RTO per scenario and profile and
the ratio of medians to the first profile.

--on lab: the lab's migrated cluster (lab/lab up, a finished pg_ha_migration).
Each profile is applied to the running cluster the way an operator would:
PATCH /config for Patroni's timings (ApplyDcsConfigOperator) and a new
haproxy.cfg (HAProxySwitchOperator). The probe runs on vm1; host_crash and
host_isolate go through the fault injector (lab/lab crash|isolate behind
include/drill/fault_gate.py). The lab inventory's own timings are put back at
the end.

--on loopback: tests/drill_lab.py, one fresh cluster per profile (no
host_isolate there: it needs real network isolation).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "tests", REPO_ROOT / "dags", REPO_ROOT / "lab"):
    sys.path.insert(0, str(_path))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="pgha-bench-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# dag.test() runs the drill DAG from its bundle: this checkout's dags/, as the tests' conftest sets it
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# Airflow's loggers write task logs to fd 1: they go to stderr, the table alone to stdout.
TABLE_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import pytest  # noqa: E402
from airflow.sdk.exceptions import AirflowSkipException  # noqa: E402
import yaml  # noqa: E402
from drill_lab import Profile, fault_injector, loopback_lab, run_drill  # noqa: E402
from pghalab import topology  # noqa: E402  (the lab's hosts table)
from pghalab.settings import KEYS, LAB_COMMAND, LAB_INVENTORY, SECRETS  # noqa: E402

NO_SLO = {s: 600.0 for s in ("switchover", "patroni_stop", "postmaster_kill", "host_crash", "host_isolate")}
ALL_SCENARIOS = "switchover,patroni_stop,postmaster_kill,host_crash,host_isolate"

# On the lab: the runbook's timings and lab/inventory.yml's own. The runbook's retry_timeout 30 breaks
# Patroni's rule (loop_wait + 2 x retry_timeout <= ttl; runbook correction C7, docs/runbook-corrections.md), so this
# profile runs 10, the largest value the rule allows with loop_wait 10 (Patroni itself would drop loop_wait to 1).
# The runbook's haproxy.cfg sets no check timings: HAProxy's defaults, inter 2s fall 3 rise 2.
LAB_PROFILES = {
    "runbook": {"patroni": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
                "haproxy": {"inter": "2s", "fall": 3, "rise": 2, "fastinter": None, "downinter": None}},
    "lab": None,  # lab/inventory.yml as it is
}
PROFILES = {
    # The runbook: ttl 30, loop_wait 10, retry_timeout 30 (Patroni adjusts it: runbook correction C7), HAProxy 3s x3 / x2.
    "runbook": Profile("runbook", ttl=30, loop_wait=10, retry_timeout=30, inter="3s", fall=3, rise=2, rto_slo_s=NO_SLO),
    # The proposal (README, "Failover tuning"): ttl at Patroni's floor, short loops, fast HAProxy checks.
    "tuned": Profile("tuned", ttl=20, loop_wait=2, retry_timeout=9, inter="1s", fall=2, rise=1, rto_slo_s=NO_SLO),
    # The proposal plus a template change: a refused connect fails at once instead of 2 retries 1 s apart.
    "tuned+retries0": Profile("tuned+retries0", ttl=20, loop_wait=2, retry_timeout=9, inter="1s", fall=2, rise=1,
                              write_listen_extra=("retries 0",), rto_slo_s=NO_SLO),
    # Variants: HAProxy slower to mark a leader DOWN (a postmaster restarting in place stays UP).
    "tuned-fall3": Profile("tuned-fall3", ttl=20, loop_wait=2, retry_timeout=9, inter="1s", fall=3, rise=1,
                           rto_slo_s=NO_SLO),
    "tuned-fall3+retries0": Profile("tuned-fall3+retries0", ttl=20, loop_wait=2, retry_timeout=9, inter="1s", fall=3,
                                    rise=1, write_listen_extra=("retries 0",), rto_slo_s=NO_SLO),
    # The loopback test suite's values (loop_wait 1, checks every 500 ms).
    "test": Profile("test", rto_slo_s=NO_SLO),
}


def measure(profile: Profile, scenarios: list[str], runs: int, workdir: Path) -> dict[str, list[float]]:
    """RTO of every run, per scenario, on a fresh loopback cluster with ``profile``'s timings."""
    rtos: dict[str, list[float]] = {s: [] for s in scenarios}
    with pytest.MonkeyPatch.context() as mp, loopback_lab(workdir / profile.name, mp, profile) as lab:
        with fault_injector(lab, workdir / f"{profile.name}-injector", mp) as injector:
            for scenario in scenarios:
                for run in range(1, runs + 1):
                    result = _drill_when_healthy(injector.inventory, scenario)
                    rtos[scenario].append(float(result["rto_s"]))
                    print(f"# {profile.name} {scenario} run {run}: RTO {result['rto_s']:.2f}s "
                          f"RPO {result['rpo_missing']} {'PASS' if result['passed'] else result['problems']}",
                          file=sys.stderr, flush=True)
    return rtos


def _drill_when_healthy(inventory: str, scenario: str, attempts: int = 6) -> dict[str, Any]:
    """One drill; a precheck that skips (cluster not settled yet) is tried again a little later."""
    for _ in range(attempts - 1):
        try:
            return run_drill(inventory, scenario)
        except AirflowSkipException as exc:
            print(f"# precheck skipped, again in 10s: {exc}", file=sys.stderr, flush=True)
            time.sleep(10)
    return run_drill(inventory, scenario)


def table(results: dict[str, dict[str, list[float]]], scenarios: list[str]) -> str:
    """Scenario rows, one min/median/max column per profile, ratio of medians to the first profile."""
    names = list(results)
    cells = {name: max(len(name) + 2, 24) for name in names}
    header = f"{'RTO (s)':<16}" + "".join(f"{name:>{cells[name]}}" for name in names)
    header += "".join(f"{'ratio ' + name:>{cells[name] + 6}}" for name in names[1:])
    lines = [header, f"{'':<16}" + "".join(f"{'min / median / max':>{cells[n]}}" for n in names), "-" * len(header)]
    for scenario in scenarios:
        row, base = f"{scenario:<16}", statistics.median(results[names[0]][scenario])
        for name in names:
            values = results[name][scenario]
            row += f"{f'{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}':>{cells[name]}}"
        for name in names[1:]:
            row += f"{f'{base / statistics.median(results[name][scenario]):.1f}x':>{cells[name] + 6}}"
        lines.append(row)
    return "\n".join(lines)


def lab_inventory(profile: str, workdir: Path) -> str:
    """lab/inventory.yml with ``profile``'s timings and no SLO (the benchmark measures, it does not judge)."""
    raw = yaml.safe_load(LAB_INVENTORY.read_text())
    for section, values in (LAB_PROFILES[profile] or {}).items():
        for key, value in values.items():
            if value is None:
                raw[section].pop(key, None)
            else:
                raw[section][key] = value
    raw["drill"]["rto_slo_s"] = NO_SLO
    path = workdir / f"lab-{profile}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def lab_connections() -> None:
    """The connections the drill needs, from the outside: lab/lab env (SSH) and the lab's secrets."""
    env = subprocess.run([str(LAB_COMMAND), "env"], check=True, capture_output=True, text=True).stdout
    for line in env.splitlines():
        if line.startswith("export AIRFLOW_CONN_"):
            name, value = line.removeprefix("export ").split("=", 1)
            os.environ[name] = shlex.split(value)[0]
    secrets = json.loads(SECRETS.read_text())
    ca = json.loads(secrets["cluster_ca"])  # pgha.tls's Connection layout: certificate in extra, key in password
    keys = KEYS
    conns = {
        "pgha_pg_superuser": {"conn_type": "postgres", "login": "postgres", "password": secrets["pg_superuser_password"]},
        "pgha_airflow_db": {"conn_type": "postgres", "login": "airflow_user",
                            "password": secrets["airflow_db_password"], "schema": "airflow_db"},
        "pgha_patroni_api": {"conn_type": "http", "login": "patroni", "password": secrets["patroni_api_password"]},
        "pgha_etcd_pgha": {"conn_type": "generic", "login": "pgha", "password": secrets["etcd_pgha_password"]},
        # the cluster CA (TLS is on in the lab): pgha's clients verify with it and show a certificate it issues
        "pgha_ca": {"conn_type": "generic", "password": ca["key"], "extra": json.dumps({"certificate": ca["certificate"]})},
        "pgha_fault_injector": {
            "conn_type": "ssh", "host": topology.BRIDGE_IP, "port": topology.FAULT_GATE_PORT, "login": "root",
            "extra": {"key_file": str(keys / "fault_gate_ed25519"), "no_host_key_check": False,
                      "host_key": " ".join((keys / "fault_gate_host_ed25519.pub").read_text().split()[:2])}},
    }
    for conn_id, fields in conns.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)


def apply_lab_profile(inventory: str) -> None:
    """The profile's timings onto the running cluster, as an operator changing the inventory would."""
    from pgha.operators.haproxy import HAProxySwitchOperator
    from pgha.operators.patroni import ApplyDcsConfigOperator

    old_loop_wait = int(_patroni_config().get("loop_wait", 10))
    ApplyDcsConfigOperator(task_id="failover_timings", inventory_path=inventory).execute({})
    HAProxySwitchOperator(task_id="switch_haproxy", inventory_path=inventory).execute({})
    time.sleep(old_loop_wait + 2)  # every member has run a loop with the new timings


def _patroni_config() -> dict[str, Any]:
    import requests
    from pghalab import cluster_api

    for address in topology.database_addresses().values():
        try:
            return cluster_api.patroni(address, "/config", timeout=3).json()
        except (requests.RequestException, ValueError):
            continue
    return {}


def load_results(path: Path) -> list[dict[str, Any]]:
    """Drills already measured (one JSON line each): an interrupted benchmark resumes where it stopped."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure_lab(profile: str, scenarios: list[str], runs: int, workdir: Path, results: Path) -> dict[str, list[float]]:
    done = [r for r in load_results(results) if r["profile"] == profile]
    rtos: dict[str, list[float]] = {s: [r["rto_s"] for r in done if r["scenario"] == s][:runs] for s in scenarios}
    if all(len(rtos[s]) >= runs for s in scenarios):
        return rtos
    inventory = lab_inventory(profile, workdir)
    apply_lab_profile(inventory)
    for scenario in scenarios:
        for run in range(len(rtos[scenario]) + 1, runs + 1):
            result = _drill_when_healthy(inventory, scenario)
            rtos[scenario].append(float(result["rto_s"]))
            with results.open("a") as out:
                out.write(json.dumps({"profile": profile, "scenario": scenario, "run": run,
                                      "rto_s": float(result["rto_s"]), "rpo_missing": result["rpo_missing"],
                                      "new_leader": result.get("new_leader"), "passed": result["passed"]}) + "\n")
            print(f"# {profile} {scenario} run {run}: RTO {result['rto_s']:.2f}s RPO {result['rpo_missing']} "
                  f"new leader {result.get('new_leader')} {'PASS' if result['passed'] else result['problems']}",
                  file=sys.stderr, flush=True)
    return rtos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--on", choices=("lab", "loopback"), default="lab")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default=None, help=f"default: {ALL_SCENARIOS} (loopback: no host_isolate)")
    parser.add_argument("--profiles", default=None, help="default: runbook,lab (loopback: runbook,tuned)")
    parser.add_argument("--results", type=Path, default=Path("bench/failover_drill_lab.jsonl"),
                        help="lab: one JSON line per drill; runs already in it are not repeated (resume)")
    args = parser.parse_args()
    lab = args.on == "lab"
    scenarios = (args.scenarios or (ALL_SCENARIOS if lab else ALL_SCENARIOS.rsplit(",", 1)[0])).split(",")
    names = (args.profiles or ("runbook,lab" if lab else "runbook,tuned")).split(",")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pgha-bench-") as workdir:
        os.environ["PGHA_INVENTORY_DIR"] = workdir  # the profiles' inventories are written there
        if lab:
            lab_connections()
            try:
                results = {name: measure_lab(name, scenarios, args.runs, Path(workdir), args.results)
                           for name in names}
            finally:
                apply_lab_profile(lab_inventory("lab", Path(workdir)))
        else:
            results = {name: measure(PROFILES[name], scenarios, args.runs, Path(workdir)) for name in names}
    print(f"client-side RTO, {args.runs} run(s) per scenario, {args.on}, {time.monotonic() - started:.0f}s in all",
          file=TABLE_OUT)
    print(table(results, scenarios), file=TABLE_OUT, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
