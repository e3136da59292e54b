"""Phase 8 and the final cutover: point Airflow at the cluster behind HAProxy."""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException
from hooks.postgres import NodePostgresHook, load_sql
from pgha import airflowcfg
from pgha.inventory import INCLUDE_DIR
from pgha.runtime import credentials

from operators.base import HostOperator, PghaOperator
from operators.postgres import LIVE_MARK

STAGED_SUFFIX = ".pgha-new"


class StageAirflowConfigOperator(HostOperator):
    """
    Phase 8 on one Airflow host: writes ``airflow.cfg.pgha-new`` next to the
    live config, identical except [database] sql_alchemy_conn and (Celery)
    [celery] result_backend, which point at HAProxy's write port, and proves
    that URL logs in and reaches the leader. The live config is not touched.

    ERRATA 15: a host that is not the HAProxy host uses HAProxy's address,
    never localhost.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        remote = self.remote(self.host)
        current = remote.read_file(self.config_path)
        if current is None:
            raise AirflowException(f"[{self.host}] {self.config_path} does not exist (airflow.hosts[].config)")
        app = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}")
        remote.add_secret(app.password)
        haproxy_address = "127.0.0.1" if self.host == inv.haproxy.host else inv.host(inv.haproxy.host).address
        url = airflowcfg.database_url(app.login, app.password, haproxy_address, inv.haproxy.write_port,
                                      inv.postgres.database)
        new = airflowcfg.repoint(current, url, "db+" + url)
        staged_path = self.config_path + STAGED_SUFFIX
        if new == current:
            remote.run(f"rm -f {shlex.quote(staged_path)}")
            self.unchanged(f"{self.config_path} already points at HAProxy")
        else:
            owner = remote.run(f"stat -c '%U %G' {shlex.quote(self.config_path)}", quiet=True).stdout.split()
            staged = remote.put_file(staged_path, new, owner=owner[0], group=owner[1], mode="0600", secret=True)
            self.note(f"{staged_path} staged", staged.changed)
        in_recovery = NodePostgresHook(
            inv.postgres.app_conn_id, host=inv.host(inv.haproxy.host).address, port=inv.haproxy.write_port,
            database=inv.postgres.database,
        ).scalar("SELECT pg_is_in_recovery()")
        if in_recovery is not False:
            raise AirflowException(f"HAProxy :{inv.haproxy.write_port} does not reach the leader (in recovery)")
        return {"config": self.config_path, "already_live": current == new}

    @property
    def config_path(self) -> str:
        return self.inventory.airflow_host(self.host).config


class CutoverOperator(PghaOperator):
    """
    The final task: arms the cutover agent (include/cutover/pgha_cutover.py)
    on the source host as a transient systemd unit that starts after this
    task has reported success (ERRATA 20: with LocalExecutor this task is a
    child of the scheduler the agent stops). The agent stops Airflow, waits
    until no Airflow session is left on the source, takes the final copy
    (ERRATA 21), verifies every table, swaps in the staged airflow.cfg, runs
    ``airflow db check``, starts Airflow, waits for a scheduler heartbeat in
    the new database, and rolls everything back if any step fails.

    :param delay: seconds between this task's success and the agent's start.
    """

    AGENT = "/usr/local/lib/pgha/pgha_cutover.py"
    SETTINGS = "/etc/pgha/cutover.json"
    PGPASS = "/etc/pgha/cutover.pgpass"
    LOG_DIR = "/var/log/pgha"

    def __init__(self, *, delay: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def run(self, context: Any) -> Any:
        inv = self.inventory
        host = inv.source.host
        others = [a.host for a in inv.airflow_hosts if a.host != host]
        if others:  # TODO(issue 4): follower agents on remote Airflow hosts (vm4)
            raise AirflowException(f"cutover of Airflow hosts other than the source host is not supported yet: {others}")
        airflow_host = inv.airflow_host(host)
        remote = self.remote(host)
        staged = airflow_host.config + STAGED_SUFFIX
        if not remote.run(f"test -f {shlex.quote(staged)}", check=False).ok:
            live = NodePostgresHook(inv.postgres.superuser_conn_id, host=inv.host(inv.haproxy.host).address,
                                    port=inv.haproxy.write_port, database="postgres").scalar(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (inv.postgres.database,))
            if live and live.startswith(LIVE_MARK):
                self.unchanged(f"Airflow already runs on the cluster ({live})")
                return {"armed": False}
            raise AirflowException(f"[{host}] no staged config {staged}: run phase 8 first")
        if remote.run("systemctl list-units --all --plain --no-legend 'pgha-cutover-*' | grep -q .", check=False).ok:
            self.unchanged("a cutover agent is already armed or running")
            return {"armed": False}
        unit = f"pgha-cutover-{int(time.time())}"
        self._install_agent(context, unit)
        remote.run(
            f"systemd-run --quiet --collect --unit={unit} --on-active={self.delay} "
            f"/usr/bin/python3 {self.AGENT} {self.SETTINGS}"
        )
        self.changed(f"cutover agent {unit} armed on {host}: starts in {self.delay}s, "
                     f"log {self.LOG_DIR}/cutover-{unit}.log, record in table pgha_cutover_log")
        return {"armed": True, "unit": unit, "host": host}

    def _install_agent(self, context: Any, unit: str) -> None:
        inv = self.inventory
        host = inv.source.host
        remote = self.remote(host)
        airflow_host = inv.airflow_host(host)
        superuser = credentials(inv.postgres.superuser_conn_id, "cluster superuser")
        remote.add_secret(superuser.password)
        cluster_host = "127.0.0.1" if inv.haproxy.host == host else inv.host(inv.haproxy.host).address
        owner = remote.run(f"stat -c %U {shlex.quote(airflow_host.config)}", quiet=True).stdout.strip()
        settings = {
            "run_id": unit,
            "units": list(airflow_host.units),
            "config": airflow_host.config,
            "staged": airflow_host.config + STAGED_SUFFIX,
            "airflow_user": owner,
            "airflow_bin": self._airflow_bin(airflow_host.units[0]),
            "database": inv.postgres.database,
            "owner": inv.postgres.owner,
            "bin_dir": self.os_family(host).postgres_bin(inv.source.major),
            "source_port": NodePostgresHook(inv.source.conn_id).connection.port or 5432,
            "cluster": {"host": cluster_host, "port": inv.haproxy.write_port, "superuser": superuser.login},
            "pgpass": self.PGPASS,
            "log_dir": self.LOG_DIR,
            "sql": {"list_tables": load_sql("list_tables.sql"), "table_fingerprint": load_sql("table_fingerprint.sql")},
        }
        remote.run("install -d -m 0755 /usr/local/lib/pgha && install -d -m 0700 /etc/pgha")
        remote.put_file(self.AGENT, (INCLUDE_DIR / "cutover" / "pgha_cutover.py").read_text(), mode="0755")
        remote.put_file(self.SETTINGS, json.dumps(settings, indent=2), mode="0600")
        pgpass = f"{cluster_host}:{inv.haproxy.write_port}:*:{superuser.login}:{superuser.password}\n"
        remote.put_file(self.PGPASS, pgpass, owner="postgres", mode="0600", secret=True)
        remote.run("chmod 0711 /etc/pgha")

    def _airflow_bin(self, unit: str) -> str:
        """The airflow executable the units run (from the unit's ExecStart)."""
        shown = self.remote(self.inventory.source.host).run(f"systemctl show -P ExecStart {shlex.quote(unit)}").stdout
        match = re.search(r"path=(\S+)", shown)
        if not match:
            raise AirflowException(f"cannot find the airflow executable in {unit}'s ExecStart: {shown.strip()!r}")
        return match.group(1)
