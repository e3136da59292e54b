"""Deferrable wait for the outcome of a move of Airflow onto its local PgBouncer (one Airflow host)."""

from __future__ import annotations

import asyncio
import json
import shlex
from typing import Any
from urllib.parse import urlsplit

from pgha import airflowcfg
from pgha.cutover import log_path
from pgha.runtime import InventoryMixin

from pgha.triggers.base import PollingTrigger

SUCCESS = "success"


class PgBouncerMoveTrigger(InventoryMixin, PollingTrigger):
    """
    Done once the agent that ``MoveAirflowOntoPgBouncerOperator`` armed on ``host`` recorded an
    outcome (the RECORD line of its log): a value with ``outcome`` "success", or the failure
    ("rolled_back": the previous airflow.cfg is back and the units restarted; "not_started":
    nothing changed) with its reason. With no agent settings on the host (nothing was ever armed)
    it is done when ``host``'s airflow.cfg already points at its PgBouncer. Reads only, over SSH
    (blocking: the triggerer runs the check in a thread).
    """

    def __init__(self, inventory_path: str | None, host: str, settings_path: str, listen_port: int | None,
                 poll_interval: float, timeout: float, deadline: float | None = None) -> None:
        super().__init__(poll_interval, timeout, deadline)
        self.inventory_path = inventory_path
        self.host = host
        self.settings_path = settings_path
        self.listen_port = listen_port

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pgha.triggers.pgbouncer.PgBouncerMoveTrigger",
            {"inventory_path": self.inventory_path, "host": self.host, "settings_path": self.settings_path,
             "listen_port": self.listen_port, **self.common_kwargs()},
        )

    async def acheck(self) -> tuple[list[str], Any]:
        return await asyncio.to_thread(self.check)

    def check(self) -> tuple[list[str], Any]:
        try:
            return self.judge()
        finally:
            self.close_remotes()

    def judge(self) -> tuple[list[str], Any]:
        remote = self.remote(self.host)
        text = remote.read_file(self.settings_path)
        on_pgbouncer = self.goes_through_pgbouncer()
        if not text:
            if on_pgbouncer:
                return [], {"outcome": SUCCESS, "run_id": None, "host": self.host,
                            "detail": "no move armed; airflow.cfg already points at PgBouncer"}
            return [], {"outcome": "not_armed", "run_id": None, "host": self.host,
                        "reason": f"no move onto PgBouncer was armed ({self.settings_path} missing)"}
        settings = json.loads(text)
        log = str(log_path(settings))
        records = self.records(log)
        summary = {"run_id": settings["run_id"], "host": self.host, "log": log}
        if not records and not self.agent_alive(settings):
            records = self.records(log)  # it may have recorded and ended between the two reads
            if not records:
                return [], {**summary, "outcome": "ended_without_outcome",
                            "reason": f"agent {settings['run_id']} is gone and recorded nothing: see "
                                      f"`journalctl -u {settings['run_id']}` and {log} on {self.host}"}
        if not records:
            return [f"{self.host}: no outcome recorded yet by agent {settings['run_id']} (its log: {log})"], None
        last = records[-1]
        summary.update(outcome=last.get("outcome"), detail=last.get("detail", ""), steps=last.get("steps") or [],
                       seconds=last.get("seconds"))
        if last.get("outcome") != SUCCESS:
            summary["reason"] = last.get("detail", "")
            return [], summary
        if not on_pgbouncer:  # changed since by someone else: not what this step promises
            return [], {**summary, "outcome": "reverted",
                        "reason": "the agent recorded success, but airflow.cfg no longer points at PgBouncer"}
        return [], summary

    def records(self, log: str) -> list[dict[str, Any]]:
        found = self.remote(self.host).run(f"grep -h ' RECORD ' {shlex.quote(log)}", check=False, quiet=True)
        return [json.loads(line.split(" RECORD ", 1)[1]) for line in found.stdout.splitlines()]

    def agent_alive(self, settings: dict[str, Any]) -> bool:
        """The agent's unit runs (or is starting), or its state file says a restart interrupted it (its resume
        unit completes it at boot)."""
        remote = self.remote(self.host)
        unit = remote.run(f"systemctl is-active {shlex.quote(settings['run_id'] + '.service')}", check=False,
                          quiet=True).stdout.strip()
        if unit in ("active", "activating", "reloading"):
            return True
        state_file = settings.get("state_file")
        return bool(state_file) and remote.run(f"test -e {shlex.quote(state_file)}", check=False, quiet=True).ok

    def goes_through_pgbouncer(self) -> bool:
        config = self.inventory.airflow_host(self.host).config
        url = airflowcfg.get_option(self.remote(self.host).read_file(config) or "", "database", "sql_alchemy_conn")
        parts = urlsplit(url or "")
        port = self.listen_port if self.listen_port is not None else self.inventory.pgbouncer.port
        return (parts.hostname, parts.port) == ("127.0.0.1", int(port))
