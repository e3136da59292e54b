"""pg_ha_migration end to end on the lab's real hosts, triggered as an operator would.

The lab (lab/lab) boots once per session; vm1 is restored to its provisioned
snapshot (a real Airflow 3 on a single PostgreSQL with history) and the
database hosts to the empty base. Tests in this module build on each other
in order: the migration, then a second run, then cleared phases.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
import requests
import yaml
from lab_fixtures import LAB_INVENTORY, NODES, READ_PORT, VM1, WRITE_PORT, Lab
from pghalab import cluster_api

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"


AIRFLOW_HOME = "/home/airflow/airflow"  # the airflow user's own directory, where airflow.cfg lives
AIRFLOW_HOSTS = ("vm1", "vm4")
# Names an attacker with the airflow account would plant links at: every name pgha ever used for its work
# beside airflow.cfg (the staged config, backups, a temp file). Each points at a root-only file of ours.
PLANTED = ("airflow.cfg.pgha-new", "airflow.cfg.pgha-bak", "airflow.cfg.pgha-bak-20260101T000000",
           ".airflow.cfg.pgha-tmp", ".pgha-put.tmp")
BAITS = ("/root/pgha-bait-1", "/root/pgha-bait-2")  # nothing else on the host changes them


def plant_links(lab: Lab) -> dict[str, str]:
    """As the airflow user: links at PLANTED in AIRFLOW_HOME to root-only bait files; each bait's state."""
    for host in AIRFLOW_HOSTS:
        lab.ssh(host, "umask 077 && " + " && ".join(f"echo {n} > {b}" for n, b in enumerate(BAITS)))
        links = " && ".join(f"ln -sfn {BAITS[n % len(BAITS)]} {AIRFLOW_HOME}/{name}" for n, name in enumerate(PLANTED))
        lab.ssh(host, f"runuser -u airflow -- sh -c '{links}'")
    return bait_states(lab)


def bait_states(lab: Lab) -> dict[str, str]:
    """host -> each bait's sha256, owner and mode, and where each planted link points."""
    listing = " ".join(f"{AIRFLOW_HOME}/{name}" for name in PLANTED)
    return {host: lab.ssh(host, f"sha256sum {' '.join(BAITS)} && stat -c '%n %U:%G %a' {' '.join(BAITS)} && "
                                f"readlink {listing}") for host in AIRFLOW_HOSTS}


@pytest.fixture(scope="module")
def migrated(lab: Lab) -> dict[str, Any]:
    """Trigger the migration through the REST API and wait for it (survives the cutover restart)."""
    lab.reset_to_provisioned()
    baits = plant_links(lab)
    # a writer that commits every 100 ms throughout, stopped and repointed by the cutover like any Airflow unit
    inventory = lab.install_probe()
    lab.api.unpause(DAG)
    # the etcd and Patroni sensors wait in the triggerer here (the other lab runs reschedule)
    run_id = lab.api.trigger(DAG, {"inventory_path": inventory, "defer_waits": True})
    state = lab.api.wait(DAG, run_id, timeout=2400, progress=lab.progress(DAG, run_id))
    record = lab.wait_for_cutover() if state == "success" else {}
    return {"run_id": run_id, "state": state, "inventory": inventory, "cutover": record, "baits": baits}


def states(lab: Lab, run_id: str) -> dict[str, str]:
    return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in lab.api.task_instances(DAG, run_id)}


OTHER_METHOD = {"phase6_data_migration.prepare_logical_source[-1]", "phase6_data_migration.start_logical_replication[-1]",
                "phase6_data_migration.logical_initial_sync[-1]"}


NOT_THIS_RUN = ("pgbouncer.", "paused_cutover[", "undo_logical_source[", "approve_cutover[")


def test_every_task_succeeded(lab: Lab, migrated: dict[str, Any]) -> None:
    found = states(lab, migrated["run_id"])
    assert migrated["state"] == "success", lab.failure_report(DAG, migrated["run_id"])
    # the logical-replication branch skips itself when migration_method is dump_restore, the pooler's
    # tasks when pooler is none, and the logical source's undo with them; the approval when approve_cutover is off
    not_this_run = {k for k in found if k.startswith(NOT_THIS_RUN)} | OTHER_METHOD
    assert {k for k, v in found.items() if v == "skipped"} == not_this_run, found
    assert len(found) > 40 and all(v == "success" for k, v in found.items() if k not in not_this_run), found


def test_links_the_airflow_user_planted_were_never_followed(lab: Lab, migrated: dict[str, Any]) -> None:
    """Phase 8 and the cutover ran as root beside links the airflow user planted in its own directory:
    the root-only files they point at are unchanged, every link still points where it did, and airflow.cfg
    is the airflow user's regular file."""
    assert migrated["state"] == "success" and migrated["cutover"].get("outcome") == "success", migrated["cutover"]
    assert bait_states(lab) == migrated["baits"]
    for host in AIRFLOW_HOSTS:
        assert lab.ssh(host, f"stat -c '%F %U %a' {AIRFLOW_HOME}/airflow.cfg").strip() == "regular file airflow 600"


