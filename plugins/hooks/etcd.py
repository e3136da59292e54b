"""etcd v3 API (JSON gateway): health, members and leader of the cluster; its RBAC users.

Patroni must talk v3 (``etcd3:``; etcd 3.6 has no v2 API); so does this hook.

With etcd RBAC on, a request carries a token from ``/v3/auth/authenticate`` (user and password in
the request body, never in a URL or on a command line) in its ``Authorization`` header. Only the
calls and answers of etcd 3.4 are used (3.5 answers them the same way).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import requests
from pgha.compat import AirflowException, BaseHook
from pgha.tls import ClientTLS

if TYPE_CHECKING:
    from pgha.runtime import Credentials

from pgha.hooks.patroni import PatroniCluster, async_client_options, client_options


@dataclass
class EtcdReport:
    """What every endpoint said about the cluster."""

    healthy: dict[str, bool] = field(default_factory=dict)  # endpoint -> /health
    leaders: dict[str, str] = field(default_factory=dict)  # endpoint -> leader member id
    members: dict[str, str] = field(default_factory=dict)  # member id -> name
    versions: dict[str, str] = field(default_factory=dict)  # endpoint -> server version
    errors: dict[str, str] = field(default_factory=dict)  # endpoint -> error text

    def problems(self, expected_members: list[str]) -> list[str]:
        """Every reason the cluster is not healthy, or [] when it is."""
        out = [f"{ep}: unreachable ({err})" for ep, err in self.errors.items()]
        out += [f"{ep}: /health is not true" for ep, ok in self.healthy.items() if not ok]
        leader_ids = set(self.leaders.values())
        if len(leader_ids) != 1 or "0" in leader_ids:
            out.append(f"expected exactly one leader, endpoints report {sorted(leader_ids) or 'none'}")
        names = sorted(self.members.values())
        if names != sorted(expected_members):
            out.append(f"members {names} differ from the inventory {sorted(expected_members)}")
        return out

    @property
    def leader_name(self) -> str | None:
        ids = set(self.leaders.values())
        return self.members.get(ids.pop()) if len(ids) == 1 else None


def _health_json(body: dict[str, Any]) -> bool:
    return str(body.get("health")).lower() == "true"


def record_endpoint(report: EtcdReport, endpoint: str, healthy: bool, status: dict[str, Any],
                    members: list[dict[str, Any]]) -> None:
    """Add what one endpoint said (/health, maintenance status, member list) to ``report``."""
    report.healthy[endpoint] = healthy
    report.leaders[endpoint] = str(status.get("leader", "0"))
    report.versions[endpoint] = str(status.get("version", "?"))
    for member in members:
        report.members[str(member.get("ID"))] = member.get("name") or f"(unstarted {member.get('ID')})"


def etcd_leader_target(cluster: PatroniCluster) -> str | None:
    """Where etcd's leader should be: a streaming replica that is not the sync standby (a host crash of the
    Patroni leader then promotes the sync standby and leaves etcd's leader alone), else any replica."""
    replicas = cluster.streaming_replicas
    async_replicas = [name for name in replicas if name not in cluster.sync_standbys]
    return (async_replicas or replicas or [None])[0]


