#!/usr/bin/env python3
"""Benchmark: what an Airflow-like client sees with PgBouncer's PAUSE and without, side by side.

An independent client (bench/pooler_writer.py, on vm1) commits one INSERT every 50 ms and records
failed transactions, the longest commit latency and the longest gap between two commits. Events:

- switchover (the nightly drill's planned switchover, on a cluster Airflow reaches through its
  PgBouncer): "today" = the drill without pgbouncer.enabled, its writer straight to HAProxy's write
  port; "pause" = the drill with pgbouncer.enabled, its writer through vm1's PgBouncer. Both writers
  run in every drill, so the table also shows PgBouncer without the pause.
- host_crash, host_isolate, postmaster_kill, patroni_stop (unplanned, nothing to pause for): the drill of that
  scenario with Airflow on its PgBouncers; its two writers side by side, straight to HAProxy (the cluster's
  own RTO) and through vm1's PgBouncer (Airflow's path), to show the pooler does not make a failure worse.
- cutover (logical, --sizes MB of airflow_db): "today" = the restart-based cutover, Airflow's stopped
  window from the cutover agent's record (bench/cutover_window.py's measure); "pause" = pooler
  pgbouncer, the writer through vm1's PgBouncer from the move onto it to the end of the run, and the
  paused cutover's own figure (how long Airflow's transactions waited).

Prints min / median / max over --runs per cell. Needs the lab (lab/lab up); the switchover event
migrates with pooler pgbouncer first when Airflow does not go through PgBouncer yet.

    .venv/bin/python bench/pooler_window.py [--events switchover,cutover] [--runs 5] [--sizes 50,1024]
        [--variants today,pause]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "bench"))

from cutover_window import cluster_exists, drop_cluster_copy, grow, one_run  # noqa: E402
from lab_fixtures import VM1, WRITE_PORT, Lab, topology  # noqa: E402
from lab_fixtures import lab as lab_cli  # noqa: E402

MIGRATION, DRILL = "pg_ha_migration", "pg_ha_failover_drill"
HOST = topology.AIRFLOW_HOST
WRITER = "/var/lib/pgha-probe/pooler_writer.py"
CA_FILE = "/etc/pgha/tls/ca.crt"
INVENTORY = "/opt/pgha/lab/inventory.yml"  # PGHA_INVENTORY of the lab's Airflow units
WITH_PGBOUNCER = "/etc/pgha/inventory-bench-pgbouncer.yml"
UNPLANNED = ("host_crash", "host_isolate", "postmaster_kill", "patroni_stop")
POOLER = {"migration_method": "logical_replication", "pooler": "pgbouncer", "run_failover_test": False}


def start_writer(lab: Lab, via: str) -> None:
    lab.ssh(HOST, "install -d -o airflow -g airflow /var/lib/pgha-probe")  # not on a freshly provisioned vm1
    lab.put(HOST, WRITER, (REPO / "bench" / "pooler_writer.py").read_text())
    lab.ssh(HOST, f"chmod 0755 {WRITER} && "
                  f"{{ systemctl stop pgha-bench-writer-{via}; systemctl reset-failed pgha-bench-writer-{via}; }} "
                  "2>/dev/null; "  # an interrupted invocation's
                  f"rm -f /var/lib/pgha-probe/bench-{via}.json && "
                  f"systemd-run --quiet --unit pgha-bench-writer-{via} --uid airflow "
                  f"--setenv AIRFLOW_HOME=/home/airflow/airflow /opt/airflow/venv/bin/python {WRITER} --via {via} "
                  f"--out /var/lib/pgha-probe/bench-{via}.json --haproxy {VM1}:{WRITE_PORT} --ca {CA_FILE}")


def stop_writer(lab: Lab, via: str) -> dict[str, Any]:
    """The writer's result, with ``lost``: how many of its acknowledged rows the cluster lacks (None if
    the cluster could not be read)."""
    lab.ssh(HOST, f"systemctl stop pgha-bench-writer-{via}; systemctl reset-failed pgha-bench-writer-{via} "
                  "2>/dev/null || true")
    seen = json.loads(lab.ssh(HOST, f"cat /var/lib/pgha-probe/bench-{via}.json"))
    acked = seen.pop("acked_ids", [])
    try:
        with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgha_bench_writes WHERE id = ANY(%s)", (acked,))
            seen["lost"] = len(acked) - int(cur.fetchone()[0])
    except Exception as exc:  # noqa: BLE001 - the figure is reported missing, the run goes on
        print(f"lost writes not counted: {exc}", file=sys.stderr, flush=True)
        seen["lost"] = None
    return seen


def airflow_through_pgbouncer(lab: Lab) -> bool:
    config = lab.ssh(HOST, "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg || true")
    return "@127.0.0.1:6432/" in config and lab.api.runs(MIGRATION, ("success",)) != []


def migrate_with_pooler(lab: Lab) -> str:
    lab.reset_to_provisioned()
    lab.api.unpause(MIGRATION)
    run_id = lab.api.trigger(MIGRATION, POOLER)
    if lab.api.wait(MIGRATION, run_id, timeout=3600, poll=10) != "success":
        raise RuntimeError(lab.failure_report(MIGRATION, run_id))
    return run_id


def scheduler(lab: Lab) -> dict[str, str]:
    """systemd's MainPID and NRestarts of vm1's Airflow scheduler."""
    out = lab.ssh(HOST, "systemctl show airflow-scheduler -p MainPID -p NRestarts")
    return dict(line.split("=", 1) for line in out.split())


def wait_through_a_hung_scheduler(lab: Lab, run_id: str, since: str) -> tuple[str, int]:
    """The drill's end state, and how often vm1's scheduler had to be restarted by hand on the way: a scheduler
    whose query the switchover cut shuts down, and Airflow's LocalExecutor may then wait for an idle worker
    forever (seen on the lab; systemd restarts only a scheduler that exits)."""
    hung = 0
    for _ in range(5):
        try:
            return lab.api.wait(DRILL, run_id, timeout=240, poll=3), hung
        except Exception:  # noqa: BLE001 - not done in time: a hung scheduler is restarted, anything else raised
            stuck = lab.ssh(HOST, f"journalctl -u airflow-scheduler --since {since!r} --no-pager "
                                  "| grep -c 'Shutting down LocalExecutor' || true").strip()
            if stuck == "0":
                raise
            print(f"vm1's scheduler hung in its shutdown since {since}: restarted", file=sys.stderr, flush=True)
            lab.ssh(HOST, "systemctl restart airflow-scheduler")
            since, hung = datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S"), hung + 1
    raise RuntimeError(f"drill {run_id} did not end")


def drill_once(lab: Lab, inventory: str, scenario: str = "switchover") -> dict[str, Any]:
    for via in ("haproxy", "pgbouncer"):
        start_writer(lab, via)
    time.sleep(3)
    before, since = scheduler(lab), datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S")
    try:
        run_id = lab.api.trigger(DRILL, {"scenario": scenario, "inventory_path": inventory, "rto_slo_s": 300})
        state, hung = wait_through_a_hung_scheduler(lab, run_id, since)
        time.sleep(3)
    finally:
        seen = {via: stop_writer(lab, via) for via in ("haproxy", "pgbouncer")}
    if state != "success":
        raise RuntimeError(lab.failure_report(DRILL, run_id))
    after = scheduler(lab)
    inject = (lab.api.xcom(DRILL, run_id, "inject") or {}).get("result") or {}
    # the scheduler's own deaths: systemd's restarts of it and the hung ones restarted above
    died = int(after["NRestarts"]) - int(before["NRestarts"]) + hung
    return {"writers": seen, "detail": inject.get("detail"), "scheduler_died": died, "scheduler_hung": hung}


def drills_through_pgbouncer(lab: Lab) -> None:
    """Airflow on its PgBouncers (a migration with pooler pgbouncer first if not), the drill unpaused and settled,
    and WITH_PGBOUNCER: the lab's inventory with ``pgbouncer.enabled``."""
    if not airflow_through_pgbouncer(lab):
        print("migrating with pooler pgbouncer first", file=sys.stderr, flush=True)
        migrate_with_pooler(lab)
    raw = yaml.safe_load(lab.ssh(HOST, f"cat {INVENTORY}"))
    raw["pgbouncer"] = {"enabled": True}
    lab.put(HOST, WITH_PGBOUNCER, yaml.safe_dump(raw))
    lab.ssh(HOST, f"chmod 0644 {WITH_PGBOUNCER}")
    lab.unpause_settled(DRILL)


