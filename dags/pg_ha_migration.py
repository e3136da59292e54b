"""
pg_ha_migration: Airflow's single PostgreSQL becomes a 3-node Patroni + etcd + HAProxy cluster.

Follows the nine-phase manual runbook (with its mistakes corrected, see README):
preflight, then the nine phases in order, then the cutover (approved by a person
first with the approve_cutover param). Per-node work is mapped over the inventory;
every task is safe to clear and run again. With the dry_run param the run only
plans: each installing task logs the diff of every file and the commands it would
run on each host, and everything that would change a database, wait or cut over skips.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, TaskGroup, chain
from pgha.notify import on_failure_callback
from pgha.operators.airflow import AirflowHostPreflightOperator, CutoverOperator, StageAirflowConfigOperator
from pgha.operators.approval import CutoverApprovalOperator
from pgha.operators.drill import NoDrillRunningOperator
from pgha.operators.etcd import (
    ConfigureEtcdOperator,
    EtcdAuthOperator,
    EtcdLeaderPlacementOperator,
    InstallEtcdOperator,
)
from pgha.operators.haproxy import (
    ClusterRoutingCheckOperator,
    HAProxySwitchOperator,
    InstallHAProxyOperator,
)
from pgha.operators.host import (
    HostPreflightOperator,
    InventoryHostsOperator,
    PrepareHostOperator,
    ValidateInventoryOperator,
)
from pgha.operators.pgbouncer import (
    InstallPgBouncerOperator,
    MoveAirflowOntoPgBouncerOperator,
    PausedSwitchOperator,
)
from pgha.operators.patroni import (
    ApplyDcsConfigOperator,
    ConfigurePatroniOperator,
    InstallPatroniOperator,
    StartPatroniOperator,
    SwitchoverTestOperator,
)
from pgha.operators.tls import CheckCertificatesOperator, IssueCertificatesOperator
from pgha.operators.postgres import (
    CreateDatabaseOperator,
    InstallPostgresOperator,
    MigrateDataOperator,
    PrepareLogicalSourceOperator,
    SourcePreflightOperator,
    StartLogicalReplicationOperator,
    UndoLogicalSourceOperator,
)
from pgha.sensors.airflow import CutoverOutcomeSensor
from pgha.sensors.etcd import EtcdHealthSensor
from pgha.sensors.haproxy import HAProxyRoutingSensor
from pgha.sensors.patroni import PatroniLeaderSensor
from pgha.sensors.postgres import LogicalSyncSensor
from pgha.sensors.pgbouncer import AirflowOnPgBouncerSensor

PHASES = [
    "1_prepare_hosts",
    "2_install_postgres",
    "3_etcd_cluster",
    "4_patroni",
    "5_bootstrap",
    "6_data_migration",
    "7_haproxy",
    "8_repoint_airflow",
    "9_validate",
]

PHASE_TITLES = {
    "1_prepare_hosts": "Prepare hosts: names, package sources, firewall",
    "2_install_postgres": "Install PostgreSQL on the database nodes",
    "3_etcd_cluster": "Certificates, then the etcd cluster, one member at a time",
    "4_patroni": "Install and configure Patroni",
    "5_bootstrap": "Bootstrap: first node leads, the others stream",
    "6_data_migration": "Data: role, database, copy or logical replication",
    "7_haproxy": "HAProxy routes writes to the leader, reads to replicas",
    "8_repoint_airflow": "Stage Airflow's new config, then the cutover",
    "9_validate": "Validate: health, routing, switchover test",
}

params = {
    "inventory_path": Param(
        os.environ.get("PGHA_INVENTORY", "include/inventory.yml"),
        type="string",
        title="Inventory",
        description="Topology file (hosts, versions, ports, connection ids): an absolute path (a relative one names a file shipped inside the pgha package, e.g. its example include/inventory.yml). It must lie in a directory of PGHA_INVENTORY_DIR (default /etc/pgha) or beside PGHA_INVENTORY; any other path is refused before anything runs.",
        section="Topology",
    ),
    "phases": Param(
        PHASES,
        type="array",
        items={"type": "string", "enum": PHASES},
        examples=PHASES,  # the trigger form renders an array with examples as a multi-select
        values_display={phase: f"{phase[0]}. {PHASE_TITLES[phase]}" for phase in PHASES},
        title="Phases to run",
        description="Unselected phases skip; preflight always runs; the cutover runs with phase 8.",
        section="Scope",
    ),
    "migration_method": Param(
        "dump_restore",
        enum=["dump_restore", "logical_replication"],
        title="Data migration method",
        description=(
            "dump_restore: the final pg_dump | pg_restore happens while Airflow is stopped (the window grows "
            "with the database). logical_replication: a subscription started in phase 6 keeps the cluster "
            "current; the cutover only catches up, so the stopped window stays short. Both verify every table."
        ),
        section="Data",
    ),
    "pooler": Param(
        "none",
        enum=["none", "pgbouncer"],
        title="Connection pooler (in progress)",
        description=(
            "none: the cutover stops Airflow for its window. pgbouncer (needs logical_replication): a PgBouncer "
            "on every Airflow host, Airflow moved onto it (one restart, before the migration), and the cutover "
            "done under PgBouncer's PAUSE without restarting Airflow."
        ),
        section="Data",
    ),
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run: plan only, change nothing",
        description=(
            "Preflight runs; then every task that installs or configures renders its files and logs the diff "
            "against each host and the commands it would run (secrets masked), changing nothing on any host "
            "or database. Tasks that change databases, wait for a change, or cut over skip."
        ),
        section="Scope",
    ),
    "approve_cutover": Param(
        False,
        type="boolean",
        title="Ask a person to approve the cutover",
        description=(
            "Before the cutover, the run waits for Approve or Reject (Browse > Required Actions) with what the "
            "cutover will do: database size, method, expected stopped window, hosts to restart. Needs "
            "Airflow 3.1 or later; on 3.0 the run stops before the cutover instead."
        ),
        section="Scope",
    ),
    "run_failover_test": Param(
        True,
        type="boolean",
        title="Run the switchover test",
        description="Phase 9: move the leader to the synchronous standby and check HAProxy follows.",
        section="Validation",
    ),
    "defer_waits": Param(
        False,
        type="boolean",
        title="Wait in the triggerer",
        description=(
            "The etcd and Patroni sensors defer to Airflow's triggerer (asynchronous HTTP) instead of "
            "rescheduling: no worker slot is held while they wait. Needs a running triggerer."
        ),
        section="Validation",
    ),
}

INVENTORY = "{{ params.inventory_path }}"
HOST = "{{ task.host }}"  # a mapped task is named by its host in the grid, not by its index
FIRST_NODE = "{{ ti.xcom_pull(task_ids='preflight.database_nodes')[0] }}"  # the runbook starts psg1 first
SENSOR_TIMEOUT = 900
# The leader the switchover test moved away from ("" when the test was skipped: any leader will do).
OLD_LEADER = (
    "{{ ((ti.xcom_pull(task_ids='phase9_validate.switchover_test') or {}).get('result') or {})"
    ".get('old_leader', '') }}"
)
# The cutover run the `cutover` task armed ("" when it armed nothing: the sensor reads the one armed last).
CUTOVER_RUN_ID = "{{ ((ti.xcom_pull(task_ids='cutover') or {}).get('result') or {}).get('run_id', '') }}"
# What cutover_outcome judged ("success" once Airflow runs on the cluster).
# the restart-based cutover's outcome, or (pooler pgbouncer) the paused cutover's
CUTOVER_OUTCOME = ("{{ (ti.xcom_pull(task_ids='cutover_outcome') or (ti.xcom_pull(task_ids='paused_cutover') or {})"
                   ".get('result') or {}).get('outcome', '') }}")

with DAG(
    dag_id="pg_ha_migration",
    description="Move Airflow's metadata DB to a Patroni + etcd + HAProxy cluster",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=params,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "inventory_path": INVENTORY,
        "trigger_rule": "none_failed",
        "on_failure_callback": on_failure_callback(),  # the inventory's notify: section
    },
    tags=["pgha", "postgres", "ha"],
    doc_md=__doc__,
) as dag:
    with TaskGroup("preflight", tooltip="Inventory, hosts and source database checked; nothing changes") as preflight:
        inventory = ValidateInventoryOperator(task_id="validate_inventory", retries=0)
        NoDrillRunningOperator(task_id="no_drill_running") >> inventory  # a drill breaks the cluster on purpose
        managed_hosts = InventoryHostsOperator(task_id="managed_hosts", role="managed")
        db_nodes = InventoryHostsOperator(task_id="database_nodes", role="database")
        airflow_hosts = InventoryHostsOperator(task_id="airflow_hosts", role="airflow")
        hosts_ok = HostPreflightOperator.partial(task_id="check_host", map_index_template=HOST).expand(
            host=managed_hosts.output
        )
        airflow_ok = AirflowHostPreflightOperator.partial(task_id="check_airflow_host", map_index_template=HOST).expand(
            host=airflow_hosts.output
        )
        source_ok = SourcePreflightOperator(task_id="check_source_db")
        certificates_ok = CheckCertificatesOperator(task_id="check_certificates")
        chain(inventory, [managed_hosts, db_nodes, airflow_hosts], hosts_ok, airflow_ok, source_ok, certificates_ok)

    with TaskGroup("pgbouncer", tooltip="pooler pgbouncer: PgBouncer in front of the source, Airflow onto it") as bouncer:
        chain(
            InstallPgBouncerOperator.partial(task_id="install_pgbouncer", map_index_template=HOST).expand(
                host=airflow_hosts.output
            ),
            # arms the agent that restarts the host's Airflow on its PgBouncer (or puts it back) after this task
            MoveAirflowOntoPgBouncerOperator.partial(
                task_id="move_airflow_onto_pgbouncer", map_index_template=HOST
            ).expand(host=airflow_hosts.output),
            AirflowOnPgBouncerSensor.partial(
                task_id="airflow_on_pgbouncer", map_index_template=HOST, timeout=SENSOR_TIMEOUT
            ).expand(host=airflow_hosts.output),
        )

    with TaskGroup("phase1_prepare_hosts", tooltip=PHASE_TITLES[PHASES[0]]) as phase1:
        PrepareHostOperator.partial(task_id="prepare_host", map_index_template=HOST, phase=PHASES[0]).expand(
            host=managed_hosts.output
        )

    with TaskGroup("phase2_install_postgres", tooltip=PHASE_TITLES[PHASES[1]]) as phase2:
        InstallPostgresOperator.partial(task_id="install_postgres", map_index_template=HOST, phase=PHASES[1]).expand(
            host=db_nodes.output
        )

    with TaskGroup("phase3_etcd_cluster", tooltip=PHASE_TITLES[PHASES[2]]) as phase3:
        chain(
            InstallEtcdOperator.partial(task_id="install_etcd", map_index_template=HOST, phase=PHASES[2]).expand(
                host=db_nodes.output
            ),
            # the CA on every host; each node's certificate, for etcd, Patroni and PostgreSQL (TLS on every link)
            IssueCertificatesOperator.partial(
                task_id="issue_certificates", map_index_template=HOST, phase=PHASES[2]
            ).expand(host=managed_hosts.output),
            ConfigureEtcdOperator.partial(  # one member at a time: a changed unit never costs quorum
                task_id="configure_etcd", map_index_template=HOST, phase=PHASES[2], max_active_tis_per_dagrun=1
            ).expand(
                host=db_nodes.output
            ),
            EtcdHealthSensor(task_id="etcd_healthy", phase=PHASES[2], mode="reschedule", timeout=SENSOR_TIMEOUT),
            # users: root, Patroni's (its keys only), pgha's; then auth on: a certificate alone grants nothing
            EtcdAuthOperator(task_id="etcd_auth", phase=PHASES[2]),
        )

    with TaskGroup("phase4_patroni", tooltip=PHASE_TITLES[PHASES[3]]) as phase4:
        chain(
            InstallPatroniOperator.partial(task_id="install_patroni", map_index_template=HOST, phase=PHASES[3]).expand(
                host=db_nodes.output
            ),
            ConfigurePatroniOperator.partial(
                task_id="configure_patroni", map_index_template=HOST, phase=PHASES[3]
            ).expand(host=db_nodes.output),
        )

    with TaskGroup("phase5_bootstrap", tooltip=PHASE_TITLES[PHASES[4]]) as phase5:
        chain(
            StartPatroniOperator(task_id="start_first_node", phase=PHASES[4], host=FIRST_NODE),
            PatroniLeaderSensor(
                task_id="leader_elected", phase=PHASES[4], expected_replicas=0, mode="reschedule",
                timeout=SENSOR_TIMEOUT,
            ),
            StartPatroniOperator.partial(
                task_id="start_all_nodes", map_index_template=HOST, phase=PHASES[4]
            ).expand(host=db_nodes.output),
            PatroniLeaderSensor(
                task_id="replicas_streaming", phase=PHASES[4], require_sync=True, mode="reschedule",
                timeout=SENSOR_TIMEOUT,
            ),
            ApplyDcsConfigOperator(task_id="failover_timings", phase=PHASES[4]),
        )

    with TaskGroup("phase6_data_migration", tooltip=PHASE_TITLES[PHASES[5]]) as phase6:
        database = CreateDatabaseOperator(task_id="create_role_and_database", phase=PHASES[5])
        # one of the two runs, by the migration_method Param; the other skips
        database >> MigrateDataOperator(task_id="copy_data", phase=PHASES[5], execution_timeout=timedelta(hours=6))
        chain(
            database,
            PrepareLogicalSourceOperator(task_id="prepare_logical_source", phase=PHASES[5]),
            StartLogicalReplicationOperator(task_id="start_logical_replication", phase=PHASES[5]),
            LogicalSyncSensor(task_id="logical_initial_sync", phase=PHASES[5], mode="reschedule", timeout=3600),
        )

    with TaskGroup("phase7_haproxy", tooltip=PHASE_TITLES[PHASES[6]]) as phase7:
        chain(
            InstallHAProxyOperator(task_id="install_haproxy", phase=PHASES[6]),
            HAProxySwitchOperator(task_id="switch_haproxy", phase=PHASES[6]),
            HAProxyRoutingSensor(task_id="haproxy_routes_like_patroni", phase=PHASES[6], timeout=SENSOR_TIMEOUT),
        )

    with TaskGroup("phase8_repoint_airflow", tooltip=PHASE_TITLES[PHASES[7]]) as phase8:
        StageAirflowConfigOperator.partial(
            task_id="stage_airflow_config", map_index_template=HOST, phase=PHASES[7]
        ).expand(host=airflow_hosts.output)

    with TaskGroup("phase9_validate", tooltip=PHASE_TITLES[PHASES[8]]) as phase9:
        chain(
            PatroniLeaderSensor(
                task_id="cluster_healthy", phase=PHASES[8], require_sync=True, max_lag_bytes=16 * 1024 * 1024,
                mode="reschedule", timeout=SENSOR_TIMEOUT,
            ),
            EtcdHealthSensor(task_id="etcd_healthy", phase=PHASES[8], mode="reschedule", timeout=SENSOR_TIMEOUT),
            HAProxyRoutingSensor(task_id="haproxy_routes_like_patroni", phase=PHASES[8], timeout=SENSOR_TIMEOUT),
            ClusterRoutingCheckOperator(task_id="routing_through_haproxy", phase=PHASES[8]),
            SwitchoverTestOperator(task_id="switchover_test", phase=PHASES[8]),
            PatroniLeaderSensor(
                task_id="cluster_healthy_after_switchover", phase=PHASES[8], not_leader=OLD_LEADER,
                require_sync=True, max_lag_bytes=16 * 1024 * 1024, mode="reschedule", poke_interval=3,
                timeout=SENSOR_TIMEOUT,
            ),
            HAProxyRoutingSensor(task_id="haproxy_follows_the_switchover", phase=PHASES[8], timeout=SENSOR_TIMEOUT),
            ClusterRoutingCheckOperator(task_id="routing_after_switchover", phase=PHASES[8]),
            EtcdLeaderPlacementOperator(task_id="etcd_leader_off_patroni_leader", phase=PHASES[8]),
        )

    # approve_cutover: a person reads what the cutover will do and approves it (a timeout or Reject: no cutover)
    approval = CutoverApprovalOperator(task_id="approve_cutover", phase=PHASES[7], retries=0)
    cutover = CutoverOperator(task_id="cutover", phase=PHASES[7])
    # The agents move Airflow after `cutover` succeeded; this wait turns the run red on their rollback.
    # Its timeout covers the agent's longest copy (6 h); a poke killed by the agents' stop is retried.
    # all_success: it skips with a skipped cutover (pooler pgbouncer).
    cutover_outcome = CutoverOutcomeSensor(
        task_id="cutover_outcome", phase=PHASES[7], run_id=CUTOVER_RUN_ID, timeout=7 * 3600,
        trigger_rule="all_success",
    )
    # Logical replication only, after a success: the source loses its replication role, pg_hba rules,
    # publication and listen_addresses change (a rollback keeps them, for the retry).
    undo_logical_source = UndoLogicalSourceOperator(
        task_id="undo_logical_source", phase=PHASES[7], cutover_outcome=CUTOVER_OUTCOME,
    )

    # pooler pgbouncer: the cutover under PgBouncer's PAUSE instead (Airflow keeps running); else it skips
    paused_cutover = PausedSwitchOperator(task_id="paused_cutover", phase=PHASES[7], mode="cutover")

    # PgBouncer after phase 1, whose prepared hosts (the package proxy among them) its install needs
    chain(preflight, phase1, bouncer, phase2, phase3, phase4, phase5, phase6, phase7, phase8, phase9,
          approval, [cutover, paused_cutover])
    chain(cutover, cutover_outcome, undo_logical_source)
    paused_cutover >> undo_logical_source  # none_failed: after whichever of the two cutovers ran
