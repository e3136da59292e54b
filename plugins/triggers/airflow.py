"""Deferrable wait for the cutover agents' recorded outcome: Airflow healthy on the cluster, or rolled back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shlex
from typing import Any

import psycopg2
from pgha import pgdata
from pgha.hooks.postgres import node_endpoint
from pgha.pgdata import CutoverRecord, Endpoint
from pgha.runtime import InventoryMixin

from pgha.triggers.base import PollingTrigger

SUCCESS = "success"
STUCK = "stuck"
NOT_STARTED = "not_started"  # the agents never began (the cutover task was not a success): nothing changed


class CutoverOutcomeTrigger(InventoryMixin, PollingTrigger):
    """
    Done once the cutover run ``run_id`` has an outcome: a value with ``outcome`` "success" once every
    agent host (the source host, primary, and every other Airflow host) recorded success and a scheduler
    started after the cutover heartbeats in the cluster's Airflow database; "stuck" (a follower that
    could not follow the primary's commit keeps its units stopped) or "rolled_back", with each failed
    host's reason, as soon as any agent recorded anything else.

    It reads only: ``pgha_cutover_log`` on the cluster (through HAProxy, whichever database Airflow
    came back on), and, when the cluster cannot be read, the agents' own logs on the hosts (the record
    a rollback could not write to the cluster is there). With no ``run_id`` (the cutover task armed
    nothing this time), the run armed last is read from the settings file on the source host.
    psycopg2 and SSH block, so the triggerer runs the check in a thread.
    """

    def __init__(
        self,
        inventory_path: str | None,
        run_id: str | None,
        log_dir: str,
        settings_path: str,
        poll_interval: float,
        timeout: float,
        deadline: float | None = None,
    ) -> None:
        super().__init__(poll_interval, timeout, deadline)
        self.inventory_path = inventory_path
        self.run_id = run_id or None
        self.log_dir = log_dir
        self.settings_path = settings_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pgha.triggers.airflow.CutoverOutcomeTrigger",
            {
                "inventory_path": self.inventory_path,
                "run_id": self.run_id,
                "log_dir": self.log_dir,
                "settings_path": self.settings_path,
                **self.common_kwargs(),
            },
        )

    async def acheck(self) -> tuple[list[str], Any]:
        return await asyncio.to_thread(self.check)

    def check(self) -> tuple[list[str], Any]:
        try:
            run_id = self.run_id or self.armed_run_id()
            if not run_id:
                return [], self.nothing_armed()
            return self.judge(run_id, self.agent_roles())
        finally:
            self.close_remotes()

    # ------------------------------------------------------------------ what to judge
    def agent_roles(self) -> dict[str, str]:
        """The hosts the cutover arms an agent on, and each one's role (as CutoverOperator arms them)."""
        inv = self.inventory
        roles = {inv.source.host: "primary"}
        roles.update({a.host: "follower" for a in inv.airflow_hosts if a.host != inv.source.host})
        return roles

    def log_path(self, run_id: str) -> str:
        return f"{self.log_dir}/cutover-{run_id}.log"

    def armed_run_id(self) -> str | None:
        """The run armed last: its id in the agent's settings on the source host (kept after the run)."""
        text = self.remote(self.inventory.source.host).read_file(self.settings_path)
        return json.loads(text).get("run_id") if text else None

    def cluster(self, database: str = "postgres") -> Endpoint:
        inv = self.inventory
        return self.verified(node_endpoint(inv.postgres.superuser_conn_id, host=inv.host(inv.haproxy.host).address,
                                           port=inv.haproxy.write_port, database=database))

    # ------------------------------------------------------------------ reading
    def recorded(self, run_id: str, roles: dict[str, str]) -> tuple[list[str], list[CutoverRecord], bool]:
        """(problems, records, cluster database marked live) from the cluster, else from the agents' logs."""
        try:
            with pgdata.session(self.cluster()) as conn:
                return [], pgdata.cutover_records(conn, run_id), pgdata.is_live(conn, self.inventory.postgres.database)
        except psycopg2.Error as exc:
            problems = [f"pgha_cutover_log on the cluster unreadable ({first_line(exc)}): read the agents' logs"]
        records = []
        for host in roles:
            try:
                records += self.records_in_log(host, run_id)
            except Exception as exc:  # an unreachable host is one more thing to wait for
                problems.append(f"{host}: {self.log_path(run_id)} unreadable ({first_line(exc)})")
        return problems, records, False

    def records_in_log(self, host: str, run_id: str) -> list[CutoverRecord]:
        """The RECORD lines the agent on ``host`` wrote to its log."""
        found = self.remote(host).run(f"grep -h ' RECORD ' {shlex.quote(self.log_path(run_id))}",
                                      check=False, quiet=True)
        records = []
        for line in found.stdout.splitlines():
            record = json.loads(line.split(" RECORD ", 1)[1])
            records.append(CutoverRecord(record.get("host", host), record.get("role", ""), record.get("outcome", ""),
                                         record.get("detail", ""), None, list(record.get("steps") or [])))
        return records

    def heartbeats(self, since: dt.datetime) -> int:
        with pgdata.session(self.cluster(self.inventory.postgres.database)) as conn:
            return pgdata.scheduler_heartbeats(conn, since)

    # ------------------------------------------------------------------ judging
    def judge(self, run_id: str, roles: dict[str, str]) -> tuple[list[str], Any]:
        problems, records, live = self.recorded(run_id, roles)
        latest = {inventory_name(r.host, roles): r for r in records}  # oldest first: the last one counts
        summary = {"run_id": run_id, "log": self.log_path(run_id), "hosts": {
            host: {"role": r.role, "outcome": r.outcome, "detail": r.detail, "stopped_s": r.stopped_seconds}
            for host, r in latest.items()}}
        failed = {host: r for host, r in latest.items() if r.outcome != SUCCESS}
        if failed:
            reason = "; ".join(f"{host} ({r.role}): {r.outcome}: {r.detail}" for host, r in failed.items())
            outcome = worst_outcome([r.outcome for r in failed.values()])
            return [], {"outcome": outcome, "reason": reason, **summary}
        missing = [f"{host} ({role})" for host, role in roles.items() if host not in latest]
        if missing:
            return problems + [f"no outcome recorded yet by the agent on {', '.join(missing)} "
                               f"(its log: {self.log_path(run_id)})"], None
        if problems:
            return problems, None
        if not live:
            return [f"every agent recorded success, but {self.inventory.postgres.database} on the cluster "
                    "is not marked live"], None
        since = min((r.started for r in latest.values() if r.started), default=None)
        beats = self.heartbeats(since) if since else 0
        if not beats:
            return [f"every agent recorded success; no scheduler started after {since} heartbeats in "
                    f"{self.inventory.postgres.database} on the cluster yet"], None
        stopped = max(h["stopped_s"] for h in summary["hosts"].values())
        return [], {"outcome": SUCCESS, "heartbeats": beats, "stopped_s": stopped, **summary}

    def nothing_armed(self) -> dict[str, Any]:
        """No cutover run to judge: fine only if Airflow already runs on the cluster."""
        with pgdata.session(self.cluster()) as conn:
            live = pgdata.is_live(conn, self.inventory.postgres.database)
        if live:
            return {"outcome": SUCCESS, "run_id": None, "hosts": {}, "stopped_s": 0.0, "log": None,
                    "detail": "no cutover armed; the cluster database is already live"}
        return {"outcome": "not_armed", "run_id": None, "hosts": {}, "log": None,
                "reason": f"no cutover was armed ({self.settings_path} missing on the source host) and the "
                          "cluster database is not live"}


def worst_outcome(outcomes: list[str]) -> str:
    """The run's outcome from its failed hosts': "stuck" (a follower that could not follow the primary's commit,
    its units stopped: by hand from here) before "rolled_back"; "not_started" only when no agent began."""
    if STUCK in outcomes:
        return STUCK
    return NOT_STARTED if set(outcomes) == {NOT_STARTED} else "rolled_back"


def inventory_name(recorded: str, roles: dict[str, str]) -> str:
    """The inventory host an agent's record names (it records the machine's node name, maybe its FQDN)."""
    if recorded in roles:
        return recorded
    short = recorded.split(".")[0]
    return next((host for host in roles if host.split(".")[0] == short), recorded)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
