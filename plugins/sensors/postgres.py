"""LogicalSyncSensor: the cluster's subscription finished its initial copy."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException
from pgha import pgdata
from pgha.hooks.postgres import leader_host, node_endpoint
from pgha.runtime import InventoryMixin

LOGICAL = "logical_replication"


class LogicalSyncSensor(InventoryMixin, BaseSensorOperator):
    """
    Waits until every table of the subscription ``pgha_sub`` on the leader
    finished its initial copy (``pg_subscription_rel`` all ready); logs how
    many are still copying at each poke. Skips unless the run's
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
        leader = leader_host(inv, self.patroni_api_urls())
        admin = node_endpoint(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                              database="postgres")
        with pgdata.session(admin) as conn:
            if pgdata.is_live(conn, inv.postgres.database):
                self.log.info("%s on the cluster is live: nothing to wait for", inv.postgres.database)
                return PokeReturnValue(is_done=True, xcom_value={"live": True})
        with pgdata.session(admin.on(inv.postgres.database)) as conn:
            pending, total = pgdata.initial_sync_state(conn)
        if total and not pending:
            self.log.info("initial copy done on %s: %d tables replicating", leader.name, total)
            return PokeReturnValue(is_done=True, xcom_value={"tables": total, "leader": leader.name})
        self.log.info("initial copy on %s: %d of %d tables still copying", leader.name, pending, total)
        return PokeReturnValue(is_done=False)
