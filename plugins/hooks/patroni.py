"""Patroni REST API: cluster state, leader, role checks and switchover."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
from pgha.compat import AirflowException, BaseHook
from pgha.tls import ClientTLS, ssl_context

REPLICA_ROLES = {"replica", "sync_standby", "quorum_standby"}
SYNC_ROLES = {"sync_standby", "quorum_standby"}


@dataclass
class PatroniCluster:
    """The answer of GET /cluster, reduced to what the checks need."""

    members: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    paused: bool = False  # maintenance mode: Patroni will not fail over

    @property
    def leaders(self) -> list[str]:
        return [m["name"] for m in self.members if m.get("role") in {"leader", "primary", "standby_leader"}]

    @property
    def streaming_replicas(self) -> list[str]:
        return [m["name"] for m in self.members if m.get("role") in REPLICA_ROLES and m.get("state") == "streaming"]

    @property
    def sync_standbys(self) -> list[str]:
        return [m["name"] for m in self.members if m.get("role") in SYNC_ROLES and m.get("state") == "streaming"]

    def lag_bytes(self, name: str) -> int | None:
        for member in self.members:
            if member["name"] == name:
                lag = member.get("lag")
                return lag if isinstance(lag, int) else None
        return None

    def member(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.members if m["name"] == name), None)

    def not_serving(self, expected_members: list[str]) -> list[str]:
        """Each expected member that neither leads nor streams, and why (absent, stopped, lagging...)."""
        out = []
        serving = set(self.leaders) | set(self.streaming_replicas)
        for name in expected_members:
            if name in serving:
                continue
            member = self.member(name)
            if member is None:
                out.append(f"{name} is not in the Patroni cluster (is Patroni running there?)")
            else:
                out.append(f"{name} is {member.get('role')}/{member.get('state')}")
        return out

    def problems(
        self,
        expected_replicas: int,
        require_sync: bool = False,
        max_lag_bytes: int | None = None,
        not_leader: str | None = None,
    ) -> list[str]:
        """Every reason the cluster is not yet as expected, or [] when it is.

        :param not_leader: a member that must not be the leader (the one a failover moves away from).
        """
        out = []
        if len(self.leaders) != 1:
            out.append(f"expected exactly one leader, found {self.leaders or 'none'}")
        elif not_leader and self.leaders[0] == not_leader:
            out.append(f"{not_leader} is still the leader")
        if len(self.streaming_replicas) < expected_replicas:
            out.append(f"expected {expected_replicas} streaming replicas, found {self.streaming_replicas}")
        if require_sync and not self.sync_standbys:
            out.append("no synchronous standby is streaming yet")
        if max_lag_bytes is not None:
            for name in self.streaming_replicas:
                lag = self.lag_bytes(name)
                if lag is None or lag > max_lag_bytes:
                    out.append(f"{name} lags {lag if lag is not None else 'unknown'} bytes (bound {max_lag_bytes})")
        return out

    def summary(self) -> str:
        return ", ".join(f"{m['name']}={m.get('role')}/{m.get('state')} lag={m.get('lag', '-')}" for m in self.members)


def cluster_from(api_url: str, body: dict[str, Any]) -> PatroniCluster:
    """A PatroniCluster from the body of GET /cluster as ``api_url`` answered it."""
    return PatroniCluster(members=body.get("members", []), source=api_url, paused=bool(body.get("pause")))


def client_options(tls: ClientTLS | None) -> dict[str, Any]:
    """``requests`` arguments that trust only the cluster CA and present pgha's client certificate."""
    if tls is None:
        return {}
    files = tls.files()
    return {"verify": files.ca, "cert": (files.cert, files.key)}


def async_client_options(tls: ClientTLS | None) -> dict[str, Any]:
    """``httpx.AsyncClient`` arguments doing what ``client_options`` does."""
    return {"verify": ssl_context(tls)} if tls is not None else {}


