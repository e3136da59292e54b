"""CutoverOutcomeSensor: the cutover is done only once Airflow runs healthy on the cluster."""

from __future__ import annotations

from typing import Any

from airflow.sdk import PokeReturnValue
from pgha.compat import AirflowFailException
from pgha.triggers.airflow import SUCCESS, CutoverOutcomeTrigger, first_line

from pgha.sensors.base import CheckSensor


class CutoverOutcomeSensor(CheckSensor):
    """
    Waits for the outcome the cutover agents record, so the run's colour is the cutover's: success
    once every agent host recorded success and a scheduler started after the cutover heartbeats in
    the cluster's database; a failure that is not retried, with the recorded reason, as soon as an
    agent rolled back. Returns (XCom) each host's outcome, its stopped window and the agents' log.

    Runs on whichever Airflow came back (cluster or source) and may be killed by the cutover's stop:
    each poke only reads (the cluster's ``pgha_cutover_log`` through HAProxy; the agents' logs over
    SSH only when the cluster cannot be read), so it is cheap and safe to repeat.

    :param run_id: the cutover run to judge (templated; default: the one the ``cutover`` task armed,
        else the one armed last, from the agent's settings on the source host).
    :param log_dir: where the agents write ``cutover-<run>.log`` (CutoverOperator.LOG_DIR).
    :param settings_path: the agent's settings file on each host (CutoverOperator.SETTINGS).
    """

    template_fields = (*CheckSensor.template_fields, "run_id")

    def __init__(
        self,
        *,
        run_id: str | None = None,
        log_dir: str = "/var/log/pgha",
        settings_path: str = "/etc/pgha/cutover.json",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 15)
        super().__init__(**kwargs)
        self.run_id = run_id
        self.log_dir = log_dir
        self.settings_path = settings_path

    def make_trigger(self) -> CutoverOutcomeTrigger:
        return CutoverOutcomeTrigger(
            inventory_path=self.inventory_path,
            run_id=self.run_id or None,
            log_dir=self.log_dir,
            settings_path=self.settings_path,
            poll_interval=self.poke_interval,
            timeout=self.timeout,
        )

    def poke(self, context: Any) -> PokeReturnValue:
        try:
            problems, value = self.make_trigger().check()
        except Exception as exc:  # the cluster restarting, a host rebooting: wait, as the trigger does
            problems, value = [f"{type(exc).__name__}: {first_line(exc)}"], None
        if problems:
            self.log.info("waiting for the cutover %s: %s", self.run_id or "(armed last)", "; ".join(problems))
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self.conclude(value))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") != "success":
            return super().execute_complete(context, event)  # raises the timeout
        return self.conclude(event["value"])

    def conclude(self, value: dict[str, Any]) -> dict[str, Any]:
        """Log the outcome an auditor reads; fail (not retried: the agents do not run again) unless success."""
        for host, seen in sorted(value.get("hosts", {}).items()):
            self.log.info("[%s] %s agent: %s (%s); Airflow stopped for %.1fs", host, seen["role"], seen["outcome"],
                          seen["detail"], seen["stopped_s"])
        if value.get("log"):
            self.log.info("the agents' log: %s on each host; rows in pgha_cutover_log (cluster, postgres db)",
                          value["log"])
        if value.get("outcome") != SUCCESS:
            raise AirflowFailException(f"cutover {value.get('run_id') or ''} {value.get('outcome')}: "
                                       f"{value.get('reason')}")
        if value.get("run_id") is None:
            self.log.info("%s", value.get("detail"))
            return value
        self.log.info("cutover %s succeeded: Airflow runs on the cluster (%s scheduler heartbeat(s) after the "
                      "cutover); longest stop %.1fs", value.get("run_id"), value.get("heartbeats", "-"),
                      value.get("stopped_s", 0.0))
        return value
