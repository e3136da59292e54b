"""AirflowOnPgBouncerSensor: the move of one host's Airflow onto its PgBouncer is done once its agent says so."""

from __future__ import annotations

from typing import Any

from airflow.sdk import PokeReturnValue
from pgha.compat import AirflowFailException, AirflowSkipException
from pgha.triggers.pgbouncer import SUCCESS, PgBouncerMoveTrigger

from pgha.sensors.base import CheckSensor


class AirflowOnPgBouncerSensor(CheckSensor):
    """
    Waits for the outcome the agent armed by ``MoveAirflowOntoPgBouncerOperator`` on ``host``
    records: success once Airflow there was restarted on its local PgBouncer and checked
    (``db check``, a scheduler heartbeat through it); a failure that is not retried, naming the
    reason, when the agent rolled back (the previous airflow.cfg is back, the units restarted).
    Logs the agent's steps with their durations. A poke cut short by the restart of the
    scheduler it runs under is simply repeated: each poke only reads.

    In the migration DAG (its ``pooler`` param present) it skips unless the pooler is "pgbouncer".

    :param host: the Airflow host (mapped over the inventory's Airflow hosts).
    :param listen_port: PgBouncer's port on 127.0.0.1 (default: the inventory's ``pgbouncer.port``).
    :param settings_path: the agent's settings on the host (MoveAirflowOntoPgBouncerOperator.SETTINGS).
    """

    template_fields = (*CheckSensor.template_fields, "host")

    def __init__(self, *, host: str, listen_port: int | None = None,
                 settings_path: str = "/etc/pgha/pgbouncer-move.json", **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 10)
        super().__init__(**kwargs)
        self.host = host
        self.listen_port = listen_port
        self.settings_path = settings_path

    def make_trigger(self) -> PgBouncerMoveTrigger:
        return PgBouncerMoveTrigger(inventory_path=self.inventory_path, host=self.host,
                                    settings_path=self.settings_path, listen_port=self.listen_port,
                                    poll_interval=self.poke_interval, timeout=self.timeout)

    def execute(self, context: Any) -> Any:
        params = context.get("params") or {}
        if "pooler" in params and params["pooler"] != "pgbouncer":
            raise AirflowSkipException(f"pooler is {params['pooler']}")
        return super().execute(context)

    def poke(self, context: Any) -> PokeReturnValue:
        try:
            problems, value = self.make_trigger().check()
        except (AirflowFailException, AirflowSkipException):
            raise
        except Exception as exc:  # SSH to a host restarting its units or rebooting: wait, as the trigger does
            problems, value = [f"{type(exc).__name__}: {str(exc).strip()[:300]}"], None
        if problems:
            self.log.info("waiting: %s", "; ".join(problems))
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self.conclude(value))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") != "success":
            return super().execute_complete(context, event)
        return self.conclude(event["value"])

    def conclude(self, value: dict[str, Any]) -> dict[str, Any]:
        """Log what the agent did, step by step; fail (not retried: the agent does not run again) unless success."""
        for step in value.get("steps") or []:
            self.log.info("[%s] agent step %-10s %s in %.2fs%s", self.host, step.get("step"),
                          "ok" if step.get("ok") else "FAILED", step.get("seconds", 0.0),
                          f": {step['error']}" if step.get("error") else "")
        if value.get("log"):
            self.log.info("[%s] the agent's log: %s", self.host, value["log"])
        if value.get("outcome") != SUCCESS:
            raise AirflowFailException(f"[{self.host}] move onto PgBouncer {value.get('run_id') or ''} "
                                       f"{value.get('outcome')}: {value.get('reason')}")
        self.log.info("[%s] %s", self.host, value.get("detail"))
        return value
