"""The cutover on the lab: what preflight refuses before any change, and the automatic rollback.

Each test starts from the provisioned lab (Airflow on vm1's single PostgreSQL,
empty database hosts). The logical-replication method is migrated whole by
test_lab_pooler.py (through the pause, PostgreSQL 15 source) and by
test_lab_pg13_source.py (the restart-based cutover, PostgreSQL 13 source): one
migration per path, not a third here.
"""

from __future__ import annotations

import time

import pytest

from lab_fixtures import VM1, WRITE_PORT, Lab, wait_for_mail

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"


def wait_for_record(lab: Lab, since_id: str | None, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = lab.cutover_record()
            if record["run_id"] != since_id:
                return record
        except Exception:  # the table does not exist before the first cutover
            pass
        time.sleep(3)
    raise TimeoutError("no cutover record")


DROP_IN = "/etc/systemd/system/airflow-dag-processor.service.d/pgha-test-database.conf"


def plant_a_database_url_in_a_units_environment(lab: Lab) -> None:
    """vm1's dag processor gets sql_alchemy_conn from a drop-in's Environment=: after the cutover it would
    come back on the source."""
    url = lab.ssh("vm1", "sed -n 's/^sql_alchemy_conn *= *//p' /home/airflow/airflow/airflow.cfg").strip()
    url = url.replace("%%", "%")  # as Airflow's config parser reads it
    # systemd's Environment= quoting: the URL (any password) inside double quotes, \\ and " escaped
    quoted = url.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    lab.ssh("vm1", f"install -d {DROP_IN.rsplit('/', 1)[0]}")
    lab.put("vm1", DROP_IN, f'[Service]\nEnvironment="AIRFLOW__DATABASE__SQL_ALCHEMY_CONN={quoted}"\n')
    lab.ssh("vm1", f"chmod 0600 {DROP_IN} && systemctl daemon-reload && systemctl restart airflow-dag-processor")


BAIT, CONFIG = "/root/pgha-bait-cfg", "/home/airflow/airflow/airflow.cfg"


def plant_an_airflow_cfg_link_to_a_root_only_file(lab: Lab) -> str:
    """The airflow user replaces vm4's airflow.cfg with a link to a root-only file; the file's hash and owner."""
    lab.ssh("vm4", f"umask 077 && echo 'root only: not for the airflow user' > {BAIT} && cp -p {CONFIG} {CONFIG}.saved")
    before = lab.ssh("vm4", f"sha256sum {BAIT} && stat -c '%U:%G %a' {BAIT}")
    lab.ssh("vm4", f"runuser -u airflow -- ln -sfn {BAIT} {CONFIG}")
    return before


def test_a_database_url_in_an_environment_and_a_linked_airflow_cfg_are_refused_before_any_change(lab: Lab) -> None:
    """Two Airflow hosts, each with a problem preflight must find (both planted, one run: each host's check
    is its own mapped task). vm1: a unit takes sql_alchemy_conn from its environment, named with the unit and
    the variable. vm4: airflow.cfg is a link the airflow user made to a root-only file; preflight (root, over
    SSH) refuses to read through it, names the path, and the file is intact. No task after preflight runs."""
    lab.reset_to_provisioned()
    try:
        plant_a_database_url_in_a_units_environment(lab)
        bait_before = plant_an_airflow_cfg_link_to_a_root_only_file(lab)
        lab.api.unpause(DAG)
        run_id = lab.api.trigger(DAG, {"run_failover_test": False})
        assert lab.api.wait(DAG, run_id, timeout=900) == "failed"
        states = {(t["task_id"], t["map_index"]): t for t in lab.api.task_instances(DAG, run_id)}
        failed = [t for k, t in states.items() if k[0] == "preflight.check_airflow_host" and t["state"] == "failed"]
        assert len(failed) == 2, states
        logs = ["\n".join(lab.api.task_log(DAG, run_id, t["task_id"], t["try_number"], t["map_index"]))
                for t in failed]
        environment = "airflow-dag-processor takes [database] sql_alchemy_conn from environment " \
                      "(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)"
        link = f"refusing {CONFIG}: it is a symbolic link; nothing was read"
        assert sum(environment in log for log in logs) == 1, logs[0][-3000:] + logs[1][-3000:]
        assert sum(link in log for log in logs) == 1, logs[0][-3000:] + logs[1][-3000:]
        assert not any("root only" in log for log in logs)  # nothing of the bait reached a log
        changed = [k for k, t in states.items() if not k[0].startswith("preflight.") and t["state"] == "success"]
        assert changed == [], "nothing after preflight ran"
        assert lab.ssh("vm4", f"sha256sum {BAIT} && stat -c '%U:%G %a' {BAIT}") == bait_before
    finally:
        lab.ssh("vm1", f"rm -f {DROP_IN} && systemctl daemon-reload && systemctl restart airflow-dag-processor")
        lab.ssh("vm4", f"if [ -L {CONFIG} ]; then rm -f {CONFIG} && mv {CONFIG}.saved {CONFIG}; fi; rm -f {BAIT}")


def test_a_failure_after_the_stop_rolls_back_to_the_source(lab: Lab) -> None:
    lab.reset_to_provisioned()
    lab.api.unpause(DAG)
    run_id = lab.api.trigger(DAG, {"run_failover_test": False})
    lab.wait_for_task(DAG, run_id, "cutover", timeout=1800)
    # The agent begins once Airflow has recorded the task's success, then stops, drains and copies before
    # its db check: break the new URL's login now (the copy keeps roles).
    with lab.connect(host=VM1, port=WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("ALTER ROLE airflow_user PASSWORD 'not-the-password-airflow-has'")
    record = wait_for_record(lab, None)
    assert record["outcome"] == "rolled_back", record
    failed = [s for s in record["steps"] if not s["ok"]]
    assert failed and failed[0]["step"] == "db_check", record["steps"]
    assert any(s["step"] == "start_old" and s["ok"] for s in record["steps"])
    # the run's last task turns it red with the agent's reason (on the source database Airflow came back on)
    assert lab.api.wait(DAG, run_id, timeout=900) == "failed"
    outcome = next(t for t in lab.api.task_instances(DAG, run_id) if t["task_id"] == "cutover_outcome")
    assert outcome["state"] == "failed", outcome
    log = "\n".join(lab.api.task_log(DAG, run_id, "cutover_outcome", try_number=outcome["try_number"]))
    assert "rolled_back" in log and "primary" in log, log[-3000:]
    mail = wait_for_mail(lambda m: "cutover_outcome" in m["subject"] and run_id in m["body"])
    assert "failed" in mail["subject"] and "rolled_back" in mail["body"] and "vm1 (primary)" in mail["body"], mail
    conf = lab.ssh("vm1", "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg")
    assert "@127.0.0.1:5432/airflow_db" in conf, "the old airflow.cfg is back"
    smoke = lab.api.trigger("lab_smoke")
    assert lab.api.wait("lab_smoke", smoke, timeout=600) == "success", "Airflow works on the old database"
    count = lab.source_sql(f"SELECT count(*) FROM dag_run WHERE run_id = '{smoke}'").strip()
    assert count == "1", "the fresh run was written to the source database"
    with lab.connect(host=VM1, port=WRITE_PORT, database="postgres", superuser=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'airflow_db'")
        assert cur.fetchone()[0] is None, "the cluster database is not marked live"