class PatroniHook(BaseHook):
    """
    Talks to the Patroni REST API of the cluster members.

    :param api_urls: every member's REST URL, e.g. ``https://10.0.0.1:8008``.
    :param conn_id: Airflow connection with login/password of ``restapi.authentication``
        (only needed for switchover and other unsafe calls).
    :param tls: the cluster CA to verify Patroni with and pgha's client certificate (Patroni's
        ``verify_client: optional`` wants one for unsafe calls); None for plain-text URLs.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "pgha_patroni_api"
    conn_type = "http"
    hook_name = "Patroni REST API"

    def __init__(self, api_urls: list[str], conn_id: str | None = None, timeout: float = 3.0,
                 tls: ClientTLS | None = None) -> None:
        super().__init__()
        self.api_urls = [u.rstrip("/") for u in api_urls]
        self.conn_id = conn_id
        self.timeout = timeout
        self.tls = tls
        self._login: tuple[str, str] | None = None
        self._member_netlocs: dict[str, str] = {}  # member name -> host:port of its REST API, as /cluster names it

    def get_conn(self) -> tuple[str, str]:
        """The (login, password) for unsafe endpoints, from the Airflow connection; read once per hook (a
        lookup is a round trip to the task's supervisor, which must not happen while Airflow is paused)."""
        if self._login is None:
            if not self.conn_id:
                raise AirflowException("PatroniHook needs conn_id for authenticated calls")
            conn = self.get_connection(self.conn_id)
            if not conn.login or not conn.password:
                raise AirflowException(f"connection {self.conn_id!r} must have login and password (Patroni REST auth)")
            self._login = (conn.login, conn.password)
        return self._login

    def status_code(self, api_url: str, path: str) -> int | None:
        """HTTP status of GET ``path`` (e.g. /primary, /replica), or None if unreachable."""
        try:
            return requests.get(f"{api_url}{path}", timeout=self.timeout, **client_options(self.tls)).status_code
        except requests.RequestException:
            return None

    def is_primary(self, api_url: str) -> bool:
        return self.status_code(api_url, "/primary") == 200

    def is_replica(self, api_url: str) -> bool:
        return self.status_code(api_url, "/replica") == 200

    def _get_json(self, path: str) -> tuple[str, Any]:
        """GET ``path`` from the first member that answers with JSON."""
        errors = []
        for api_url in self.api_urls:
            try:
                response = requests.get(f"{api_url}{path}", timeout=self.timeout, **client_options(self.tls))
                response.raise_for_status()
                return api_url, response.json()
            except (requests.RequestException, ValueError) as exc:
                errors.append(f"{api_url}: {exc}")
        raise AirflowException(f"no Patroni member answered GET {path}: " + "; ".join(errors))

    def cluster(self) -> PatroniCluster:
        """GET /cluster from the first member that answers."""
        cluster = cluster_from(*self._get_json("/cluster"))
        self._member_netlocs.update({m["name"]: urlsplit(m.get("api_url") or "").netloc for m in cluster.members})
        return cluster

    async def acluster(self) -> PatroniCluster:
        """``cluster()`` without blocking the event loop (for triggers in the triggerer)."""
        errors = []
        async with httpx.AsyncClient(timeout=self.timeout, **async_client_options(self.tls)) as client:
            for api_url in self.api_urls:
                try:
                    response = await client.get(f"{api_url}/cluster")
                    response.raise_for_status()
                    return cluster_from(api_url, response.json())
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(f"{api_url}: {exc}")
        raise AirflowException("no Patroni member answered GET /cluster: " + "; ".join(errors))

    def history(self) -> list[list[Any]]:
        """GET /history: one entry per timeline switch, [timeline, lsn, reason, timestamp, new leader]."""
        return list(self._get_json("/history")[1])

    def dynamic_config(self) -> dict[str, Any]:
        """GET /config: the cluster-wide settings Patroni keeps in the DCS."""
        return dict(self._get_json("/config")[1])

    def patch_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH /config (authenticated): Patroni merges ``changes`` into the DCS config; returns the result."""
        auth = self.get_conn()
        errors = []
        for api_url in self.api_urls:
            try:
                response = requests.patch(f"{api_url}/config", json=changes, auth=auth, timeout=30,
                                          **client_options(self.tls))
            except requests.RequestException as exc:
                errors.append(f"{api_url}: {exc}")
                continue
            if response.status_code >= 400:
                raise AirflowException(f"PATCH /config refused by {api_url}: HTTP {response.status_code} "
                                       f"{response.text.strip()}")
            return dict(response.json())
        raise AirflowException("no Patroni member accepted PATCH /config: " + "; ".join(errors))

    def leader(self) -> str | None:
        leaders = self.cluster().leaders
        return leaders[0] if len(leaders) == 1 else None

    def switchover(self, leader: str, candidate: str | None = None) -> requests.Response:
        """POST /switchover (planned; never /failover, which may promote an async node)."""
        body: dict[str, Any] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        auth = self.get_conn()
        errors = []
        for api_url in self.member_first(leader):
            try:
                return requests.post(f"{api_url}/switchover", json=body, auth=auth, timeout=30,
                                     **client_options(self.tls))
            except requests.RequestException as exc:
                errors.append(f"{api_url}: {exc}")
        raise AirflowException("no Patroni member accepted POST /switchover: " + "; ".join(errors))

    def member_first(self, member: str) -> list[str]:
        """``api_urls`` with ``member``'s own first, as /cluster names it. POST /switchover goes to the leader's:
        the member that takes it wakes its own HA loop, and the leader, when another member took it, saw the
        request only at its next loop, up to ``loop_wait`` seconds later (1.7 s of a 3.7 s pause on the lab).
        Only the configured URLs are used: a member's api_url (from the DCS) only picks which one goes first."""
        if member not in self._member_netlocs:
            try:
                self.cluster()
            except AirflowException:
                return list(self.api_urls)
        own = self._member_netlocs.get(member)
        return sorted(self.api_urls, key=lambda url: urlsplit(url).netloc != own)

    def ready_to_switch_over(self, leader: str) -> None:
        """Before a pause: what a switchover inside it would otherwise do while Airflow waits: the login (a
        connection lookup is a round trip to the task's supervisor, which could wait on Airflow itself) and the
        leader's own REST URL (``member_first``)."""
        self.get_conn()
        self.member_first(leader)

    def api_url_of(self, member: str) -> str | None:
        """``member``'s own URL among ``api_urls``; None when /cluster does not name one of them."""
        first = self.member_first(member)[0]
        own = self._member_netlocs.get(member)
        return first if own and urlsplit(first).netloc == own else None

    def switchover_in_background(self, leader: str, candidate: str | None = None) -> Future[requests.Response]:
        """``switchover`` in a thread of its own. Patroni answers POST /switchover only after polling the DCS in
        whole seconds: whoever waits for the new leader itself (HAProxy routing to it) need not wait for that."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patroni-switchover")
        try:
            return executor.submit(self.switchover, leader, candidate)
        finally:
            executor.shutdown(wait=False)
