"""Phase 8 and the final cutover: point Airflow at the cluster behind HAProxy."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from pgha.compat import AirflowException, AirflowSkipException
from pgha import airflowenv, pgdata, tls
from pgha.cutover import BACKUP_DIR, CLIENT_CERT, CLIENT_KEY, PGPASS, RESUME_UNIT, STAGED_CONFIG, STATE_DIR
from pgha.render import render
from pgha.hooks.postgres import node_endpoint
from pgha.pgdata import Endpoint
from pgha.runtime import agent_airflow_settings, arming_task, repoint_airflow_config

from pgha.operators.base import HostOperator, PghaOperator

class AirflowHostPreflightOperator(HostOperator):
    """
    Preflight on one Airflow host: every unit in ``airflow.hosts[].units`` exists and takes
    its database settings (``[database] sql_alchemy_conn``, ``[celery] result_backend``) from
    the config file the inventory names, which is what the cutover repoints. A unit that takes
    them from its environment, a command or a secrets backend would come back on the source
    after the cutover: refused here, before any change, with the place named.
    """

    dry_run_mode = "check"  # it only reads: a dry run runs it as any run does

    def run(self, context: Any) -> Any:
        airflow_host = self.inventory.airflow_host(self.host)
        host = self.host_hook(self.host)
        config_text = host.read_file(airflow_host.config)
        if config_text is None:
            raise AirflowException(f"[{self.host}] {airflow_host.config} does not exist (airflow.hosts[].config)")
        found, places = [], {}
        for unit in airflow_host.units:
            if not host.unit_exists(unit):
                found.append(f"{unit} is not a systemd unit on this host (airflow.hosts[].units)")
                continue
            environment = host.unit_environment(unit)
            found += airflowenv.problems(unit, environment, config_text, expected_config=airflow_host.config,
                                         user_home=host.unit_user_home(unit))
            places[unit] = [str(airflowenv.place_of(s, k, d, environment, config_text))
                            for s, k, d in airflowenv.DATABASE_SETTINGS]
            self.log.info("[%s] %s: %s", self.host, unit, "; ".join(places[unit]))
        if found:
            raise AirflowException(f"[{self.host}] the cutover could not repoint Airflow here:\n  - "
                                   + "\n  - ".join(found))
        return {"config": airflow_host.config, "settings": places}


class StageAirflowConfigOperator(HostOperator):
    """
    Phase 8 on one Airflow host: writes ``/var/lib/pgha/airflow.cfg.pgha-new``
    (root 0600 in a root-only directory: nothing the Airflow user can swap for
    a link), identical to the live config except [database] sql_alchemy_conn
    and (Celery) [celery] result_backend, which point at HAProxy's write port,
    and proves that URL logs in and reaches the leader. The live config is
    not touched; it is read refusing a symbolic link (or a linked directory)
    its owner could have planted.

    A host that is not the HAProxy host uses HAProxy's address, never
    localhost.
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        inv = self.inventory
        remote = self.remote(self.host)
        haproxy_address = "127.0.0.1" if self.host == inv.haproxy.host else inv.host(inv.haproxy.host).address
        current, _, new = repoint_airflow_config(remote, inv, self.host, haproxy_address, inv.haproxy.write_port,
                                                 verify_ca=self._verify_ca())
        if new == current:
            remote.run(f"rm -f {shlex.quote(STAGED_CONFIG)}")
            self.unchanged(f"{self.config_path} already points at HAProxy")
        else:
            self.note(f"{STATE_DIR} root-only", self.host_hook(self.host).ensure_directory(STATE_DIR, mode="0700"))
            staged = remote.put_file(STAGED_CONFIG, new, mode="0600", secret=True)
            self.note(f"{STAGED_CONFIG} staged (for {self.config_path})", staged.changed)
        # as Airflow will connect: verify-full with TLS on, HAProxy's address in the member's certificate
        through_haproxy = self.verified(node_endpoint(inv.postgres.app_conn_id, host=inv.host(inv.haproxy.host).address,
                                                      port=inv.haproxy.write_port, database=inv.postgres.database))
        with pgdata.session(through_haproxy) as conn:
            in_recovery = pgdata.scalar(conn, pgdata.statement("in_recovery.sql"))
        if in_recovery is not False:
            raise AirflowException(f"HAProxy :{inv.haproxy.write_port} does not reach the leader (in recovery)")
        return {"config": self.config_path, "already_live": current == new}

    @property
    def config_path(self) -> str:
        return self.inventory.airflow_host(self.host).config

    def _verify_ca(self) -> str | None:
        """The CA file Airflow verifies the cluster with (installed by phase 3), or None without TLS."""
        return tls.CA_FILE if self.inventory.tls.enabled else None