def unplanned(lab: Lab, runs: int, scenarios: list[str], keep) -> list[dict[str, Any]]:
    """Unplanned failures (no pause: nothing announces them), Airflow on its PgBouncers: each drill's two writers
    side by side, straight to HAProxy (the cluster's own RTO, last turn's table) and through vm1's PgBouncer."""
    drills_through_pgbouncer(lab)
    results = []
    try:
        for run in range(1, runs + 1):
            for scenario in scenarios:
                seen = drill_once(lab, WITH_PGBOUNCER, scenario)
                results.append({"event": scenario, "variant": "unplanned", "run": run, **seen})
                keep(results[-1:])
                print(f"{scenario} run {run}: {json.dumps(seen['writers'])}", file=sys.stderr, flush=True)
    finally:
        lab.api.pause(DRILL)
    return results


def switchovers(lab: Lab, runs: int, keep) -> list[dict[str, Any]]:
    drills_through_pgbouncer(lab)
    results = []
    try:
        for run in range(1, runs + 1):
            for variant, inventory in (("today", INVENTORY), ("pause", WITH_PGBOUNCER)):
                seen = drill_once(lab, inventory)
                results.append({"event": "switchover", "variant": variant, "run": run, **seen})
                keep(results[-1:])
                print(f"switchover {variant} run {run}: {json.dumps(seen['writers'])}", file=sys.stderr, flush=True)
    finally:
        lab.api.pause(DRILL)
    return results