class EtcdError(ValueError):
    """An error answer of etcd's gateway: its message and gRPC code."""

    def __init__(self, message: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


AUTH_NOT_ENABLED = "authentication is not enabled"
NO_USER = "user name is empty"  # an unauthenticated request while auth is on
INVALID_TOKEN = "invalid auth token"
USER_NOT_FOUND = "user name not found"
ROLE_NOT_FOUND = "role name not found"
PERM_TYPES = ("READ", "WRITE", "READWRITE")  # authpb.Permission.Type; READ (0) is left out of JSON answers


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode(errors="replace")


def prefix_range_end(prefix: str) -> str:
    """The range end etcd uses for "every key starting with ``prefix``" (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class Permission:
    """One grant of an etcd role: READ, WRITE or READWRITE on the keys [key, range_end)."""

    perm_type: str
    key: str
    range_end: str

    @classmethod
    def prefix(cls, perm_type: str, prefix: str) -> Permission:
        return cls(perm_type, prefix, prefix_range_end(prefix))

    def describe(self) -> str:
        return f"{self.perm_type} on keys {self.key}* " if self.range_end == prefix_range_end(self.key) else \
            f"{self.perm_type} on [{self.key}, {self.range_end})"


@dataclass(frozen=True)
class EtcdUser:
    credentials: Credentials = field(repr=False)
    role: str


@dataclass(frozen=True)
class EtcdRbac:
    """What etcd's RBAC should be: root's credentials, the other users (each with one role) and each role's
    grants. ``EtcdHook.apply_rbac`` makes etcd so, and changes nothing when it already is."""

    root: Credentials = field(repr=False)
    users: tuple[EtcdUser, ...]
    roles: dict[str, tuple[Permission, ...]]


class EtcdHook(BaseHook):
    """
    Talks to etcd members over their client URLs (v3 JSON gateway).

    :param endpoints: client URLs, e.g. ``https://10.0.0.1:2379``.
    :param timeout: seconds per HTTP request.
    :param tls: the cluster CA to verify etcd with and pgha's client certificate to present
        (etcd runs ``--client-cert-auth``); None for plain-text endpoints.
    :param auth_conn_id: Airflow connection (login + password) of the etcd user pgha's calls
        authenticate as once etcd RBAC is on; before that (auth not enabled yet) they go without.
    :param credentials: the same given directly (``apply_rbac`` uses root's); wins over ``auth_conn_id``.
    """

    hook_name = "etcd v3"

    def __init__(self, endpoints: list[str], timeout: float = 3.0, tls: ClientTLS | None = None,
                 auth_conn_id: str | None = None, credentials: Credentials | None = None) -> None:
        super().__init__()
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.tls = tls
        self.auth_conn_id = auth_conn_id
        self._credentials = credentials
        self._tokens: dict[str, str | None] = {}  # endpoint -> token (None: auth not enabled)

    def get_conn(self) -> requests.Session:
        return requests.Session()

    @property
    def credentials(self) -> Credentials | None:
        if self._credentials is None and self.auth_conn_id:
            from pgha.runtime import credentials

            self._credentials = credentials(self.auth_conn_id, "pgha's etcd user (etcd.auth.pgha_conn_id)")
        return self._credentials

    def _get(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.get(url, timeout=self.timeout, **client_options(self.tls), **kwargs)

    def _request(self, endpoint: str, path: str, body: dict[str, Any], token: str | None,
                 timeout: float | None = None) -> dict[str, Any]:
        """POST ``body`` to the gateway; the answer's JSON, or EtcdError with etcd's message."""
        response = requests.post(f"{endpoint}{path}", json=body, timeout=timeout or self.timeout,
                                 headers={"Authorization": token} if token else {}, **client_options(self.tls))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.ok and isinstance(answer, dict):
            return answer
        if isinstance(answer, dict) and ("message" in answer or "error" in answer):
            raise EtcdError(str(answer.get("message") or answer.get("error")), answer.get("code"),
                            response.status_code)
        raise EtcdError(f"HTTP {response.status_code} from {endpoint}{path}: {response.text.strip()[:200]}",
                        status=response.status_code)

    def authenticate(self, endpoint: str, who: Credentials) -> str | None:
        """A token for ``who`` from ``endpoint``, or None when etcd's auth is not enabled (yet)."""
        try:
            return str(self._request(endpoint, "/v3/auth/authenticate",
                                     {"name": who.login, "password": who.password}, None)["token"])
        except EtcdError as exc:
            if AUTH_NOT_ENABLED in str(exc):
                return None
            raise EtcdError(f"etcd user {who.login!r} cannot log in at {endpoint}: {exc}", exc.code,
                            exc.status) from None

    def _token(self, endpoint: str) -> str | None:
        who = self.credentials
        if who is None:
            return None
        if endpoint not in self._tokens:
            self._tokens[endpoint] = self.authenticate(endpoint, who)
        return self._tokens[endpoint]

    def _post(self, endpoint: str, path: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        """A gateway call as this hook's user (a token is fetched again once if etcd no longer knows it)."""
        try:
            return self._request(endpoint, path, body or {}, self._token(endpoint), timeout)
        except EtcdError as exc:
            if INVALID_TOKEN not in str(exc) or self.credentials is None:
                raise
            self._tokens.pop(endpoint, None)
            return self._request(endpoint, path, body or {}, self._token(endpoint), timeout)

    def health(self, endpoint: str) -> bool:
        response = self._get(f"{endpoint}/health")
        return response.ok and _health_json(response.json())

    def status(self, endpoint: str) -> dict[str, Any]:
        """/v3/maintenance/status: the member's id, the leader's id, the version."""
        return self._post(endpoint, "/v3/maintenance/status")

    def members(self, endpoint: str) -> list[dict[str, Any]]:
        """/v3/cluster/member/list: id, name, peer and client URLs of every member."""
        return self._post(endpoint, "/v3/cluster/member/list").get("members", [])

    def move_leader(self, target: str) -> str | None:
        """
        Hands etcd's leadership to member ``target`` (by name) through the current
        leader (POST /v3/maintenance/transfer-leadership). Returns the former
        leader's name, or None when ``target`` already leads.
        """
        report = self.report()
        leader = report.leader_name
        ids = {name: member_id for member_id, name in report.members.items()}
        if leader is None or target not in ids:
            raise ValueError(f"cannot move etcd leadership to {target!r}: leader {leader}, members {sorted(ids)}")
        if leader == target:
            return None
        for endpoint in self.endpoints:
            header = self.status(endpoint).get("header", {})
            if str(header.get("member_id")) == ids[leader]:
                self._post(endpoint, "/v3/maintenance/transfer-leadership", {"targetID": ids[target]},
                           timeout=max(self.timeout, 10))
                return leader
        raise ValueError(f"no endpoint of the etcd leader {leader} among {self.endpoints}")

    def report(self) -> EtcdReport:
        """Ask every endpoint; never raises for an unreachable one (it is in ``errors``)."""
        report = EtcdReport()
        for endpoint in self.endpoints:
            try:
                health = self._get(f"{endpoint}/health")
                record_endpoint(report, endpoint, health.ok and _health_json(health.json()),
                                self.status(endpoint), self.members(endpoint))
            except (requests.RequestException, ValueError) as exc:
                report.errors[endpoint] = f"{type(exc).__name__}: {exc}"
        return report

    async def _atoken(self, client: httpx.AsyncClient, endpoint: str) -> dict[str, str]:
        """The Authorization header for an async call (empty without a user or with auth not enabled)."""
        who = self.credentials
        if who is None:
            return {}
        if endpoint not in self._tokens:
            answer = await client.post(f"{endpoint}/v3/auth/authenticate",
                                       json={"name": who.login, "password": who.password})
            body = answer.json()
            if answer.is_success:
                self._tokens[endpoint] = str(body["token"])
            elif AUTH_NOT_ENABLED in str(body.get("message")):
                self._tokens[endpoint] = None
            else:
                raise EtcdError(f"etcd user {who.login!r} cannot log in at {endpoint}: {body.get('message')}")
        token = self._tokens[endpoint]
        return {"Authorization": token} if token else {}

    async def areport(self) -> EtcdReport:
        """``report()`` without blocking the event loop (for triggers in the triggerer)."""
        report = EtcdReport()
        async with httpx.AsyncClient(timeout=self.timeout, **async_client_options(self.tls)) as client:
            for endpoint in self.endpoints:
                try:
                    health = await client.get(f"{endpoint}/health")
                    headers = await self._atoken(client, endpoint)
                    status = await client.post(f"{endpoint}/v3/maintenance/status", json={}, headers=headers)
                    members = await client.post(f"{endpoint}/v3/cluster/member/list", json={}, headers=headers)
                    status.raise_for_status()
                    members.raise_for_status()
                    record_endpoint(report, endpoint, health.is_success and _health_json(health.json()),
                                    status.json(), members.json().get("members", []))
                except (httpx.HTTPError, ValueError) as exc:
                    report.errors[endpoint] = f"{type(exc).__name__}: {exc}"
        return report

    def keep_leader_off_patroni_leader(self, cluster: PatroniCluster, timeout: float = 20) -> str | None:
        """
        Moves etcd's leadership off the Patroni leader's host; returns what changed, or None.

        etcd renews every lease to its full TTL when its own leader changes, so a
        host that leads both etcd and Patroni costs ttl + an etcd election when it
        crashes (measured on the lab: 24 s with ttl 20) instead of ttl.
        """
        patroni_leader = cluster.leaders[0] if len(cluster.leaders) == 1 else None
        etcd_leader = self.report().leader_name
        target = etcd_leader_target(cluster)
        if patroni_leader is None or etcd_leader != patroni_leader or target is None:
            return None
        self.move_leader(target)
        deadline = time.monotonic() + timeout
        while self.report().leader_name != target:  # an etcd leader transfer completes within one election
            if time.monotonic() > deadline:
                raise AirflowException(f"etcd leadership did not move {etcd_leader} -> {target} within {timeout}s")
            time.sleep(0.5)
        return f"etcd leader moved {etcd_leader} -> {target} (off the Patroni leader {patroni_leader})"

    # ------------------------------------------------------------ RBAC (users, roles, auth enable)

    def first_endpoint(self) -> str:
        """The first endpoint whose /health answers (RBAC changes go through raft: any member will do)."""
        errors = []
        for endpoint in self.endpoints:
            try:
                if self.health(endpoint):
                    return endpoint
                errors.append(f"{endpoint}: not healthy")
            except (requests.RequestException, ValueError) as exc:
                errors.append(f"{endpoint}: {type(exc).__name__}: {exc}")
        raise AirflowException(f"no healthy etcd endpoint: {'; '.join(errors)}")

    def auth_enabled(self, endpoint: str) -> bool:
        """Whether etcd's auth is on: an unauthenticated user list is answered only while it is off."""
        try:
            self._request(endpoint, "/v3/auth/user/list", {}, None)
        except EtcdError as exc:
            if NO_USER in str(exc):
                return True
            raise
        return False

    def apply_rbac(self, rbac: EtcdRbac) -> list[str]:
        """
        Makes etcd's users, roles and grants what ``rbac`` says, then enables auth; returns what
        changed ([] when etcd already was so). Root's password must be right once auth is on (it is
        the only way in); the other users' passwords are checked by logging in and set when wrong.
        Extra grants and roles of pgha's roles and users are taken away; other users are left alone.
        """
        endpoint = self.first_endpoint()
        enabled = self.auth_enabled(endpoint)
        token = self.authenticate(endpoint, rbac.root) if enabled else None
        if enabled and token is None:
            raise AirflowException("etcd's auth went off while pgha checked it: clear this task")
        call = lambda path, body: self._request(endpoint, path, body, token)  # noqa: E731
        changes: list[str] = []
        changes += self._ensure_user(call, endpoint, rbac.root, "root", enabled)
        for role, perms in rbac.roles.items():
            changes += self._ensure_role(call, role, perms)
        for user in rbac.users:
            changes += self._ensure_user(call, endpoint, user.credentials, user.role, enabled)
        if not enabled:
            call("/v3/auth/enable", {})
            changes.append("auth enabled: every etcd request now needs a user (a certificate alone grants nothing)")
        return changes

    def _ensure_user(self, call: Any, endpoint: str, who: Credentials, role: str, enabled: bool) -> list[str]:
        changes = []
        try:
            roles = call("/v3/auth/user/get", {"name": who.login}).get("roles") or []
        except EtcdError as exc:
            if USER_NOT_FOUND not in str(exc):
                raise
            call("/v3/auth/user/add", {"name": who.login, "password": who.password})
            changes.append(f"user {who.login} added")
            roles = []
        else:
            if not enabled or not self._password_works(endpoint, who):
                call("/v3/auth/user/changepw", {"name": who.login, "password": who.password})
                changes.append(f"user {who.login}: password set from its Connection")
        for extra in sorted(set(roles) - {role}):
            call("/v3/auth/user/revoke", {"name": who.login, "role": extra})
            changes.append(f"user {who.login}: role {extra} revoked (pgha grants only {role})")
        if role not in roles:
            call("/v3/auth/user/grant", {"user": who.login, "role": role})
            changes.append(f"user {who.login}: role {role} granted")
        return changes

    def _password_works(self, endpoint: str, who: Credentials) -> bool:
        try:
            return self.authenticate(endpoint, who) is not None
        except EtcdError:
            return False

    def _ensure_role(self, call: Any, role: str, wanted: tuple[Permission, ...]) -> list[str]:
        changes = []
        try:
            answer = call("/v3/auth/role/get", {"role": role})
        except EtcdError as exc:
            if ROLE_NOT_FOUND not in str(exc):
                raise
            call("/v3/auth/role/add", {"name": role})
            changes.append(f"role {role} added")
            answer = {}
        have = {Permission(str(p.get("permType") or "READ"), _unb64(p.get("key")), _unb64(p.get("range_end")))
                for p in answer.get("perm") or []}
        for perm in sorted(have - set(wanted), key=repr):
            call("/v3/auth/role/revoke", {"role": role, "key": _b64(perm.key), "range_end": _b64(perm.range_end)})
            changes.append(f"role {role}: {perm.describe()}revoked (not pgha's grant)")
        for perm in wanted:
            if perm not in have:
                call("/v3/auth/role/grant", {"name": role, "perm": {
                    "permType": perm.perm_type, "key": _b64(perm.key), "range_end": _b64(perm.range_end)}})
                changes.append(f"role {role}: {perm.describe()}granted")
        return changes
