"""The failover drill's waits, as sensors: the client writes again, the cluster is whole again.

Both read the drill's plan (the precheck's XCom) and its records on the probe
host (hooks/drill.py); they reschedule between pokes, so a wait of minutes
holds no worker slot and shows in the grid as what it is.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from pgha.compat import AirflowException, AirflowFailException, AirflowSkipException
from pgha.drill import first_ack_on, parse_probe_log
from pgha.hooks.drill import DrillProbeHook, drill_database
from pgha.hooks.haproxy import HAProxyHook
from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.runtime import DrillPlanMixin, InventoryMixin

from pgha.sensors.base import DEFAULT_TIMEOUT


class DrillSensor(DrillPlanMixin, InventoryMixin, BaseSensorOperator):
    """
    A wait of the drill. ``check`` returns the problems that remain (empty:
    done) and the value to push.

    :param plan: the precheck's result (templated, from XCom). None (the
        precheck skipped or failed): the wait skips.
    :param inventory_path: inventory file (templated).
    """

    template_fields = ("inventory_path", "plan")
    ui_color = "#f6dbe9"

    def __init__(
        self,
        *,
        plan: dict[str, Any] | None = None,
        inventory_path: str | None = None,
        poke_interval: float = 1,
        timeout: float = DEFAULT_TIMEOUT,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.plan = plan
        self.inventory_path = inventory_path

    def patroni(self) -> PatroniHook:
        return PatroniHook(self.patroni_api_urls(), tls=self.client_tls())

    def check(self) -> tuple[list[str], Any]:
        raise NotImplementedError

    def poke(self, context: Any) -> PokeReturnValue:
        try:
            problems, value = self.check()
        finally:
            self.close_remotes()
        if problems:
            self.log.info("not yet: %s", "; ".join(problems))
            return PokeReturnValue(is_done=False)
        self.log.info("done: %s", value)
        return PokeReturnValue(is_done=True, xcom_value=value)


class DrillClientWritesSensor(DrillSensor):
    """
    The client's view of the recovery: waits until the probe has a commit
    acknowledged by the current Patroni leader after the fault; returns
    (XCom) ``{"leader", "first_ack_at", "seq"}``.
    """

    def check(self) -> tuple[list[str], Any]:
        probe = self.probe()
        fault = probe.fault_record()
        if fault is None:
            raise AirflowFailException("no fault was recorded for this drill")
        try:
            leader = self.patroni().leader()
        except AirflowException as exc:
            return [str(exc)], None
        if leader is None:
            return ["Patroni has no single leader"], None
        after = float(fault.get("t_injected") or fault["t_inject"])
        first = first_ack_on(parse_probe_log(probe.read_acks()).acks, self.inventory.host(leader).address, after)
        if first is None:
            return [f"no commit acknowledged by the leader {leader} since the fault"], None
        return [], {"leader": leader, "first_ack_at": first.at, "seq": first.seq}


class DrillClusterWholeSensor(DrillSensor):
    """
    After heal: waits until the drill's target is back (streaming, or leading
    again), the cluster is whole (one leader, every other member streaming, a
    synchronous standby), HAProxy routes as Patroni says and the leader takes
    a connection through HAProxy. The moment the target is first seen back is
    kept on the probe host (``target_back``), so it survives reschedules and
    retries. Returns (XCom) ``{"target", "back_at", "cluster", "routing"}``.
    Skips when no fault was injected.
    """

    def check(self) -> tuple[list[str], Any]:
        target, probe = self.the_plan()["target"], self.probe()
        if probe.fault_record() is None:
            raise AirflowSkipException("no fault was injected for this drill: nothing to wait for")
        try:
            cluster = self.patroni().cluster()
        except AirflowException as exc:
            return [str(exc)], None
        back_at = self._target_back_at(probe, cluster, target)
        problems = [] if back_at else [f"{target} is neither streaming nor leading yet"]
        problems += cluster.problems(len(self.inventory.database_nodes) - 1, require_sync=True)
        if problems:
            return problems, None
        inv = self.inventory
        try:
            routing = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket).routing(cluster)
        except AirflowException as exc:
            return [f"HAProxy: {exc}"], None
        problems = [f"HAProxy: {p}" for p in routing.problems] or self._writable_problems()
        value = {"target": target, "back_at": back_at, "cluster": cluster.summary(), "routing": routing.as_dict()}
        return problems, value

    @staticmethod
    def _target_back_at(probe: DrillProbeHook, cluster: PatroniCluster, target: str) -> float | None:
        recorded = probe.record("target_back")
        if recorded:
            return float(recorded["back_at"])
        member = cluster.member(target) or {}
        if member.get("state") != "streaming" and target not in cluster.leaders:
            return None
        back_at = time.time()
        probe.save_record("target_back", {"target": target, "back_at": back_at})
        return back_at

    def _writable_problems(self) -> list[str]:
        """A postmaster restarted in place answers "starting up" for a moment after HAProxy routes to it."""
        try:
            drill_database(self.inventory, self.tls_files()).scalar("SELECT 1")
        except psycopg2.OperationalError as exc:
            return [f"no connection through HAProxy: {str(exc).strip()}"]
        return []
