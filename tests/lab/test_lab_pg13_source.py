"""A PostgreSQL 13 source (Debian 11's postgresql-13 on vm1, under Airflow 3.0.6: the newest Airflow
whose metadata database may be 13 is 3.1) migrated to a newer major, with the lab's hostile passwords
and the probe writer committing throughout: with dump_restore into a 15 cluster (Debian 12 database
hosts), with logical replication into a 17 cluster (Debian 13 database hosts, Debian 13's own
PostgreSQL and Patroni). Runs only on a lab provisioned with PGHA_LAB_SOURCE_MAJOR=13:

    PGHA_LAB_SOURCE_MAJOR=13 .venv/bin/python -m pytest -q -m lab tests/lab/test_lab_pg13_source.py

Each test starts from the provisioned vm1 and empty database hosts.
"""

from __future__ import annotations

import pytest
from lab_fixtures import Lab, topology
from one_migration import assert_moved_to_the_cluster, migrate

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(topology.SOURCE_MAJOR != 13,
                       reason=f"the lab's source is PostgreSQL {topology.SOURCE_MAJOR}: provision it with "
                              "PGHA_LAB_SOURCE_MAJOR=13 to run the PostgreSQL 13 source tests"),
]

DAG = "pg_ha_migration"


def test_dump_restore_from_13_to_15_uses_the_clusters_pg_dump(lab: Lab) -> None:
    run = migrate(lab, "dump_restore", 15)
    assert_moved_to_the_cluster(lab, run)
    log = "\n".join(lab.api.task_log(DAG, run["run_id"], "phase6_data_migration.copy_data", try_number=1))
    assert "/usr/lib/postgresql/15/bin/pg_dump" in log and "/usr/lib/postgresql/13/bin/pg_dump" not in log, log[-3000:]
    assert "postgresql-client-15" in log, "the copy said it installed 15's client on vm1"
    assert "copy" in [s["step"] for s in run["record"]["steps"]]


def test_logical_replication_from_13_to_17_on_debian_13(lab: Lab) -> None:
    run = migrate(lab, "logical_replication", 17)
    assert_moved_to_the_cluster(lab, run)
    steps = [s["step"] for s in run["record"]["steps"]]
    assert "catch_up" in steps and "drop_subscription" in steps and "copy" not in steps
    # 13 has no pg_read_all_data: the replication role got only the migrated database's grants
    assert lab.source_sql("SELECT count(*) FROM pg_roles WHERE rolname = 'pg_read_all_data'").strip() == "0"
    for node in ("psg1", "psg2", "psg3"):  # Debian 13, its own PostgreSQL 17 and Patroni
        assert lab.ssh(node, "cut -d. -f1 /etc/debian_version").strip() == "13", node
        assert "17" in lab.ssh(node, "dpkg-query -W -f='${Version}' postgresql-17"), node
        assert lab.ssh(node, "dpkg-query -W -f='${Status}' patroni").strip() == "install ok installed", node
    # the schema was copied on the leader with 17's pg_dump: vm1 (Debian 12, which has no 17) needed none
    log = "\n".join(lab.api.task_log(DAG, run["run_id"], "phase6_data_migration.start_logical_replication",
                                     try_number=1))
    assert "with /usr/lib/postgresql/17/bin/pg_dump" in log, log[-3000:]
