"""Phase 8 and the final cutover: point Airflow at the cluster behind HAProxy."""

from __future__ import annotations

import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowException

from hooks.postgres import NodePostgresHook
from operators.base import HostOperator
from pgha import airflowcfg
from pgha.runtime import credentials

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
        owner = remote.run(f"stat -c '%U %G %a' {shlex.quote(self.config_path)}", quiet=True).stdout.split()
        staged = remote.put_file(self.config_path + STAGED_SUFFIX, new, owner=owner[0], group=owner[1],
                                 mode="0600", secret=True)
        self.note(f"{self.config_path}{STAGED_SUFFIX} staged", staged.changed)
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


class CutoverOperator(HostOperator):
    """
    The final task on one Airflow host: installs the staged config (the old
    one kept as a dated backup) and arms a detached restart of the host's
    Airflow units. ERRATA 20: with LocalExecutor this task is a child of the
    scheduler, so the restart runs in a transient systemd unit that starts
    only after this task has reported success.

    TODO(issue 4): stop writers, take the final copy inside the stopped
    window, roll back automatically.

    :param restart_delay: seconds between arming and restarting.
    """

    def __init__(self, *, restart_delay: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.restart_delay = restart_delay

    def run(self, context: Any) -> Any:
        airflow_host = self.inventory.airflow_host(self.host)
        remote = self.remote(self.host)
        cfg = shlex.quote(airflow_host.config)
        staged = shlex.quote(airflow_host.config + STAGED_SUFFIX)
        if not remote.run(f"test -f {staged}", check=False).ok:
            raise AirflowException(f"[{self.host}] no staged config {staged}: run phase 8 first")
        if remote.run(f"cmp -s {staged} {cfg}", check=False).ok:
            remote.run(f"rm -f {staged}")
            self.unchanged(f"{airflow_host.config} already points at the cluster")
            return {"restart": False}
        remote.run(f"cp -p {cfg} {cfg}.pgha-bak-$(date +%Y%m%dT%H%M%S) && mv -f {staged} {cfg}")
        self.changed(f"{airflow_host.config} now points at HAProxy (previous kept as .pgha-bak-*)")
        units = " ".join(shlex.quote(u) for u in airflow_host.units)
        remote.run(
            f"systemd-run --quiet --collect --unit=pgha-restart-airflow-$(date +%s) "
            f"--on-active={self.restart_delay} /bin/systemctl restart {units}"
        )
        self.changed(f"restart of {airflow_host.units} armed in {self.restart_delay}s (transient unit)")
        return {"restart": True}
