"""EtcdHealthSensor: every member healthy, one leader, members = inventory."""

from __future__ import annotations

from typing import Any

from pgha.triggers.etcd import EtcdHealthTrigger

from pgha.sensors.base import CheckSensor


class EtcdHealthSensor(CheckSensor):
    """
    Waits until the etcd cluster is healthy; returns the leader's name.

    :param endpoints: client URLs (default: every database node of the inventory).
    :param expected_members: member names (default: the inventory's database nodes).
    """

    def __init__(
        self, *, endpoints: list[str] | None = None, expected_members: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.endpoints = endpoints
        self.expected_members = expected_members

    def make_trigger(self) -> EtcdHealthTrigger:
        return EtcdHealthTrigger(
            endpoints=self.endpoints or self.etcd_endpoints(),
            expected_members=self.expected_members or list(self.inventory.database_nodes),
            poll_interval=self.poke_interval,
            timeout=self.timeout,
            tls_conn_id=self.tls_conn_id(),
        )
