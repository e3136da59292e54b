"""One whole migration on the lab, and what must hold after it: the PostgreSQL 13 source tests and
the lab matrix (tests/lab/test_lab_combination.py, bench/lab_matrix.py) share it."""

from __future__ import annotations

from typing import Any

from lab_fixtures import VM1, WRITE_PORT, Lab, topology

DAG = "pg_ha_migration"


def migrate(lab: Lab, method: str, cluster_major: int) -> dict[str, Any]:
    """pg_ha_migration with ``method`` into a ``cluster_major`` cluster (its Debian release's database
    hosts, emptied first; vm1 as provisioned), the probe writer committing throughout."""
    lab.reset_to_provisioned(cluster_major)
    source = str(topology.SOURCE_MAJOR)
    assert lab.source_sql("SHOW server_version_num").strip().startswith(source), f"vm1 runs PostgreSQL {source}"
    assert lab.ssh("vm1", "/opt/airflow/venv/bin/airflow version").strip().splitlines()[-1] == topology.AIRFLOW_RELEASE
    inventory = lab.install_probe(cluster_major)
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"inventory_path": inventory, "migration_method": method,
                                   "run_failover_test": False})
    state = lab.api.wait(DAG, run_id, timeout=2400, progress=lab.progress(DAG, run_id))
    assert state == "success", lab.failure_report(DAG, run_id)
    record = lab.wait_for_cutover()
    assert record["outcome"] == "success", record
    return {"run_id": run_id, "record": record, "cluster": str(cluster_major)}


def assert_moved_to_the_cluster(lab: Lab, run: dict[str, Any]) -> None:
    """Identical data, every acknowledged write kept, Airflow on the cluster's major and healthy."""
    record, cluster = run["record"], run["cluster"]
    assert lab.source_fingerprints() == record["result"]["fingerprints"]
    acks = lab.probe_acks()  # read first: the probe goes on writing, and every ack read must be in what we select
    with lab.connect(host=VM1, port=WRITE_PORT) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        assert cur.fetchone()[0].startswith(cluster), f"Airflow's database is the {cluster} cluster"
        cur.execute("SELECT seq FROM pgha_probe")
        stored = {row[0] for row in cur.fetchall()}
    assert len(acks) > 100 and set(acks) - stored == set(), "every acknowledged write is in the cluster"
    smoke = lab.api.trigger("lab_smoke")
    assert lab.api.wait("lab_smoke", smoke, timeout=600) == "success", "Airflow is healthy on the cluster"
