"""Alerts through Airflow's notifiers: a task that failed for good, a drill that skipped, a cutover that
awaits a person's approval.

The inventory's ``notify:`` section names the notifier: ``smtp`` (the default,
Airflow's SMTP provider: ``conn_id``, ``to``, ``from``) or any notifier class as
``module.path:ClassName`` with its ``kwargs`` (Slack, Teams, ...). The message
reaches a notifier as the template variable ``pgha_alert`` (``subject``,
``text``, ``html``), so a custom notifier's kwargs say where it goes, e.g.
``text: "{{ pgha_alert.text }}"``; a string from outside (an exception's text)
never becomes a template itself.

Nothing here runs at DAG parse time: the inventory is read when an alert is
sent, and the notifier's module imported then.
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

if TYPE_CHECKING:
    from pgha.inventory import Inventory, Notify

log = logging.getLogger(__name__)

SMTP = "smtp"
SMTP_NOTIFIER = "airflow.providers.smtp.notifications.smtp:SmtpNotifier"
DEFAULT_SMTP_CONN_ID = "smtp_default"
ALERT = "pgha_alert"  # the template variable a notifier's fields render the message from
SMTP_MESSAGE = {"subject": "{{ pgha_alert.subject }}", "html_content": "{{ pgha_alert.html }}"}
SUBJECT_MAX = 160


class AlertNotSent(RuntimeError):
    """The notifier could not deliver (or could not be built)."""


@dataclass(frozen=True)
class Alert:
    """What an operator must read to act: which task of which run, what happened and why, where the log is."""

    dag_id: str
    run_id: str
    task_id: str
    outcome: str  # "failed", "skipped"
    reason: str
    log_url: str
    map_index: int | None = None
    host: str | None = None
    try_number: int | None = None

    @property
    def task(self) -> str:
        return self.task_id if self.map_index is None or self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    @property
    def subject(self) -> str:
        first_line = (self.reason.strip().splitlines() or [""])[0]
        subject = f"pgha: {self.dag_id} {self.task} {self.outcome}: {first_line}"
        return subject if len(subject) <= SUBJECT_MAX else subject[: SUBJECT_MAX - 3] + "..."

    @property
    def text(self) -> str:
        lines = [f"DAG:    {self.dag_id}", f"run:    {self.run_id}", f"task:   {self.task} {self.outcome}"]
        if self.try_number:
            lines[-1] += f" (try {self.try_number})"
        if self.host:
            lines.append(f"host:   {self.host}")
        lines += [f"log:    {self.log_url}", "", "reason:", self.reason.strip()]
        return "\n".join(lines) + "\n"

    @property
    def html(self) -> str:
        link = html.escape(self.log_url, quote=True)
        body = html.escape(self.text).replace(html.escape(self.log_url), f'<a href="{link}">{link}</a>', 1)
        return f'<pre style="font-family: monospace">{body}</pre>'

    def as_template_value(self) -> dict[str, str]:
        return {"subject": self.subject, "text": self.text, "html": self.html}


# ------------------------------------------------------------------ the notifier from the inventory


def notifier_path(notify: Notify) -> str:
    return SMTP_NOTIFIER if notify.notifier == SMTP else notify.notifier


def notifier_class(path: str) -> type:
    """The class ``module.path:ClassName`` names; ValueError saying what is wrong with it."""
    from airflow.sdk import BaseNotifier

    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failing while it imports
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc} "
                         "(is the provider installed where the tasks run?)") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{module_name} has no {class_name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, BaseNotifier)):
        raise ValueError(f"{path} is not an Airflow notifier (a subclass of airflow.sdk.BaseNotifier)")
    return cls


def notifier_kwargs(notify: Notify) -> dict[str, Any]:
    """What the notifier is built with: for smtp the section's fields and the message, then ``kwargs``."""
    if notify.notifier != SMTP:
        return dict(notify.kwargs)
    smtp = {"to": list(notify.to), "smtp_conn_id": notify.conn_id or DEFAULT_SMTP_CONN_ID, **SMTP_MESSAGE}
    if notify.from_email:
        smtp["from_email"] = notify.from_email
    return {**smtp, **notify.kwargs}


def notify_problems(notify: Notify) -> list[str]:
    """The ``notify:`` section's problems as ``field: problem`` (inventory validation)."""
    if notify.notifier != SMTP:
        extra = [name for name, value in (("conn_id", notify.conn_id), ("to", notify.to),
                                          ("from", notify.from_email)) if value]
        if extra:
            return [f"notify.{name}: only for notifier smtp; give {notify.notifier.split(':')[-1]} its own "
                    "arguments in notify.kwargs" for name in extra]
        if not any(ALERT in str(value) for value in notify.kwargs.values()):
            return [f"notify.kwargs: no argument carries the alert: give the message argument of "
                    f"{notify.notifier.split(':')[-1]} '{{{{ {ALERT}.text }}}}' (or .subject, .html)"]
    try:
        cls = notifier_class(notifier_path(notify))
    except ValueError as exc:
        return [f"notify.notifier: {exc}"]
    kwargs = notifier_kwargs(notify)
    try:
        inspect.signature(cls).bind(**kwargs)
        cls(**kwargs)  # notifiers are built at DAG parse time in Airflow: building one touches nothing
    except Exception as exc:  # TypeError above all: an argument it does not take, or one missing
        return [f"notify.kwargs: {cls.__name__} does not take them: {type(exc).__name__}: {exc}"]
    return []


