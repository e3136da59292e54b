"""Deferrable wait for a Patroni cluster with one leader and streaming replicas."""

from __future__ import annotations

from typing import Any

from pgha.hooks.patroni import PatroniCluster, PatroniHook

from pgha.triggers.base import PollingTrigger


class PatroniLeaderTrigger(PollingTrigger):
    """Fires with the leader's name once the cluster is as expected."""

    def __init__(
        self,
        api_urls: list[str],
        expected_replicas: int,
        require_sync: bool,
        max_lag_bytes: int | None,
        poll_interval: float,
        timeout: float,
        not_leader: str | None = None,
        deadline: float | None = None,
        tls_conn_id: str | None = None,
    ) -> None:
        super().__init__(poll_interval, timeout, deadline)
        self.tls_conn_id = tls_conn_id  # the CA connection (the trigger's kwargs never hold a key)
        self.api_urls = api_urls
        self.expected_replicas = expected_replicas
        self.require_sync = require_sync
        self.max_lag_bytes = max_lag_bytes
        self.not_leader = not_leader

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pgha.triggers.patroni.PatroniLeaderTrigger",
            {
                "api_urls": self.api_urls,
                "expected_replicas": self.expected_replicas,
                "require_sync": self.require_sync,
                "max_lag_bytes": self.max_lag_bytes,
                "not_leader": self.not_leader,
                "tls_conn_id": self.tls_conn_id,
                **self.common_kwargs(),
            },
        )

    def check(self) -> tuple[list[str], Any]:
        return self.judge(PatroniHook(self.api_urls, tls=self.client_tls()).cluster())

    async def acheck(self) -> tuple[list[str], Any]:
        return self.judge(await PatroniHook(self.api_urls, tls=await self.aclient_tls()).acluster())

    def judge(self, cluster: PatroniCluster) -> tuple[list[str], Any]:
        problems = cluster.problems(self.expected_replicas, self.require_sync, self.max_lag_bytes, self.not_leader)
        return problems, (cluster.leaders[0] if len(cluster.leaders) == 1 else None)
