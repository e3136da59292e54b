"""Render include/templates with a context built from the inventory.

Templates never hold secrets; credentials are passed in at render time from
Airflow Connections and the result is installed 0600. A template writes a
secret only through its format's filter (``yaml_quote``: pgha.secret_formats).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

import jinja2

from pgha.inventory import INCLUDE_DIR, Host, Inventory, Packages
from pgha.osfamily import OsFamily
from pgha.secret_formats import hba_word, yaml_quote
from pgha.tls import TLS_DIR, haproxy_files, service_files

TEMPLATE_DIR = INCLUDE_DIR / "templates"
SOCKET_DIR = "/var/run/postgresql"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_env.filters["yaml_quote"] = yaml_quote
_env.filters["hba_word"] = hba_word


def render(template: str, **context: Any) -> str:
    """Render ``include/templates/<template>`` (StrictUndefined: a missing value is an error)."""
    return _env.get_template(template).render(**context)


def base_context(inventory: Inventory) -> dict[str, Any]:
    """Values every template may use."""
    return {
        "cluster": asdict(inventory.cluster),
        "hosts": [asdict(h) for h in inventory.hosts],
        "members": [asdict(h) for h in inventory.db_hosts],
        "etcd": asdict(inventory.etcd),
        "patroni": asdict(inventory.patroni),
        "postgres": asdict(inventory.postgres),
        "haproxy": asdict(inventory.haproxy),
        "packages": asdict(inventory.packages),
        "tls": tls_context(inventory),
        "patroni_key_prefix": inventory.patroni_key_prefix,
    }


def tls_context(inventory: Inventory, directory: str = TLS_DIR) -> dict[str, Any]:
    """Whether the links use TLS, and where the CA and each service's certificate and key lie on a host."""
    postgres, etcd = service_files("postgres", directory), service_files("etcd", directory)
    return {
        "enabled": inventory.tls.enabled,
        "scheme": "https" if inventory.tls.enabled else "http",
        "ca": f"{directory}/ca.crt",
        "postgres_cert": postgres.cert, "postgres_key": postgres.key,
        "etcd_cert": etcd.cert, "etcd_key": etcd.key,
        "haproxy_cert": haproxy_files(directory).cert,
    }


def plain_http_hosts(packages: Packages) -> list[str]:
    """Hosts of the pip index/find-links served over plain http (pip must be told to trust them)."""
    urls = [packages.pip_index_url, packages.pip_find_links]
    return sorted({urlsplit(u).hostname for u in urls if u and u.startswith("http://") and urlsplit(u).hostname})


def patroni_bin(inventory: Inventory) -> str:
    install = inventory.patroni.install
    return f"{install.venv}/bin/patroni" if install.method == "pip" else "/usr/bin/patroni"


def superuser_sources(inventory: Inventory) -> list[str]:
    """Addresses the cluster superuser may log in from: the hosts pgha manages (the database nodes, and the
    HAProxy, source and Airflow hosts its tasks and the cutover agent connect from), never the whole network."""
    return [inventory.host(name).address for name in inventory.managed_host_names]


def node_context(inventory: Inventory, node: Host, family: OsFamily) -> dict[str, Any]:
    """The context for one database node."""
    major = inventory.postgres.major
    return {
        **base_context(inventory),
        "node": asdict(node),
        "os": asdict(family),
        "data_dir": inventory.postgres.data_dir or family.postgres_data(major),
        "bin_dir": family.postgres_bin(major),
        "pgpass": "/var/lib/pgsql/.pgpass_patroni" if family.name == "rhel" else "/var/lib/postgresql/.pgpass_patroni",
        "socket_dir": SOCKET_DIR,
        "patroni_bin": patroni_bin(inventory),
        "etcd_binary": family.etcd_bin(inventory.etcd.install.method),
        "postgres_parameters": inventory.postgres.cluster_parameters,
        "superuser_sources": superuser_sources(inventory),
    }


def haproxy_context(inventory: Inventory) -> dict[str, Any]:
    return {
        **base_context(inventory),
        "haproxy_address": inventory.host(inventory.haproxy.host).address,
        "state_file": inventory.haproxy.state_file,
    }
