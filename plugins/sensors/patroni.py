"""PatroniLeaderSensor: one leader, replicas streaming; pushes the leader's name."""

from __future__ import annotations

from typing import Any

from pgha.triggers.patroni import PatroniLeaderTrigger

from pgha.sensors.base import CheckSensor


class PatroniLeaderSensor(CheckSensor):
    """
    Waits for exactly one Patroni leader and ``expected_replicas`` streaming
    replicas; returns (XCom) the leader's name.

    :param api_urls: Patroni REST URLs (default: every database node of the inventory).
    :param expected_replicas: streaming replicas to wait for (default: all other nodes).
    :param require_sync: also wait for a synchronous standby.
    :param max_lag_bytes: every streaming replica must lag less than this.
    :param not_leader: wait until this member is no longer the leader (templated; a
        failover's old leader). Empty or None: any leader will do.
    """

    template_fields = (*CheckSensor.template_fields, "not_leader")

    def __init__(
        self,
        *,
        api_urls: list[str] | None = None,
        expected_replicas: int | None = None,
        require_sync: bool = False,
        max_lag_bytes: int | None = None,
        not_leader: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.api_urls = api_urls
        self.expected_replicas = expected_replicas
        self.require_sync = require_sync
        self.max_lag_bytes = max_lag_bytes
        self.not_leader = not_leader

    def make_trigger(self) -> PatroniLeaderTrigger:
        expected = self.expected_replicas
        if expected is None:
            expected = len(self.inventory.database_nodes) - 1
        return PatroniLeaderTrigger(
            api_urls=self.api_urls or self.patroni_api_urls(),
            expected_replicas=expected,
            require_sync=self.require_sync,
            max_lag_bytes=self.max_lag_bytes,
            poll_interval=self.poke_interval,
            timeout=self.timeout,
            tls_conn_id=self.tls_conn_id(),
            not_leader=self.not_leader or None,
        )