def paused_cutover(lab: Lab, megabytes: int) -> dict[str, Any]:
    if cluster_exists():
        lab_cli("provision")
        drop_cluster_copy(lab)
    else:  # a fresh lab, or a pause-only invocation's first run
        lab.reset_to_provisioned()
    size = grow(lab, megabytes)
    lab.api.unpause(MIGRATION)
    run_id = lab.api.trigger(MIGRATION, POOLER)
    lab.wait_for_task(MIGRATION, run_id, "phase3_etcd_cluster.etcd_healthy", timeout=3600)  # Airflow moved
    start_writer(lab, "pgbouncer")
    try:
        state = lab.api.wait(MIGRATION, run_id, timeout=7200, poll=10)
    finally:
        seen = stop_writer(lab, "pgbouncer")
    if state != "success":
        raise RuntimeError(lab.failure_report(MIGRATION, run_id))
    result = (lab.api.xcom(MIGRATION, run_id, "paused_cutover") or {}).get("result") or {}
    task = next(t for t in lab.api.task_instances(MIGRATION, run_id) if t["task_id"] == "paused_cutover")
    window = (datetime.fromisoformat(task["start_date"]).timestamp(), datetime.fromisoformat(task["end_date"]).timestamp())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"size": size, "commit": commit.stdout.strip(), "writer": seen, "paused_s": result.get("paused_s"),
            "cutover_latency_s": slowest_within(seen.get("slow") or [], window),
            "log": pause_log_lines(lab, run_id)}


PAUSE_TASKS = ("phase6_data_migration.prepare_logical_source", "paused_cutover")
PAUSE_WORDS = ("PAUSE", "RESUME", "in the pause", "before the pause", "changed since", "restart", "postponed")


