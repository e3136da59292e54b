"""A person approves the cutover after reading what it will do (Airflow's human-in-the-loop operator).

Airflow 3.1 brought the human-in-the-loop operators (``airflow.providers.standard.operators.hitl``);
pgha supports Airflow 3.0 as well, where they do not exist. There the DAG parses and runs all the
same: the approval task skips when no approval is asked for, and fails, with what is missing, when
one is (a cutover that was meant to wait for a person never starts without one).
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from pgha.compat import AirflowFailException, AirflowSkipException

from pgha import notify
from pgha.approval import cutover_summary
from pgha.runtime import InventoryMixin

try:
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk.bases.notifier import BaseNotifier
except Exception as exc:  # Airflow 3.0: "Human in the loop functionality needs Airflow 3.1+."
    ApprovalOperator = None
    HITL_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    HITL_MISSING = None

    class ApprovalRequest(BaseNotifier):
        """The human-in-the-loop operator's notifier: the inventory's recipients hear that an approval waits."""

        def __init__(self, *, inventory: Any, subject: str, body: str) -> None:
            super().__init__()
            self.inventory, self.subject, self.body = inventory, subject, body

        def notify(self, context: Any) -> None:
            notify.ask_approver(context, self.inventory, self.subject, self.body)

_Approval: type = ApprovalOperator or BaseOperator


class CutoverApprovalOperator(InventoryMixin, _Approval):  # type: ignore[misc, valid-type]
    """
    Before the cutover, when the run's ``approve_cutover`` param is on: asks a person (Airflow's
    Required Actions page) to approve the cutover, with what it will do: the database's size, the
    method, the expected stopped window, the hosts whose Airflow restarts. Approve: the cutover
    starts. Reject: the cutover and every task after it skip. The inventory's ``notify:`` recipients
    are told that an approval waits, with the same text. Skips when ``approve_cutover`` is
    off, in a dry run and when phase 8 is not selected. On Airflow 3.0, which has no
    human-in-the-loop operator, it fails when an approval is asked for: the cutover does not start.

    :param source_task_id: the task whose XCom holds the source database's size.
    :param response_timeout: how long it waits for an answer; no answer fails it (no cutover).
    """

    template_fields = (*getattr(_Approval, "template_fields", ()), "inventory_path")

    def __init__(self, *, inventory_path: str | None = None, phase: str | None = None,
                 source_task_id: str = "preflight.check_source_db", subject: str = "Approve the cutover?",
                 response_timeout: timedelta = timedelta(hours=24), **kwargs: Any) -> None:
        kwargs.setdefault("doc_md", inspect.getdoc(type(self)))
        if _Approval is not BaseOperator:  # the subject and body are put together when it runs
            kwargs.update(subject=subject, ignore_downstream_trigger_rules=True, response_timeout=response_timeout)
        super().__init__(**kwargs)
        self.inventory_path = inventory_path
        self.phase = phase
        self.source_task_id = source_task_id

    def execute(self, context: Any) -> Any:
        try:
            self.skip_unless_selected(context)
        except AirflowSkipException:
            if self.in_dry_run:
                self._log_would_ask(context)
            raise
        params = context.get("params") or {}
        if not params.get("approve_cutover"):
            raise AirflowSkipException("approve_cutover is off: the cutover starts without asking a person")
        if ApprovalOperator is None:
            raise AirflowFailException(
                "approve_cutover is on, but this Airflow has no human-in-the-loop operator (it needs Airflow 3.1 "
                f"or later; {HITL_MISSING}): the cutover does not start unapproved. Upgrade Airflow, or trigger "
                "the run again without approve_cutover and watch it instead.")
        self.subject, self.body = self.summary(context)
        self.notifiers = [*self.notifiers, ApprovalRequest(inventory=self.inventory, subject=self.subject,
                                                           body=self.body)]
        self.log.info("asking for approval: %s\n%s", self.subject, self.body)
        return super().execute(context)

    def _log_would_ask(self, context: Any) -> None:
        try:
            self.log.info("DRY RUN: with approve_cutover, a real run would ask:\n%s\n%s", *self.summary(context))
        except Exception as exc:  # the summary is a courtesy here: the dry run skips the approval anyway
            self.log.info("DRY RUN: the approval's text cannot be put together yet: %s", exc)

    def summary(self, context: Any) -> tuple[str, str]:
        params = context.get("params") or {}
        facts = (context["ti"].xcom_pull(task_ids=self.source_task_id) or {}).get("result") or {}
        return cutover_summary(self.inventory, method=params.get("migration_method", "dump_restore"),
                               pooler=params.get("pooler", "none"), size_bytes=facts.get("size_bytes"),
                               size_pretty=facts.get("size"))
