"""Base class of every pgha operator: inventory and host access, an audit summary, on_kill."""

from __future__ import annotations

import inspect
import time
from typing import Any

from airflow.sdk import BaseOperator
from pgha.compat import AirflowSkipException
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
        except AirflowSkipException:
            raise
        except Exception as exc:
            if not self.planning:
                raise
            self._log_plan()
            raise AirflowSkipException(
                f"dry run: the plan stops here, at: {str(exc).strip()[:1000]} (a step that needs a change a dry "
                "run does not make, or something to fix before the real run); the log shows what it planned"
            ) from exc
        finally:
            self.close_remotes()
        if self.planning or self.dry_run_plan():
            self._log_plan()
        if self.planning:
            return {"dry_run": True, "plan": self.dry_run_plan(), "result": value}
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

    @property
    def planning(self) -> bool:
        """This is a dry run and the task plans (``dry_run_mode`` "plan"): its changes are only logged."""
        return self.in_dry_run and self.dry_run_mode == "plan"

    def _log_plan(self) -> None:
        plan = self.dry_run_plan() + [f"would: {what}" for what in self._changes]
        self.log.info("DRY RUN PLAN %s: %s\n%s", self.task_id,
                      f"{len(plan)} change(s) it would make" if plan else "no change",
                      "\n".join(f"  {line}" for line in plan) or "  (the hosts are as this task wants them)")

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
