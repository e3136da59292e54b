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


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    import requests
    from pgha import tls

    ca = json.loads(load_secrets()["cluster_ca"])
    files = tls.ClientTLS.for_ca(tls.ca_from_connection({"certificate": ca["certificate"]}, ca["key"], "cluster_ca"),
                                 "pgha-lab-client").files()
    session = requests.Session()
    session.verify, session.cert = files.ca, (files.cert, files.key)
    return session


def patroni(address: str, path: str, timeout: float = 5) -> Any:
    """GET ``path`` from the Patroni REST API on ``address``; the response (``.json()``, ``.status_code``)."""
    return _session().get(f"https://{address}:{PATRONI_REST_PORT}{path}", timeout=timeout)


def etcd(address: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    """POST ``body`` to etcd's v3 gateway (``path`` such as /v3/cluster/member/list), or GET it without a body."""
    url = f"https://{address}:{ETCD_CLIENT_PORT}{path}"
    return _session().get(url, timeout=timeout) if body is None else _session().post(url, json=body, timeout=timeout)
