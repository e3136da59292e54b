"""The lab as a pytest resource: boot once per session, reset between modules."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg2

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "lab"))

from pghalab import topology  # noqa: E402  (the lab's hosts table: names, addresses, ports)
from pghalab import cluster_api  # noqa: E402
from pghalab import lab_airflow  # noqa: E402
from pghalab.airflow_api import AirflowAPI  # noqa: E402
from pghalab.deploy import lab_inventory  # noqa: E402
from pghalab.settings import LAB_COMMAND as LAB  # noqa: E402
from pghalab.settings import LAB_INVENTORY, SECRETS  # noqa: E402

VM1 = topology.address(topology.AIRFLOW_HOST)  # Airflow, its old PostgreSQL, HAProxy
NODES = topology.database_addresses()  # {psg1: address, ...}
WRITE_PORT, READ_PORT = topology.HAPROXY_WRITE_PORT, topology.HAPROXY_READ_PORT  # HAProxy on vm1
STATS_PORT = topology.HAPROXY_STATS_PORT  # HAProxy's stats page on vm1
MIGRATION = "pg_ha_migration"
PATRONI_PORT, ETCD_PORT = topology.PATRONI_REST_PORT, topology.ETCD_CLIENT_PORT
POSTGRES_PORT = topology.POSTGRES_PORT  # PostgreSQL on every host

SNAPSHOT = "provisioned"
PROBE_UNIT = """\
[Unit]
Description=pgha lab writer probe (an Airflow-like component: commits a numbered row every 100 ms)
[Service]
User=airflow
Environment=AIRFLOW_HOME=/home/airflow/airflow
ExecStart=/opt/airflow/venv/bin/python /opt/pgha/lab/probe_writer.py
Restart=always
RestartSec=1
"""
TABLE_FINGERPRINT = (REPO_ROOT / "include" / "sql" / "table_fingerprint.sql").read_text()
LIST_TABLES = (REPO_ROOT / "include" / "sql" / "list_tables.sql").read_text()


def lab(*args: str, timeout: float = 3600) -> str:
    """Run lab/lab and return its stdout (its log goes to stderr, shown by pytest on failure)."""
    proc = subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr[-5000:])
    if proc.returncode:
        raise RuntimeError(f"lab/lab {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def client_certificate() -> dict[str, str]:
    """libpq's sslcert/sslkey: a client certificate of the lab's cluster CA, as pgha's own sessions show one
    (the cluster superuser needs it through HAProxy, whose host is no member)."""
    cert, key = cluster_api._tls()["cert"]
    return {"sslcert": cert, "sslkey": key}


class Lab:
    def __init__(self) -> None:
        self.secrets = json.loads(SECRETS.read_text())
        self.api = AirflowAPI(topology.api_url(), "admin", self.secrets["admin_password"])

    def up(self) -> None:
        lab("up")
        lab("provision")

    def unpause_settled(self, dag_id: str, timeout: float = 1800) -> None:
        """Unpause a scheduled DAG; return once the runs the scheduler makes of it on its own are done.

        Unpausing lets the scheduler run the latest scheduled interval at once (catchup=False still
        runs the last one): a test that reads the cluster and then triggers its own run would see
        both runs' effects. Done when the DAG's next scheduled run lies in the future (everything due
        was created) and none of its runs is queued or running.
        """
        self.api.unpause(dag_id)
        deadline, seen = time.monotonic() + timeout, ""
        while True:
            due = self.api.dag(dag_id).get("next_dagrun_run_after")
            active = sorted(r["dag_run_id"] for r in self.api.runs(dag_id, ("queued", "running")))
            if not active and (due is None or datetime.fromisoformat(due) > datetime.now(timezone.utc)):
                return
            line = f"{dag_id}: next scheduled run after {due}, active {active or 'none'}"
            if line != seen:
                print(f"waiting for the scheduler's own runs: {line}", flush=True)
                seen = line
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler's own runs not done after {timeout}s: {line}")
            time.sleep(5)

    def reset_to_provisioned(self, cluster_major: int | None = None) -> None:
        """Empty database hosts (on the Debian release of a ``cluster_major`` cluster: 17 is Debian 13;
        default PGHA_LAB_CLUSTER_MAJOR's) and vm1, vm4 as provisioned."""
        lab("reset", "psg1", "psg2", "psg3", *(["--cluster-major", str(cluster_major)] if cluster_major else []))
        lab("provision")  # restores vm1 from its snapshot when it was changed, deploys the code

    def install_probe(self, cluster_major: int | None = None) -> str:
        """Install the airflow-probe writer unit on vm1 and an inventory listing it (the lab's majors, as
        `deploy` writes them, or a ``cluster_major`` cluster); returns that inventory."""
        import yaml

        inventory = yaml.safe_load(lab_inventory(LAB_INVENTORY.read_text(),
                                                 cluster_major=cluster_major or topology.CLUSTER_MAJOR))
        inventory["airflow"]["hosts"][0]["units"].append("airflow-probe")
        self.ssh("vm1", "install -d -o airflow -g airflow /var/lib/pgha-probe && rm -f /var/lib/pgha-probe/acks.log")
        self.put("vm1", "/etc/pgha/inventory-probe.yml", yaml.safe_dump(inventory))
        self.put("vm1", "/etc/systemd/system/airflow-probe.service", PROBE_UNIT)
        self.ssh("vm1", "chmod 0644 /etc/pgha/inventory-probe.yml && systemctl daemon-reload && "
                        "systemctl restart airflow-probe && sleep 2 && systemctl is-active airflow-probe")
        return "/etc/pgha/inventory-probe.yml"

    def probe_acks(self) -> list[int]:
        return [int(x) for x in self.ssh("vm1", "cat /var/lib/pgha-probe/acks.log").split()]

    def put(self, node: str, path: str, content: str) -> None:
        proc = subprocess.run([str(LAB), "ssh", node, f"umask 077 && cat > {shlex.quote(path)}"], input=content, text=True,
                              capture_output=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"writing {node}:{path} failed: {proc.stderr}")

    def ssh(self, node: str, command: str, timeout: float = 300) -> str:
        return lab("ssh", node, command, timeout=timeout)

    @contextmanager
    def connect(self, host: str, port: int, database: str = "airflow_db", superuser: bool = False) -> Iterator[Any]:
        user, password = (("postgres", self.secrets["pg_superuser_password"]) if superuser
                          else ("airflow_user", self.secrets["airflow_db_password"]))
        conn = psycopg2.connect(host=host, port=port, dbname=database, user=user, password=password,
                                connect_timeout=10, **client_certificate())
        conn.autocommit = True
        try:
            yield conn
        finally:
            conn.close()

    def cutover_record(self, role: str = "primary") -> dict[str, Any]:
        conn = psycopg2.connect(host=VM1, port=WRITE_PORT, dbname="postgres", user="postgres",
                                password=self.secrets["pg_superuser_password"], connect_timeout=10,
                                **client_certificate())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT record FROM pgha_cutover_log WHERE role = %s ORDER BY id DESC LIMIT 1", (role,))
                row = cur.fetchone()
                if row is None:
                    raise LookupError("no cutover record yet")
                return row[0]
        finally:
            conn.close()

    def wait_for_cutover(self, timeout: float = 600) -> dict[str, Any]:
        """The DAG run succeeds when the agents are armed; they start 20 s later. Wait for the record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.cutover_record()
            except Exception:  # no table yet, no row yet, or HAProxy not answering during the switch
                time.sleep(3)
        raise TimeoutError("the cutover agent recorded no outcome")

    def source_sql(self, query: str) -> str:
        """Run SQL on vm1's old database as postgres; the text goes over stdin."""
        proc = subprocess.run([str(LAB), "ssh", "vm1", "runuser -u postgres -- psql -X -q -At -d airflow_db -f -"],
                              input=query, text=True, capture_output=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"psql on vm1 failed: {proc.stderr}")
        return proc.stdout

    def source_fingerprints(self) -> dict[str, str]:
        """Per table 'count|md5' on vm1's old database, computed like the cutover agent does."""
        out = {}
        for row in self.source_sql(LIST_TABLES).splitlines():
            schema, table, name = row.split("|")  # name: as quote_ident writes it, the agent's key
            query = ("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD';\n"
                     + TABLE_FINGERPRINT.replace("{table}", '"{}"."{}"'.format(*(part.replace('"', '""')
                                                                                    for part in (schema, table)))))
            out[name] = self.source_sql(query).strip().splitlines()[-1]
        return out

    def changed_tasks(self, dag_id: str, run_id: str, prefix: str = "") -> dict[str, list[str]]:
        """Tasks whose summary says they changed something (the switchover test is a change by design)."""
        changed = {}
        for ti in self.api.task_instances(dag_id, run_id):
            if not ti["task_id"].startswith(prefix) or ti["state"] != "success":
                continue
            value = self.api.xcom(dag_id, run_id, ti["task_id"], ti["map_index"])
            if isinstance(value, dict) and value.get("changed"):
                changed[f"{ti['task_id']}[{ti['map_index']}]"] = value.get("changes", [])
        return changed

    def failure_report(self, dag_id: str, run_id: str) -> str:
        tis = self.api.task_instances(dag_id, run_id)
        bad = [f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis if t["state"] != "success"]
        return "not successful: " + ", ".join(bad) + "".join(self._log_tail(dag_id, run_id, t) for t in tis
                                                             if t["state"] == "failed")

    def _log_tail(self, dag_id: str, run_id: str, ti: dict[str, Any], lines: int = 60) -> str:
        """The end of a failed task's last try, so a CI failure says why without the lab."""
        try:
            log = self.api.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
        except Exception as exc:  # noqa: BLE001 - a report must not hide the assertion it explains
            return f"\n--- {ti['task_id']}: no log ({exc})"
        return f"\n--- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}, last {lines} lines:\n" + \
            "\n".join(log[-lines:])

    def airflow_on_cluster(self) -> bool:
        """vm1's Airflow runs on the cluster (its URL goes to HAProxy's write port)."""
        cfg = self.ssh("vm1", "grep -E '^sql_alchemy_conn' /home/airflow/airflow/airflow.cfg || true")
        return f":{WRITE_PORT}/" in cfg

    def ensure_migrated(self) -> None:
        """Airflow on the cluster: reuse what earlier tests left, else migrate from a provisioned lab now."""
        if self.airflow_on_cluster():
            return
        self.reset_to_provisioned()
        self.api.unpause(MIGRATION)
        run_id = self.api.trigger(MIGRATION, {})
        assert self.api.wait(MIGRATION, run_id, timeout=2400) == "success", self.failure_report(MIGRATION, run_id)
        assert self.wait_for_cutover()["outcome"] == "success"

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, timeout: float = 2400) -> None:
        """Until ``task_id`` of the run succeeds; the failure report as soon as any task fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {t["task_id"]: t["state"] for t in self.api.task_instances(dag_id, run_id)}
            if states.get(task_id) == "success":
                return
            if any(s in ("failed", "upstream_failed") for s in states.values()):
                raise AssertionError(self.failure_report(dag_id, run_id))
            time.sleep(2)
        raise TimeoutError(f"{task_id} not successful after {timeout}s")

    def progress(self, dag_id: str, run_id: str) -> Callable[[str], None]:
        started = time.monotonic()

        def show(state: str) -> None:
            print(f"[{time.monotonic() - started:6.0f}s] {dag_id} {run_id}: {state}", flush=True)

        return show


def wait_for_mail(matches: Callable[[dict[str, Any]], bool], timeout: float = 300) -> dict[str, Any]:
    """The first alert the lab's SMTP sink kept that ``matches``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in lab_airflow.delivered_mail() if matches(m)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no such alert; the sink has: {[m['subject'] for m in lab_airflow.delivered_mail()]}")
        time.sleep(5)