def deliver(notify: Notify, alert: Alert, context: Any) -> None:
    """Send ``alert`` through the inventory's notifier; AlertNotSent with the notifier's error."""
    try:
        notifier = notifier_class(notifier_path(notify))(**notifier_kwargs(notify))
        # Airflow 3.0's notifiers take their template environment from context["dag"]; an alert raised
        # outside a task's context has none
        values = {"dag": None, **context, ALERT: alert.as_template_value()}
        if hasattr(notifier, "_update_context"):  # 3.1+: the notifier's own context= values join the template's
            notifier._update_context(values)
        notifier.render_template_fields(values)
        notifier.notify(values)  # not notifier(values): on Airflow 3.0 that logs a failed send and returns
    except Exception as exc:
        raise AlertNotSent(f"{notify.notifier}: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------ what the DAGs and operators call


def on_failure_callback() -> Callable[[Any], None]:
    """For a DAG's ``default_args``: a task that failed for good (retries spent, or a failure that
    is not retried) alerts with the exception's text."""
    return alert_failure


def alert_failure(context: Any) -> None:
    """on_failure_callback: never raises (Airflow would only log it); a problem is logged as an error."""
    error = context.get("exception")
    reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "unknown")
    alert = alert_from_context(context, "failed", reason)
    try:
        inventory = _inventory_of(context)
    except Exception as exc:  # the failure may be the inventory itself
        log.error("pgha alert NOT SENT for %s: the inventory cannot be read: %s", alert.subject, exc)
        return
    send_or_log(inventory, alert, context)


def alert_skip(context: Any, inventory: Inventory, reason: str) -> bool:
    """An operator that skips for a reason someone must act on alerts before it raises the skip.
    AlertNotSent when the notifier fails (the caller decides: a skip nobody hears of is worse than a
    failed task). False when the inventory has no ``notify:`` section."""
    alert = alert_from_context(context, "skipped", reason)
    sent = send(inventory, alert, context)
    if sent:
        log.info("pgha alert sent: %s", alert.subject)
    return sent


def ask_approver(context: Any, inventory: Inventory, subject: str, body: str) -> bool:
    """Tell the inventory's recipients that a cutover waits for their approval (what it will do, where to
    answer). Never raises: the request waits in Airflow whether or not the message went out."""
    reason = f"{subject}\n\n{body.strip()}\n\nApprove or reject it in Airflow: the task's page above, or Browse > " \
             "Required Actions. Until someone answers, nothing is stopped and nothing moves."
    return send_or_log(inventory, alert_from_context(context, "awaits approval", reason), context)


def send_or_log(inventory: Inventory, alert: Alert, context: Any) -> bool:
    """``send``, for a caller that goes on either way: a notifier's failure is logged as an error."""
    try:
        sent = send(inventory, alert, context)
    except AlertNotSent as exc:
        log.error("pgha alert NOT SENT for %s: %s", alert.subject, exc)
        return False
    if sent:
        log.info("pgha alert sent: %s", alert.subject)
    return sent


def send(inventory: Inventory, alert: Alert, context: Any) -> bool:
    if inventory.notify is None:
        log.warning("no notify: section in the inventory %s: nobody is told: %s", inventory.path, alert.subject)
        return False
    deliver(inventory.notify, alert, context)
    return True


def alert_from_context(context: Any, outcome: str, reason: str) -> Alert:
    """The alert about ``context``'s task; secrets Airflow masks in logs are masked in the reason too."""
    ti, task = context.get("ti"), context.get("task")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or "?"
    run_id = getattr(ti, "run_id", None) or context.get("run_id") or "?"
    task_id = getattr(ti, "task_id", None) or getattr(task, "task_id", None) or "?"
    map_index = getattr(ti, "map_index", None)
    host = getattr(task, "host", None)
    return Alert(dag_id=dag_id, run_id=run_id, task_id=task_id, outcome=outcome, reason=_masked(reason),
                 log_url=_log_url(ti, dag_id, run_id, task_id, map_index), map_index=map_index,
                 host=host if isinstance(host, str) and "{{" not in host else None,
                 try_number=getattr(ti, "try_number", None))


def _masked(text: str) -> str:
    from pgha.compat import redact

    return str(redact(text))


def _log_url(ti: Any, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """The task's log in the UI: Airflow's own link when the task instance has one, else built the
    same way from [api] base_url."""
    url = getattr(ti, "log_url", None)
    if isinstance(url, str) and url:
        return url
    from pgha.compat import airflow_conf

    base_url = airflow_conf().get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    mapped = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{base_url}/dags/{quote(dag_id)}/runs/{quote(run_id)}/tasks/{quote(task_id)}{mapped}"


def _inventory_of(context: Any) -> Inventory:
    """The run's inventory: its ``inventory_path`` Param, else the task's (rendered), else the default."""
    from pgha.inventory import load_inventory

    path = (context.get("params") or {}).get("inventory_path")
    if not path:
        task_path = getattr(context.get("task"), "inventory_path", None)
        path = task_path if isinstance(task_path, str) and "{{" not in task_path else None
    return load_inventory(path)
