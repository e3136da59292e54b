"""The cluster's HTTPS APIs (Patroni's REST API, etcd's JSON gateway) as the lab's tests and benchmarks reach them.

TLS is on in the lab as it is by default: a client trusts only the lab's cluster CA (the lab secret
``cluster_ca``, connection pgha_ca) and shows a client certificate that CA issued, as pgha's own
clients do (etcd asks every client for one; Patroni's write endpoints too).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .record import load_secrets
from .topology import ETCD_CLIENT_PORT, PATRONI_REST_PORT


@functools.lru_cache(maxsize=4)
def _tls_files(ca_json: str) -> dict[str, Any]:
    from pgha import tls

    ca = json.loads(ca_json)
    files = tls.ClientTLS.for_ca(tls.ca_from_connection({"certificate": ca["certificate"]}, ca["key"], "cluster_ca"),
                                 "pgha-lab-client").files()
    return {"verify": files.ca, "cert": (files.cert, files.key)}


def _tls() -> dict[str, Any]:
    """Per request, not on a Session: requests lets REQUESTS_CA_BUNDLE override a Session's ``verify``.
    Read each time: restoring a snapshot may bring other secrets (and so another CA) into the lab."""
    return _tls_files(load_secrets()["cluster_ca"])


def patroni(address: str, path: str, timeout: float = 5) -> Any:
    """GET ``path`` from the Patroni REST API on ``address``; the response (``.json()``, ``.status_code``)."""
    import requests

    return requests.get(f"https://{address}:{PATRONI_REST_PORT}{path}", timeout=timeout, **_tls())


ETCD_USER = "pgha"  # pgha's own etcd user (lab secret etcd_pgha_password, connection pgha_etcd_pgha): reads only
_etcd_tokens: dict[str, str] = {}  # address -> token; etcd's simple tokens hold on the member that issued them


def _etcd_token(address: str, fresh: bool = False) -> str | None:
    """A token of pgha's etcd user from the member at ``address``; None while etcd's auth is not enabled."""
    import requests

    if fresh or address not in _etcd_tokens:
        login = {"name": ETCD_USER, "password": load_secrets()["etcd_pgha_password"]}
        answer = requests.post(f"https://{address}:{ETCD_CLIENT_PORT}/v3/auth/authenticate", json=login,
                               timeout=5, **_tls())
        if not answer.ok:
            return None  # auth not enabled (yet): requests go without a token
        _etcd_tokens[address] = answer.json()["token"]
    return _etcd_tokens[address]


def etcd(address: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    """POST ``body`` to etcd's v3 gateway (``path`` such as /v3/cluster/member/list), or GET it without a body.
    A POST authenticates as pgha's etcd user (etcd RBAC is on in the lab, as by default: that user reads
    Patroni's keys only); a token the member no longer takes (it restarted, or auth changed) is renewed once."""
    import requests

    url = f"https://{address}:{ETCD_CLIENT_PORT}{path}"
    if body is None:
        return requests.get(url, timeout=timeout, **_tls())
    for fresh in (False, True):
        token = _etcd_token(address, fresh)
        answer = requests.post(url, json=body, timeout=timeout, headers={"Authorization": token} if token else {},
                               **_tls())
        if answer.ok or not any(why in answer.text for why in ("token", "revision of auth", "user name is empty")):
            return answer
    return answer
