"""After a migration and a failover drill, no secret of the lab is anywhere it should not be.

Runs after the failover drills (tests/lab/conftest.py orders it last), on the lab they leave:
Airflow on the cluster, drills done. Run alone, it migrates and drills once itself. Every
host's files, journal, process list and XCom are searched for every secret of
lab/.state/secrets.json in each form pgha writes it (tests/lab/secret_scan.py).
"""

from __future__ import annotations

import pytest
import secret_scan
from lab_fixtures import Lab

pytestmark = pytest.mark.lab

DRILL = "pg_ha_failover_drill"


@pytest.fixture(scope="module")
def migrated_and_drilled(lab: Lab) -> None:
    lab.ensure_migrated()
    if not lab.api.runs(DRILL, ("success",)):
        lab.unpause_settled(DRILL)
        try:
            run_id = lab.api.trigger(DRILL, {"scenario": "switchover", "rto_slo_s": 120})  # RTO: the benchmark's
            state = lab.api.wait(DRILL, run_id, timeout=1800)
        finally:
            lab.api.pause(DRILL)
        assert state == "success", lab.failure_report(DRILL, run_id)


def test_no_secret_outside_the_files_that_must_hold_one(lab: Lab, migrated_and_drilled: None) -> None:
    hits = secret_scan.scan(lab.secrets)
    for hit in hits:
        print(hit)
    problems = secret_scan.problems(hits)
    assert not problems, "secrets where they must not be:\n  " + "\n  ".join(problems)
    # the scan sees what it must: the files that hold secrets by design are found
    assert any(h.path == "/etc/patroni/patroni.yml" and h.secret == "pg_superuser_password" for h in hits), hits
    assert any(h.path.endswith("/airflow.cfg") and h.secret == "airflow_db_password" for h in hits), hits
    # pgha's client keys (the superuser's sessions from hosts that are no members) went with their work
    for host in ("vm1", "vm4"):
        left = lab.ssh(host, "ls -d /etc/pgha/cutover-client.key /run/pgha/copy-client.key 2>/dev/null || true")
        assert left.strip() == "", (host, left)