def test_the_sensors_waited_in_the_triggerer(lab: Lab, migrated: dict[str, Any]) -> None:
    """defer_waits: a sensor that found the cluster not ready deferred, and its trigger fired in the
    triggerer (whose log lines Airflow appends to the task's log)."""
    deferred = []
    for task_id in ("phase3_etcd_cluster.etcd_healthy", "phase5_bootstrap.leader_elected",
                    "phase5_bootstrap.replicas_streaming"):
        log = "\n".join(lab.api.task_log(DAG, migrated["run_id"], task_id, try_number=1))
        if "Pausing task as DEFERRED" in log:
            assert "Trigger fired event" in log and "condition met" in log, log[-3000:]
            deferred.append(task_id)
    assert deferred, "no sensor deferred although the run asked for defer_waits"


def test_patroni_one_leader_two_streaming_one_sync(lab: Lab, migrated: dict[str, Any]) -> None:
    members = cluster_api.patroni(NODES['psg1'], "/cluster", timeout=5).json()["members"]
    for _ in range(30):  # Patroni re-elects a sync standby within a loop_wait after a switchover
        if any(m["role"] == "sync_standby" for m in members):
            break
        time.sleep(1)
        members = cluster_api.patroni(NODES['psg1'], "/cluster", timeout=5).json()["members"]
    roles = sorted(m["role"] for m in members)
    assert roles.count("leader") == 1
    replicas = [m for m in members if m["role"] != "leader"]
    assert len(replicas) == 2 and all(m["state"] == "streaming" for m in replicas), members
    assert any(m["role"] == "sync_standby" for m in replicas), members


def test_etcd_healthy_with_exactly_three_members(lab: Lab, migrated: dict[str, Any]) -> None:
    for address in NODES.values():
        assert cluster_api.etcd(address, "/health", timeout=5).json()["health"] == "true"
    members = cluster_api.etcd(NODES['psg1'], "/v3/cluster/member/list", {}, timeout=5).json()
    assert sorted(m["name"] for m in members["members"]) == sorted(NODES)


def test_haproxy_write_port_reaches_leader_and_read_port_a_replica(lab: Lab, migrated: dict[str, Any]) -> None:
    for port, expected in ((WRITE_PORT, False), (READ_PORT, True)):
        with lab.connect(host=VM1, port=port) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone()[0] is expected, port


def test_cluster_tables_match_the_source_at_the_switch(lab: Lab, migrated: dict[str, Any]) -> None:
    record = migrated["cutover"]
    assert record["outcome"] == "success", record
    at_switch = record["result"]["fingerprints"]
    assert len(at_switch) > 20 and record["result"]["rows"] > 1000, record["result"]["rows"]
    # Nothing writes to the source after the switch, so today's source is the source at the switch.
    source_now = lab.source_fingerprints()
    assert source_now == at_switch


def test_airflow_runs_on_haproxy_and_a_fresh_run_works(lab: Lab, migrated: dict[str, Any]) -> None:
    config = lab.ssh("vm1", "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg").split("@", 1)[1]
    assert config.startswith(f"127.0.0.1:{WRITE_PORT}/airflow_db"), config
    # /etc/pgha/airflow.env is root 0600: pgha-airflow reads it as root, then runs the CLI as airflow
    listing = lab.ssh("vm1", "pgha-airflow dags list -o json")
    # the CLI may log lines before its JSON document: take the line that is the document
    document = next(line for line in listing.splitlines() if line.startswith("[{"))
    assert DAG in {d["dag_id"] for d in json.loads(document)}
    run_id = lab.api.trigger("lab_smoke")
    assert lab.api.wait("lab_smoke", run_id, timeout=600) == "success"
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM dag_run WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("success",)
        for _ in range(60):  # the scheduler on the cluster finalizes the run if the copy caught it running
            cur.execute("SELECT state FROM dag_run WHERE run_id = %s", (migrated["run_id"],))
            state = cur.fetchone()
            if state == ("success",):
                break
            time.sleep(2)
        assert state == ("success",), "the migration run is recorded as successful on the cluster"


def test_the_remote_celery_worker_was_repointed_and_runs_tasks(lab: Lab, migrated: dict[str, Any]) -> None:
    """vm4 (the runbook's VM4): its agent followed the primary's outcome; it reaches the cluster through
    HAProxy on vm1's address (never localhost) and still runs Celery tasks."""
    with lab.connect(host=VM1, port=WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, outcome FROM pgha_cutover_log WHERE role = 'follower' AND run_id = %s",
                    (migrated["cutover"]["run_id"],))
        assert cur.fetchall() == [("vm4", "success")]
    config = lab.ssh("vm4", "grep -E '^(sql_alchemy_conn|result_backend) ' /home/airflow/airflow/airflow.cfg")
    targets = sorted(line.split("@", 1)[1].split("/", 1)[0] for line in config.splitlines())
    assert targets == [f"{VM1}:{WRITE_PORT}"] * 2, config
    assert lab.ssh("vm4", "systemctl is-active airflow-celery-worker").strip() == "active"
    run_id = lab.api.trigger("lab_celery_smoke")
    assert lab.api.wait("lab_celery_smoke", run_id, timeout=600) == "success", lab.failure_report("lab_celery_smoke", run_id)
    assert lab.api.xcom("lab_celery_smoke", run_id, "on_worker") == "vm4"


