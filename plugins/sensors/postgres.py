"""LogicalSyncSensor: the cluster's subscription finished its initial copy."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from pgha.compat import AirflowSkipException
from pgha import pgdata
from pgha.hooks.postgres import leader_host, node_endpoint
from pgha.runtime import InventoryMixin

LOGICAL = "logical_replication"


class LogicalSyncSensor(InventoryMixin, BaseSensorOperator):
    """
    Waits until every table of the subscription ``pgha_sub`` on the leader
    finished its initial copy (``pg_subscription_rel`` all ready); logs at
    each poke (every 10 s) the tables per sync state and the bytes copied,
    rate and time left against the size of the source's tables. Skips unless the run's
    ``migration_method`` is logical_replication, and once the cluster database
    is live. psycopg2 blocks, so this sensor reschedules rather than defers.

    :param inventory_path: inventory file (templated).
    :param phase: the runbook phase (the task skips when the run leaves it out).
    """

    template_fields = ("inventory_path",)

    def __init__(self, *, inventory_path: str | None = None, phase: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 10)
        kwargs.setdefault("timeout", 3600)
        kwargs.setdefault("doc_md", inspect.getdoc(type(self)))
        super().__init__(**kwargs)
        self.inventory_path = inventory_path
        self.phase = phase

    def execute(self, context: Any) -> Any:
        self.skip_unless_selected(context)
        method = (context.get("params") or {}).get("migration_method", "dump_restore")
        if method != LOGICAL:
            raise AirflowSkipException(f"migration_method is {method}")
        return super().execute(context)

    def poke(self, context: Any) -> PokeReturnValue:
        inv = self.inventory
        leader = leader_host(inv, self.patroni_api_urls(), self.client_tls())
        admin = self.verified(node_endpoint(inv.postgres.superuser_conn_id, host=leader.address,
                                            port=inv.postgres.port, database="postgres"))
        with pgdata.session(admin) as conn:
            if pgdata.is_live(conn, inv.postgres.database):
                self.log.info("%s on the cluster is live: nothing to wait for", inv.postgres.database)
                return PokeReturnValue(is_done=True, xcom_value={"live": True})
        with pgdata.session(admin.on(inv.postgres.database)) as conn:
            states = pgdata.initial_sync_progress(conn)
        total = sum(count for count, _ in states.values())
        pending = total - states.get("r", (0, 0))[0]
        progress = self.progress(context, states)
        if total and not pending:
            self.log.info("initial copy done on %s: %d tables replicating; %s", leader.name, total, progress)
            return PokeReturnValue(is_done=True, xcom_value={"tables": total, "leader": leader.name})
        self.log.info("initial copy on %s: %d of %d tables still copying; %s", leader.name, pending, total, progress)
        return PokeReturnValue(is_done=False)

    def progress(self, context: Any, states: dict[str, tuple[int, int]]) -> str:
        """Tables per sync state, and the subscribed tables' bytes on the cluster against the source's tables'."""
        counts = ", ".join(f"{SYNC_STATES.get(state, state)} {count}" for state, (count, _) in sorted(states.items()))
        copied = sum(size for _, size in states.values())
        line = pgdata.progress_line(copied, self.source_bytes(), self.seconds_waited(context))
        return f"({counts or 'no tables yet'}) {line} on the cluster"

    def source_bytes(self) -> int:
        inv = self.inventory
        try:
            with pgdata.session(node_endpoint(inv.source.conn_id, database=inv.postgres.database)) as conn:
                return pgdata.user_table_bytes(conn)
        except Exception as exc:  # progress informs; it never fails the wait
            self.log.info("source size unknown: %s", str(exc).strip())
            return 0

    def seconds_waited(self, context: Any) -> float:
        """Since this wait's first poke (a rescheduled poke is a new process: Airflow keeps the first date)."""
        now = dt.datetime.now(dt.timezone.utc)
        first = None
        ti = context.get("ti")
        if self.reschedule and ti is not None:
            try:
                first = ti.get_first_reschedule_date(context)
            except Exception:  # an older or a test context: time this process's pokes
                first = None
        if first is None:
            self._first_poke = getattr(self, "_first_poke", None) or now
            first = self._first_poke
        return (now - first).total_seconds()


SYNC_STATES = {"i": "starting", "d": "copying", "f": "copied", "s": "synced", "r": "ready"}