class CutoverOperator(PghaOperator):
    """
    The final task: arms the cutover agent (``pgha.cutover``, run by the
    Python of the host's Airflow units, where pgha is installed) on the source
    host ("primary") and on every other Airflow host ("follower"), each as a
    transient systemd unit, outside this task's process tree (with
    LocalExecutor this task is a child of the scheduler the agents stop:
    runbook correction C20)::

        systemd-run --quiet --collect --unit=<run id> <python> -m pgha.cutover /etc/pgha/cutover.json

    Each agent first waits until Airflow has recorded this task instance a
    success (``airflow tasks state`` on its host): nothing is stopped while
    this task still runs, however long its success takes to report, and a
    task that fails after arming leaves the agents to record "not_started".
    The primary stops its Airflow units, waits until no Airflow session is
    left on the source (so every host's writers are stopped), takes the final
    copy (with every writer stopped, nothing written after it is lost),
    verifies every table, swaps in the staged airflow.cfg, runs
    ``airflow db check``, marks the cluster database live, starts Airflow
    and waits for a scheduler heartbeat in the new database. The
    followers stop their units and wait for the primary's recorded outcome:
    it alone decides. On its rollback they roll back; on its success they only
    move forward (repoint, ``db check`` retried, start) or, failing that, stay
    stopped and record "stuck". Any failure of the primary rolls back to the
    source, which is never modified. Before its stop each agent enables
    ``pgha-cutover-resume.service`` (rendered here into the settings), which
    completes the cutover after a crash of its host, before the Airflow units
    start. Every step is timed in /var/log/pgha/cutover-<run>.log and in table
    ``pgha_cutover_log``.
    """

    AGENT_MODULE = "pgha.cutover"
    SETTINGS = "/etc/pgha/cutover.json"
    PGPASS = PGPASS
    CLIENT_CERT, CLIENT_KEY = CLIENT_CERT, CLIENT_KEY
    SECRET_FILES = (PGPASS, CLIENT_CERT, CLIENT_KEY)  # the agent removes them when it ends
    LOG_DIR = "/var/log/pgha"

    def run(self, context: Any) -> Any:
        if (context.get("params") or {}).get("pooler") == "pgbouncer":
            raise AirflowSkipException("pooler is pgbouncer: paused_cutover moves Airflow's database instead")
        inv = self.inventory
        missing = [a.host for a in inv.airflow_hosts if not self._staged(a.host)]
        if missing:
            if self._cluster_is_live():
                self.unchanged("Airflow already runs on the cluster")
                return {"armed": False}
            raise AirflowException(f"no staged airflow.cfg on {missing}: run phase 8 first")
        roles = {inv.source.host: "primary", **{a.host: "follower" for a in inv.airflow_hosts if a.host != inv.source.host}}
        armed = {host: units for host in roles
                 if (units := [u for u in self.host_hook(host).units_matching("pgha-cutover-*") if u != RESUME_UNIT])}
        if armed:
            self.unchanged("a cutover agent is already armed or running")
            self.log.info("cutover units found: %s", armed)
            return {"armed": False}
        run_id = f"pgha-cutover-{int(time.time())}"
        method = (context.get("params") or {}).get("migration_method", "dump_restore")
        task = arming_task(context)
        # Every host is prepared and checked before any agent starts: a host that cannot run the agent arms
        # nothing anywhere. Then the followers' agents, the primary's last; a failure stops those started
        # (still waiting for this task's success, they have changed nothing).
        pythons: dict[str, str] = {}
        started: list[str] = []
        try:
            for host, role in roles.items():
                pythons[host] = self._prepare(host, role, run_id, method, task)
            for host in sorted(roles, key=lambda h: roles[h] == "primary"):
                self.remote(host).run(shlex.join(self.agent_command(run_id, pythons[host])))
                started.append(host)
                self.changed(f"cutover agent ({roles[host]}) armed on {host}: begins once this task is recorded "
                             f"a success, log {self.LOG_DIR}/cutover-{run_id}.log, record in pgha_cutover_log")
        except Exception:
            for host in started:
                self.remote(host).run(f"systemctl stop {shlex.quote(run_id + '.service')}", check=False)
                self.log.warning("[%s] cutover agent %s stopped before it began: arming failed on another host",
                                 host, run_id)
            for host in pythons:  # prepared, so holding a passwords file no agent will run to remove
                for path in self.SECRET_FILES:
                    self.remote(host).run(f"rm -f {shlex.quote(path)}", check=False)
            raise
        return {"armed": True, "run_id": run_id, "hosts": roles}

    def _staged(self, host: str) -> bool:
        return self.remote(host).run(f"test -f {shlex.quote(STAGED_CONFIG)}", check=False).ok

    def _cluster_is_live(self) -> bool:
        inv = self.inventory
        admin = self.verified(node_endpoint(inv.postgres.superuser_conn_id, host=inv.host(inv.haproxy.host).address,
                                            port=inv.haproxy.write_port, database="postgres"))
        with pgdata.session(admin) as conn:
            return pgdata.is_live(conn, inv.postgres.database)

    def _prepare(self, host: str, role: str, run_id: str, method: str, task: dict[str, str] | None) -> str:
        """Check that ``host`` can run the agent and write its settings (0600) and pgpass (0600);
        returns the Python that will run it."""
        remote = self.remote(host)
        settings, passwords = self.agent_settings(host, role, run_id, method)
        if task:
            settings["task"] = task
        for endpoint in passwords:
            remote.add_secret(endpoint.password)
        python = settings["python"]
        if not remote.run(f"{shlex.quote(python)} -c 'import {self.AGENT_MODULE}'", check=False).ok:
            raise AirflowException(f"[{host}] {python} cannot import {self.AGENT_MODULE}: pip-install pgha "
                                   "into the Python of this host's Airflow units")
        remote.run("install -d -m 0711 /etc/pgha")
        remote.put_file(self.SETTINGS, json.dumps(settings, indent=2), mode="0600")
        try:
            remote.put_file(self.PGPASS, pgdata.pgpass(*passwords), mode="0600", secret=True)
            client = self.client_tls()
            if client is not None:
                remote.add_secret(client.key_pem)
                remote.put_file(self.CLIENT_CERT, client.cert_pem, mode="0600")
                remote.put_file(self.CLIENT_KEY, client.key_pem, mode="0600", secret=True)
        except Exception:  # no agent will run here to remove what was written
            for path in self.SECRET_FILES:
                remote.run(f"rm -f {shlex.quote(path)}", check=False)
            raise
        return python

    def agent_command(self, run_id: str, python: str) -> list[str]:
        """The transient unit that runs the agent now (it waits for this task's success itself)."""
        return ["systemd-run", "--quiet", "--collect", f"--unit={run_id}", python, "-m", self.AGENT_MODULE,
                self.SETTINGS]

    def agent_settings(self, host: str, role: str, run_id: str, method: str) -> tuple[dict[str, Any], list[Endpoint]]:
        """The agent's settings for ``host`` (no secret in them) and the endpoints its pgpass file holds."""
        inv = self.inventory
        cluster_host = "127.0.0.1" if inv.haproxy.host == host else inv.host(inv.haproxy.host).address
        cluster = node_endpoint(inv.postgres.superuser_conn_id, host=cluster_host, port=inv.haproxy.write_port)
        settings: dict[str, Any] = {
            **self._airflow_settings(host),
            "role": role,
            "run_id": run_id,
            "method": method,
            "database": inv.postgres.database,
            "owner": inv.postgres.owner,
            "cluster": {"host": cluster.host, "port": cluster.port, "user": cluster.user,
                        # verified with the CA phase 3 installed on every host (the member's certificate names
                        # HAProxy's address and 127.0.0.1)
                        # and pgha's client certificate shown: the superuser needs one from a host that is no member
                        **({"sslmode": "verify-full", "sslrootcert": tls.CA_FILE, "sslcert": self.CLIENT_CERT,
                            "sslkey": self.CLIENT_KEY} if inv.tls.enabled else {})},
            "pgpass": self.PGPASS,
            "log_dir": self.LOG_DIR,
        }
        settings.setdefault("python", "/usr/bin/python3")
        settings["resume_unit"] = self.resume_unit(settings["python"], settings["units"])
        if role != "primary":
            return settings, [cluster]
        source = node_endpoint(inv.source.conn_id)  # its host as the worker reaches it: loopback or the source's own
        settings.update(source={"host": source.host, "port": source.port, "user": source.user},
                        # the copy's tools, which phase 6 installed on the source host
                        bin_dir=self.os_family(host).copy_postgres_bin(inv.source.major, inv.postgres.major))
        return settings, [cluster, source]

    def resume_unit(self, python: str, units: list[str]) -> str:
        """The boot-time unit the agent enables while it works: a restart of the host mid-cutover completes
        the cutover (``--resume``) before any Airflow unit can start on the old database."""
        return render("pgha-cutover-resume.service.j2", python=python, module=self.AGENT_MODULE,
                      settings=self.SETTINGS, units=[u if "." in u else f"{u}.service" for u in units])

    def _airflow_settings(self, host: str) -> dict[str, Any]:
        """Units, config, owner and executables of ``host``'s Airflow (none if it runs no Airflow)."""
        if host not in {a.host for a in self.inventory.airflow_hosts}:
            return {"units": [], "config": None, "staged": None}
        return agent_airflow_settings(self.remote(host), self.inventory, host, STAGED_CONFIG, BACKUP_DIR)
