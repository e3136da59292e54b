"""Base class of every pgha operator: inventory and host access, an audit summary, on_kill."""

from __future__ import annotations

import inspect
import time
from typing import Any

from airflow.sdk import BaseOperator
from pgha.runtime import InventoryMixin


class PghaOperator(InventoryMixin, BaseOperator):
    """
    Runs ``run(context)`` and logs one summary block an auditor can read:
    what changed and what was already in place. Returns that summary (XCom).

    :param inventory_path: inventory file (templated; default: $PGHA_INVENTORY or the shipped one).
    :param phase: the runbook phase this task belongs to; the task skips itself
        when the run's ``phases`` param does not select it.
    """

    template_fields: tuple[str, ...] = ("inventory_path",)
    ui_color = "#dbe9f6"

    def __init__(self, *, inventory_path: str | None = None, phase: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("doc_md", inspect.getdoc(type(self)))  # the UI shows what the task does
        super().__init__(**kwargs)
        self.inventory_path = inventory_path
        self.phase = phase
        self._changes: list[str] = []
        self._unchanged: list[str] = []

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """A mapped task shows its operator's docstring too (``__init__`` runs only when it is unmapped)."""
        kwargs.setdefault("doc_md", inspect.getdoc(cls))
        return super().partial(**kwargs)

    def changed(self, what: str) -> None:
        self._changes.append(what)

    def unchanged(self, what: str) -> None:
        self._unchanged.append(what)

    def note(self, what: str, changed: bool) -> None:
        (self.changed if changed else self.unchanged)(what)

    def run(self, context: Any) -> Any:
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        self.skip_unless_selected(context)
        self._changes, self._unchanged = [], []
        started = time.monotonic()
        try:
            value = self.run(context)
        finally:
            self.close_remotes()
        summary = {
            "changed": bool(self._changes),
            "changes": self._changes,
            "unchanged": self._unchanged,
            "duration_s": round(time.monotonic() - started, 2),
        }
        lines = [f"  changed:   {c}" for c in self._changes] + [f"  unchanged: {u}" for u in self._unchanged]
        self.log.info(
            "SUMMARY %s: %s in %.1fs\n%s",
            self.task_id,
            "CHANGED" if self._changes else "NO CHANGE",
            summary["duration_s"],
            "\n".join(lines) or "  (nothing to do)",
        )
        if value is not None:
            summary["result"] = value
        return summary

    def on_kill(self) -> None:
        """A killed task leaves no remote work running: its killable commands are stopped."""
        for outcome in self.kill_remote_work():
            self.log.warning("on_kill: %s", outcome)


class HostOperator(PghaOperator):
    """A PghaOperator that works on one inventory host (usually mapped over hosts).

    :param host: inventory host name.
    """

    template_fields = (*PghaOperator.template_fields, "host")

    def __init__(self, *, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host
