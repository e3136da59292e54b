"""The cluster as it is now: Patroni's members, etcd's members, HAProxy's routing.

Read through the same hooks the DAGs use. Every part has its own deadline and
its own error: a host that is down shows as down and the rest still renders.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TypeVar

from pgha.hooks.etcd import EtcdHook, EtcdReport
from pgha.hooks.haproxy import READ_BACKEND, WRITE_BACKEND, HAProxyHook, Routing, routing_problems
from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.hooks.remote import RemoteHook
from pgha.inventory import Inventory
from pgha.runtime import client_tls

HTTP_TIMEOUT_S = 2.0  # per request to a Patroni or etcd member
PAGE_DEADLINE_S = 12.0  # what the page waits for any part (an SSH connection to a dead host takes longer)
# Shared by every request: a page reloaded while hosts are down queues behind the same few threads
# instead of starting new ones.
_READERS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="pgha-ui")

T = TypeVar("T")


@dataclass(frozen=True)
class Member:
    """A database node as Patroni sees it; ``up`` False when Patroni does not list it."""

    name: str
    address: str
    up: bool
    role: str | None = None
    state: str | None = None
    lag_bytes: int | None = None
    timeline: int | None = None


@dataclass(frozen=True)
class EtcdEndpoint:
    endpoint: str
    up: bool
    healthy: bool = False
    leader: str | None = None  # the leader this endpoint reports
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ClusterState:
    """Everything the page shows about the cluster now; each ``*_error`` says why a part is missing."""

    name: str
    leader: str | None
    members: list[Member]
    patroni_error: str | None
    etcd_members: list[str]
    etcd_endpoints: list[EtcdEndpoint]
    etcd_problems: list[str]
    haproxy_host: str
    haproxy_write: list[str] = field(default_factory=list)
    haproxy_read: list[str] = field(default_factory=list)
    haproxy_problems: list[str] = field(default_factory=list)
    haproxy_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def members_of(inventory: Inventory, cluster: PatroniCluster | None) -> list[Member]:
    """One Member per database node of the inventory (down: not in Patroni's member list)."""
    out = []
    for host in inventory.db_hosts:
        member = cluster.member(host.name) if cluster else None
        if member is None:
            out.append(Member(host.name, host.address, up=False))
            continue
        lag = member.get("lag")
        out.append(Member(host.name, host.address, up=True, role=member.get("role"), state=member.get("state"),
                          lag_bytes=lag if isinstance(lag, int) else None, timeline=member.get("timeline")))
    return out


def etcd_endpoints_of(report: EtcdReport, endpoints: list[str]) -> list[EtcdEndpoint]:
    out = []
    for endpoint in endpoints:
        if endpoint in report.errors or endpoint not in report.healthy:
            out.append(EtcdEndpoint(endpoint, up=False, error=report.errors.get(endpoint, "no answer")))
            continue
        leader_id = report.leaders.get(endpoint)
        out.append(EtcdEndpoint(endpoint, up=True, healthy=report.healthy[endpoint],
                                leader=report.members.get(leader_id or ""), version=report.versions.get(endpoint)))
    return out


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip() or 'no detail'}"


def result_within(future: Future[T], deadline: float, what: str) -> tuple[T | None, str | None]:
    """The future's result, or None and why not (an exception, or no answer by ``deadline``)."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic())), None
    except FutureTimeout:
        return None, f"{what}: no answer within {PAGE_DEADLINE_S:.0f} s"
    except Exception as exc:  # every failure of a part becomes its error text; the page still renders
        return None, _error(exc)


def submit(function: Callable[..., T], *args: Any) -> Future[T]:
    return _READERS.submit(function, *args)


def haproxy_up_servers(inventory: Inventory) -> tuple[list[str], list[str]]:
    """The UP servers of HAProxy's write and read backends (its stats socket, over SSH)."""
    inv = inventory
    remote = RemoteHook(ssh_conn_id=inv.host(inv.haproxy.host).ssh_conn_id, host_name=inv.haproxy.host,
                        allow_unverified_host_keys=inv.ssh.allow_unverified_host_keys, command_timeout=10)
    try:
        hook = HAProxyHook(remote, inv.haproxy.stats_socket)
        return hook.up_servers(WRITE_BACKEND), hook.up_servers(READ_BACKEND)
    finally:
        remote.close()


def routing_against(cluster: PatroniCluster | None, write_up: list[str], read_up: list[str]) -> Routing:
    """HAProxy's UP servers held against Patroni's view (as HAProxyHook.routing does)."""
    cluster = cluster or PatroniCluster()
    leader = cluster.leaders[0] if len(cluster.leaders) == 1 else None
    return Routing(write_up, read_up, routing_problems(write_up, read_up, leader, cluster.streaming_replicas))


def read_cluster_state(inventory: Inventory, deadline: float | None = None) -> ClusterState:
    """The cluster now, from Patroni, etcd and HAProxy, asked in parallel."""
    deadline = deadline if deadline is not None else time.monotonic() + PAGE_DEADLINE_S
    patroni_port, etcd_port = inventory.patroni.rest_port, inventory.etcd.client_port
    scheme = "https" if inventory.tls.enabled else "http"
    api_urls = [f"{scheme}://{h.address}:{patroni_port}" for h in inventory.db_hosts]
    endpoints = [f"{scheme}://{h.address}:{etcd_port}" for h in inventory.db_hosts]
    tls = None
    if inventory.tls.enabled:
        try:
            tls = client_tls(inventory.tls.ca_conn_id)
        except Exception:  # noqa: BLE001 - without the CA every https answer fails verification: shown per source
            tls = None
    patroni_future = submit(PatroniHook(api_urls, timeout=HTTP_TIMEOUT_S, tls=tls).cluster)
    etcd_future = submit(EtcdHook(endpoints, timeout=HTTP_TIMEOUT_S, tls=tls).report)
    haproxy_future = submit(haproxy_up_servers, inventory)

    cluster, patroni_error = result_within(patroni_future, deadline, "Patroni")
    report, etcd_error = result_within(etcd_future, deadline, "etcd")
    up, haproxy_error = result_within(haproxy_future, deadline, f"HAProxy on {inventory.haproxy.host}")
    routing = routing_against(cluster, *up) if up else None
    report = report or EtcdReport(errors={endpoint: etcd_error or "no answer" for endpoint in endpoints})
    return ClusterState(
        name=inventory.cluster.name,
        leader=cluster.leaders[0] if cluster and len(cluster.leaders) == 1 else None,
        members=members_of(inventory, cluster),
        patroni_error=patroni_error,
        etcd_members=sorted(report.members.values()),
        etcd_endpoints=etcd_endpoints_of(report, endpoints),
        etcd_problems=report.problems(list(inventory.database_nodes)),
        haproxy_host=inventory.haproxy.host,
        haproxy_write=routing.write if routing else [],
        haproxy_read=routing.read if routing else [],
        haproxy_problems=routing.problems if routing else [],
        haproxy_error=haproxy_error,
    )
