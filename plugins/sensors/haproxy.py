"""HAProxyRoutingSensor: HAProxy sends writes to exactly Patroni's leader and reads to its replicas."""

from __future__ import annotations

import inspect
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from pgha.compat import AirflowException
from pgha.hooks.haproxy import HAProxyHook
from pgha.hooks.patroni import PatroniHook
from pgha.runtime import InventoryMixin

from pgha.sensors.base import DEFAULT_TIMEOUT


class HAProxyRoutingSensor(InventoryMixin, BaseSensorOperator):
    """
    Waits until HAProxy's write backend has exactly one UP server, the Patroni
    leader, and its read backend exactly the streaming replicas; returns (XCom)
    ``{"write": [...], "read": [...]}``.

    HAProxy's state is read over SSH (the stats socket is local to its host), so
    this sensor pokes or reschedules; it does not defer.

    :param inventory_path: inventory file (templated).
    :param phase: the runbook phase; skips when the run's ``phases`` leave it out.
    """

    template_fields = ("inventory_path",)
    ui_color = "#e8f4e4"

    def __init__(
        self,
        *,
        inventory_path: str | None = None,
        phase: str | None = None,
        poke_interval: float = 1,
        timeout: float = DEFAULT_TIMEOUT,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("doc_md", inspect.getdoc(type(self)))
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.inventory_path = inventory_path
        self.phase = phase

    def poke(self, context: Any) -> PokeReturnValue:
        inv = self.inventory
        haproxy = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket)
        try:
            routing = haproxy.routing(PatroniHook(self.patroni_api_urls(), tls=self.client_tls()).cluster())
        except AirflowException as exc:
            self.log.info("not yet: %s", exc)
            return PokeReturnValue(is_done=False)
        finally:
            self.close_remotes()
        if routing.problems:
            self.log.info("not yet: %s", "; ".join(routing.problems))
            return PokeReturnValue(is_done=False)
        self.log.info("routing ok: writes -> %s, reads -> %s", routing.write, routing.read)
        return PokeReturnValue(is_done=True, xcom_value=routing.as_dict())

    def execute(self, context: Any) -> Any:
        self.skip_unless_selected(context)
        return super().execute(context)
