"""
pg_ha_failover_drill: prove every night that the cluster fails over, measured from a client.

Each night drills the next scenario the inventory enables (host_crash and
host_isolate need drill.fault_injector), so every scenario is drilled in
turn; a manual run may pick one. A drill never starts while the migration
(pg_ha_migration) is queued or running, and the migration refuses to start
while a drill runs.

precheck (skips a cluster that is not healthy: a drill never degrades a
degraded cluster) -> start_probe (a transient systemd unit on a host that is
not the leader commits a numbered row through HAProxy every ~50 ms and
records each acknowledgment) -> inject (switchover, patroni_stop,
postmaster_kill, host_crash, host_isolate) -> new_leader (Patroni) ->
client_writes (the probe commits on the leader again) -> routing (HAProxy
matches Patroni) -> heal (always: brings the target back) -> cluster_whole
(always: the target streams again, a sync standby, HAProxy as Patroni says)
-> etcd_leader (etcd's leader off Patroni's) -> stop_probe -> analyse (RTO,
RPO = 0, timeline; table pgha_drill_history, XCom, one screen in the log;
fails on a broken SLO or a lost write).

This DAG drills the cluster that holds Airflow's own metadata DB: the probe
runs outside Airflow, every wait is a sensor that reschedules, every task
retries and keeps its record on the probe host, and heal, cluster_whole,
stop_probe and analyse run whatever happened before them.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param, chain
from pgha.drill import ROTATION, schedule_from_inventory, worst_case
from pgha.inventory import DRILL_SCENARIOS
from pgha.notify import on_failure_callback
from pgha.operators.drill import (
    AnalyseDrillOperator,
    DrillPrecheckOperator,
    HealOperator,
    InjectFaultOperator,
    StartProbeOperator,
    StopProbeOperator,
)
from pgha.operators.etcd import EtcdLeaderPlacementOperator
from pgha.sensors.drill import DrillClientWritesSensor, DrillClusterWholeSensor
from pgha.sensors.haproxy import HAProxyRoutingSensor
from pgha.sensors.patroni import PatroniLeaderSensor

INVENTORY_DEFAULT = os.environ.get("PGHA_INVENTORY", "include/inventory.yml")

params = {
    "inventory_path": Param(
        INVENTORY_DEFAULT,
        type="string",
        title="Inventory",
        description=(
            "Topology file; its drill: section sets the schedule, probe and SLOs. It must lie in a directory "
            "of PGHA_INVENTORY_DIR (default /etc/pgha) or beside PGHA_INVENTORY; any other path is refused."
        ),
        section="Topology",
    ),
    "scenario": Param(
        ROTATION,
        enum=[ROTATION, *DRILL_SCENARIOS],
        values_display={
            ROTATION: "rotation: the scenario of the night (every scenario the inventory enables, in turn)",
            "switchover": "switchover: planned, POST /switchover to a synchronous standby",
            "patroni_stop": "patroni_stop: systemctl stop patroni on the target",
            "postmaster_kill": "postmaster_kill: SIGKILL to the postmaster under a live Patroni",
            "host_crash": "host_crash: drill.inject_commands on drill.fault_injector",
            "host_isolate": "host_isolate: drill.inject_commands on drill.fault_injector",
        },
        title="Scenario",
        description=(
            "Scheduled runs rotate through the enabled scenarios, one per night (the logical date's day picks it; "
            "host_crash and host_isolate only with drill.fault_injector and their drill.inject_commands). "
            "A manual run may pick one."
        ),
        section="Drill",
    ),
    "target": Param(
        "leader",
        type="string",
        pattern="^(leader|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$",
        title="Target",
        description="'leader' (whichever node leads when the drill starts) or a database node's name.",
        section="Drill",
    ),
    "rto_slo_s": Param(
        None,
        type=["null", "number"],
        title="RTO SLO (seconds)",
        description="Override drill.rto_slo_s for this run. Empty: the inventory's (or what its timings promise).",
        section="SLO",
    ),
    "max_lag_bytes": Param(
        None,
        type=["null", "integer"],
        title="Max replication lag before the drill (bytes)",
        description="Override drill.max_lag_bytes for this run's precheck.",
        section="SLO",
    ),
}

PLAN = "{{ (ti.xcom_pull(task_ids='precheck') or {}).get('result') }}"
MUST_LEAVE = "{{ ((ti.xcom_pull(task_ids='precheck') or {}).get('result') or {}).get('must_leave') }}"
STEPS = {step: "{{ ti.xcom_pull(task_ids='%s') }}" % step
         for step in ("inject", "new_leader", "client_writes", "routing", "heal", "cluster_whole")}
# Every wait is a sensor that reschedules (no worker slot held between pokes). A sensor's retry starts
# its timeout again, so sensors retry once (a poke that broke), operators three times.
RECOVERY_TIMEOUT = 900  # never a sensor's 7-day default: a lost host takes ~ttl, a booting one longer
WHOLE_TIMEOUT = 1200  # the target rejoins (pg_rewind, or a fresh basebackup of a big database)
WAIT = {"mode": "reschedule", "retries": 1, "execution_timeout": timedelta(minutes=1)}  # per poke
# analyse's outlet: every judged drill is an event whose extra is the result (what a downstream DAG reads)
DRILL_RESULT = Asset(name="pgha_drill_result", uri="pgha://drill/result", group="pgha")

with DAG(
    dag_id="pg_ha_failover_drill",
    description="Nightly failover drill: RTO and RPO measured from a client, history kept on the cluster",
    schedule=schedule_from_inventory(INVENTORY_DEFAULT),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=params,
    render_template_as_native_obj=True,  # the plan and step XComs reach the operators as dicts
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=20),
        "inventory_path": "{{ params.inventory_path }}",
        "on_failure_callback": on_failure_callback(),  # the inventory's notify: section
    },
    tags=["pgha", "postgres", "ha", "drill"],
    doc_md=__doc__,
) as dag:
    chain(
        DrillPrecheckOperator(
            task_id="precheck", execution_timeout=timedelta(minutes=2),
            doc_md="Picks the scenario (the Param, or the night's in the rotation) and plans the drill, or skips "
                   "with the reason: an unhealthy cluster, a migration queued or running.",
        ),
        StartProbeOperator(
            task_id="start_probe", plan=PLAN, execution_timeout=timedelta(minutes=2),
            doc_md="Starts the write probe on the probe host: a numbered row through HAProxy every "
                   "`drill.probe_interval_ms`, each acknowledgment kept on that host.",
        ),
        InjectFaultOperator(
            task_id="inject", plan=PLAN, execution_timeout=timedelta(minutes=5),
            doc_md="Injects the fault once: recorded as *attempted* before, *confirmed* once the cluster shows it. "
                   "A retry after an unconfirmed attempt looks at the cluster and confirms, injects again or fails.",
        ),
        PatroniLeaderSensor(
            task_id="new_leader", expected_replicas=0, not_leader=MUST_LEAVE, poke_interval=2,
            timeout=RECOVERY_TIMEOUT, **WAIT,
            doc_md="Waits until Patroni has one leader (another one if the scenario must move it).",
        ),
        DrillClientWritesSensor(
            task_id="client_writes", plan=PLAN, poke_interval=1, timeout=300, **WAIT,
            doc_md="Waits until the probe has a commit acknowledged by the new leader: the client's recovery.",
        ),
        HAProxyRoutingSensor(
            task_id="routing", poke_interval=1, timeout=300, **WAIT,
            doc_md="Waits until HAProxy routes writes to exactly the leader Patroni names.",
        ),
        HealOperator(
            task_id="heal", plan=PLAN, trigger_rule="all_done", execution_timeout=timedelta(minutes=7),
            doc_md="Always runs (`all_done`): brings the target back (starts Patroni, or the inventory's heal "
                   "command) unless it answers; nothing for a switchover or a postmaster kill.",
        ),
        DrillClusterWholeSensor(
            task_id="cluster_whole", plan=PLAN, trigger_rule="all_done", poke_interval=2, timeout=WHOLE_TIMEOUT,
            **WAIT,
            doc_md="Always runs: waits until the target streams again, a synchronous standby exists and HAProxy "
                   "routes as Patroni says.",
        ),
        EtcdLeaderPlacementOperator(
            task_id="etcd_leader", execution_timeout=timedelta(minutes=1),
            doc_md="Moves etcd's leader off Patroni's leader host, so one crash never costs two elections.",
        ),
        StopProbeOperator(
            task_id="stop_probe", plan=PLAN, trigger_rule="all_done", execution_timeout=timedelta(minutes=2),
            doc_md="Always runs: stops the write probe; its acknowledgments stay on the probe host.",
        ),
        AnalyseDrillOperator(
            task_id="analyse", plan=PLAN, steps=STEPS, trigger_rule="all_done", execution_timeout=timedelta(minutes=3),
            outlets=[DRILL_RESULT],
            doc_md="The verdict: RTO, RPO (acknowledged writes missing), the timeline; kept in `pgha_drill_history`, "
                   "fails on a broken SLO, a lost write or a step that did not complete.",
        ),
    )

# The run's timeout is every task's worst case added up (the tasks run one after another), so it never
# cuts heal or cluster_whole short and leaves a host crashed or isolated; it only ends a run stuck in the
# scheduler. A task with a longer timeout or more retries raises it with it.
dag.dagrun_timeout = sum((worst_case(task) for task in dag.tasks), timedelta())
