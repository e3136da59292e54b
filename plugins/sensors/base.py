"""Sensors whose check is their trigger's check: poke, reschedule or defer."""

from __future__ import annotations

import inspect
import time
from abc import abstractmethod
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from pgha.compat import AirflowSensorTimeout
from pgha.runtime import InventoryMixin
from pgha.triggers.base import PollingTrigger

DEFAULT_TIMEOUT = 600  # never timeout=None, which means 7 days


class CheckSensor(InventoryMixin, BaseSensorOperator):
    """
    Base for pgha sensors. The same check runs in ``poke``/``reschedule`` mode
    and, with ``deferrable=True``, in the triggerer.

    :param inventory_path: inventory file (templated; default: $PGHA_INVENTORY or the shipped one).
    :param deferrable: wait in the triggerer instead of a worker slot. A run whose
        ``defer_waits`` param is true defers every such sensor too.
    """

    template_fields = ("inventory_path",)

    def __init__(
        self,
        *,
        inventory_path: str | None = None,
        phase: str | None = None,
        deferrable: bool = False,
        poke_interval: float = 5,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("doc_md", inspect.getdoc(type(self)))  # the UI shows what the task waits for
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.inventory_path = inventory_path
        self.phase = phase
        self.deferrable = deferrable

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """A mapped sensor shows its docstring too (``__init__`` runs only when it is unmapped)."""
        kwargs.setdefault("doc_md", inspect.getdoc(cls))
        return super().partial(**kwargs)

    @abstractmethod
    def make_trigger(self) -> PollingTrigger:
        """The trigger (and so the check) for this sensor."""

    def poke(self, context: Any) -> PokeReturnValue:
        problems, value = self.make_trigger().check()
        if problems:
            self.log.info("not yet: %s", "; ".join(problems))
            return PokeReturnValue(is_done=False)
        self.log.info("condition met: %s", value)
        return PokeReturnValue(is_done=True, xcom_value=value)

    def execute(self, context: Any) -> Any:
        self.skip_unless_selected(context)
        if not (self.deferrable or (context.get("params") or {}).get("defer_waits")):
            return super().execute(context)
        started = time.time()
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        trigger = self.make_trigger()
        trigger.deadline = started + self.timeout  # from the first poke, as in poke and reschedule mode
        # The trigger fires its timeout event first; should the triggerer not (down), the deferral times out
        # a minute later, which BaseSensorOperator turns into AirflowSensorTimeout too: final either way.
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(seconds=self.timeout + 60))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") != "success":
            # final, as a timeout in poke/reschedule mode is: a retry would only wait again
            raise AirflowSensorTimeout(
                f"{self.task_id} timed out after {self.timeout:.0f}s: " + "; ".join(event.get("problems", []))
            )
        self.log.info("condition met: %s", event.get("value"))
        return event.get("value")