def test_every_acknowledged_write_is_in_the_cluster(lab: Lab, migrated: dict[str, Any]) -> None:
    acks = lab.probe_acks()
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq FROM pgha_probe")
        stored = {row[0] for row in cur.fetchall()}
    assert len(acks) > 100, "the probe wrote throughout the migration"
    assert set(acks) - stored == set(), "acknowledged writes missing on the cluster"
    assert lab.ssh("vm1", "systemctl is-active airflow-probe").strip() == "active"


def test_second_run_succeeds_and_changes_nothing(lab: Lab, migrated: dict[str, Any]) -> None:
    run_id = lab.api.trigger(DAG, {"run_failover_test": False, "inventory_path": migrated["inventory"]})
    assert lab.api.wait(DAG, run_id, timeout=1800) == "success", lab.failure_report(DAG, run_id)
    changed = lab.changed_tasks(DAG, run_id)
    assert changed == {}, changed


@pytest.mark.parametrize("group", ["phase3_etcd_cluster", "phase5_bootstrap", "phase7_haproxy", "phase1_prepare_hosts"])
def test_clearing_a_phase_reruns_it_cleanly(lab: Lab, migrated: dict[str, Any], group: str) -> None:
    run_id = migrated["run_id"]
    task_ids = sorted({t["task_id"] for t in lab.api.task_instances(DAG, run_id) if t["task_id"].startswith(group)})
    assert task_ids
    lab.api.clear(DAG, run_id, task_ids)
    assert lab.api.wait(DAG, run_id, timeout=1200) == "success", lab.failure_report(DAG, run_id)
    after = {k: v for k, v in states(lab, run_id).items() if k.startswith(group)}
    assert after and all(v == "success" for k, v in after.items() if k not in OTHER_METHOD), after
    assert lab.changed_tasks(DAG, run_id, prefix=group) == {}


class QuorumWatch(threading.Thread):
    """Every 0.25 s, a linearizable etcd read through any member; counts the rounds that no member served.
    It reads Patroni's leader key as pgha's etcd user (etcd RBAC: that user may read Patroni's keys only)."""

    def __init__(self, key: str) -> None:
        super().__init__(daemon=True)
        self.rounds = self.failed = 0
        self.stopping = threading.Event()
        self.body = {"key": base64.b64encode(key.encode()).decode()}

    def served(self, address: str) -> bool:
        try:
            return cluster_api.etcd(address, "/v3/kv/range", self.body, timeout=2).ok
        except requests.RequestException:
            return False

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            self.rounds += 1
            self.failed += not any(self.served(address) for address in NODES.values())

    def __enter__(self) -> QuorumWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()


def patroni_key_prefix() -> str:
    """Where Patroni keeps the lab cluster's keys in etcd (lab/inventory.yml's namespace and name)."""
    from pgha.inventory import parse_inventory

    return parse_inventory(yaml.safe_load(LAB_INVENTORY.read_text())).patroni_key_prefix


def patroni_leader() -> str:
    members = cluster_api.patroni(NODES['psg1'], "/cluster", timeout=5).json()["members"]
    return next(m["name"] for m in members if m["role"] == "leader")


def test_a_changed_etcd_unit_restarts_one_member_at_a_time_without_losing_quorum(
    lab: Lab, migrated: dict[str, Any]
) -> None:
    for node in NODES:  # drift, as a hand edit would cause: phase 3 puts the managed unit back
        lab.ssh(node, "echo '# edited by hand' >> /etc/systemd/system/etcd.service && systemctl daemon-reload")
    run_id, leader = migrated["run_id"], patroni_leader()
    task_ids = sorted({t["task_id"] for t in lab.api.task_instances(DAG, run_id)
                       if t["task_id"].startswith("phase3_etcd_cluster")})
    with QuorumWatch(f"{patroni_key_prefix()}leader") as watch:
        lab.api.clear(DAG, run_id, task_ids)
        assert lab.api.wait(DAG, run_id, timeout=1200) == "success", lab.failure_report(DAG, run_id)
    changed = lab.changed_tasks(DAG, run_id, prefix="phase3_etcd_cluster.configure_etcd")
    assert len(changed) == 3 and all(any("one member at a time" in c for c in v) for v in changed.values()), changed
    assert watch.rounds > 20 and watch.failed == 0, f"{watch.failed} of {watch.rounds} reads found no quorum"
    assert patroni_leader() == leader


def test_psql_through_haproxy_as_airflow(lab: Lab, migrated: dict[str, Any]) -> None:
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM task_instance")
        assert cur.fetchone()[0] > 1000
