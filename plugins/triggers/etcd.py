"""Deferrable wait for a healthy etcd cluster."""

from __future__ import annotations

from typing import Any

from pgha.hooks.etcd import EtcdHook, EtcdReport

from pgha.triggers.base import PollingTrigger


class EtcdHealthTrigger(PollingTrigger):
    """Fires when every endpoint is healthy, there is one leader and the members match."""

    def __init__(self, endpoints: list[str], expected_members: list[str], poll_interval: float, timeout: float,
                 deadline: float | None = None, tls_conn_id: str | None = None) -> None:
        super().__init__(poll_interval, timeout, deadline)
        self.endpoints = endpoints
        self.expected_members = expected_members
        self.tls_conn_id = tls_conn_id  # the CA connection (the trigger's kwargs never hold a key)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pgha.triggers.etcd.EtcdHealthTrigger",
            {"endpoints": self.endpoints, "expected_members": self.expected_members, "tls_conn_id": self.tls_conn_id,
             **self.common_kwargs()},
        )

    def check(self) -> tuple[list[str], Any]:
        return self.judge(EtcdHook(self.endpoints, tls=self.client_tls()).report())

    async def acheck(self) -> tuple[list[str], Any]:
        return self.judge(await EtcdHook(self.endpoints, tls=await self.aclient_tls()).areport())

    def judge(self, report: EtcdReport) -> tuple[list[str], Any]:
        return report.problems(self.expected_members), report.leader_name