def pause_log_lines(lab: Lab, run_id: str) -> dict[str, list[str]]:
    """The lines of the tasks that pause Airflow that say how long each step took, kept with the run's figures
    (a slow run is explained from them after the lab has moved on)."""
    kept: dict[str, list[str]] = {}
    for ti in lab.api.task_instances(MIGRATION, run_id):
        if ti["task_id"] in PAUSE_TASKS:
            try:
                lines = lab.api.task_log(MIGRATION, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
            except Exception as exc:  # noqa: BLE001 - the figures matter more than their explanation
                lines = [f"no log: {exc}"]
            kept[ti["task_id"]] = [line for line in lines if any(word in line for word in PAUSE_WORDS)][-60:]
    return kept


def slowest_within(slow: list[list[float]], window: tuple[float, float]) -> float:
    """The longest of the writer's slow commits that overlap ``window`` (the paused cutover task); below the
    writer's SLOW threshold when none does. Without it the run's longest commit may be phase 6's source
    restart under the pause, earlier in the same run."""
    inside = [latency for start, latency in slow if start < window[1] and start + latency > window[0]]
    return max(inside, default=0.0)


def cutovers(lab: Lab, runs: int, sizes: list[int], variants: list[str], keep) -> list[dict[str, Any]]:
    results = []
    for megabytes in sizes:
        for run in range(1, runs + 1):
            pair = []
            if "today" in variants:
                today = one_run(lab, "logical_replication", megabytes, fresh=not cluster_exists())  # a fresh lab has none
                pair.append({"event": f"cutover {megabytes} MB", "variant": "today", "run": run,
                             "window": today["window"], "size": today["size"]})
            if "pause" in variants:
                pair.append({"event": f"cutover {megabytes} MB", "variant": "pause", "run": run,
                             **paused_cutover(lab, megabytes)})
            keep(pair)
            results += pair
            print(f"cutover {megabytes} MB run {run}: {json.dumps([{k: v for k, v in r.items() if k != 'log'} for r in pair])}",
                  file=sys.stderr, flush=True)
    return results


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def died(rows: list[dict[str, Any]]) -> str:
    """In how many runs vm1's scheduler died (of which hung until restarted by hand), or - when not counted."""
    counted = [x for x in rows if "scheduler_died" in x]
    if not counted:
        return "-"
    hung = sum(1 for x in counted if x.get("scheduler_hung"))
    return f"{sum(1 for x in counted if x['scheduler_died'])} of {len(counted)}" + (f" ({hung} hung)" if hung else "")


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| event | variant | client path | runs | failed transactions (min / median / max) | lost writes | "
             "longest commit latency s | ... within the cutover task s | longest gap between commits s | "
             "Airflow stopped or held s | Airflow's scheduler died |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        writers = r.get("writers") or ({"pgbouncer": r["writer"]} if r.get("writer") else {"-": {}})
        for via, seen in writers.items():
            cells.setdefault((r["event"], r["variant"], via), []).append({**seen, **r})
    for (event, variant, via), rows in cells.items():
        path = {"haproxy": "direct to HAProxy", "pgbouncer": "vm1's PgBouncer", "-": "(Airflow restarted)"}[via]
        held = [float(x["window"]) for x in rows if x.get("window") is not None] + \
               [float(x["paused_s"]) for x in rows if x.get("paused_s") is not None]
        lines.append(f"| {event} | {variant} | {path} | {len(rows)} | "
                     f"{spread([x['failed'] for x in rows if 'failed' in x])} | "
                     f"{spread([x['lost'] for x in rows if x.get('lost') is not None])} | "
                     f"{spread([x['longest_latency_s'] for x in rows if 'longest_latency_s' in x])} | "
                     f"{spread([x['cutover_latency_s'] for x in rows if x.get('cutover_latency_s') is not None])} | "
                     f"{spread([x['longest_gap_s'] for x in rows if 'longest_gap_s' in x])} | {spread(held)} | "
                     f"{died(rows)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="switchover,cutover",
                        help=f"switchover, cutover and any unplanned drill scenario: {','.join(UNPLANNED)}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="50,1024", help="airflow_db sizes in MB for the cutover")
    parser.add_argument("--variants", default="today,pause",
                        help="cutover variants to run: today (restart-based), pause (pooler pgbouncer)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "pooler_window_lab.jsonl")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs in --results")
    args = parser.parse_args()
    if args.table_only:
        print(table([json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]))
        return 0
    lab = Lab()
    events = args.events.split(",")
    results: list[dict[str, Any]] = []

    def keep(rows: list[dict[str, Any]]) -> None:
        """Append finished runs at once: an interrupted invocation keeps what it measured."""
        with args.results.open("a") as out:
            for r in rows:
                out.write(json.dumps(r) + "\n")

    if "cutover" in events:
        results += cutovers(lab, args.runs, [int(s) for s in args.sizes.split(",")], args.variants.split(","), keep)
    if "switchover" in events:
        results += switchovers(lab, args.runs, keep)
    faults = [e for e in events if e in UNPLANNED]
    if faults:
        results += unplanned(lab, args.runs, faults, keep)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
