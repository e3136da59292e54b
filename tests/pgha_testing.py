"""Helpers for pgha tests: Airflow connections from env vars, loopback inventories."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml
from services import SshdService

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.0 keeps it in airflow.models (README "Supported Airflow releases")
    from airflow.models import dagbag as _models_dagbag

    DagBag = _models_dagbag.DagBag  # type: ignore[misc]

REPO_ROOT = Path(__file__).resolve().parent.parent


def _airflow_release() -> tuple[int, int]:
    from airflow import __version__

    return tuple(int(part) for part in __version__.split(".")[:2])  # type: ignore[return-value]


AIRFLOW_RELEASE = _airflow_release()  # (major, minor) of the Airflow the tests run on


def conn_env_name(conn_id: str) -> str:
    return "AIRFLOW_CONN_" + conn_id.upper()


def set_connection(monkeypatch: Any, conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection for this test (the env-var secrets backend)."""
    monkeypatch.setenv(conn_env_name(conn_id), json.dumps(fields))


def ssh_connection(sshd: SshdService, **extra: Any) -> dict[str, Any]:
    """Connection fields reaching the test sshd with a verified host key."""
    return {
        "conn_type": "ssh",
        "host": sshd.host,
        "port": sshd.port,
        "login": sshd.username,
        "extra": {"key_file": str(sshd.key_file), "host_key": sshd.host_key, **extra},
    }


def shipped_inventory() -> dict[str, Any]:
    """The shipped include/inventory.yml as a dict (a valid starting point to break)."""
    return yaml.safe_load((REPO_ROOT / "include" / "inventory.yml").read_text())


def loopback_inventory(nodes: list[tuple[str, str]], lb_host: str = "lb", **sections: Any) -> dict[str, Any]:
    """A valid inventory whose database nodes are (name, address) pairs on loopback."""
    raw = {
        "cluster": {"name": "pgha-test", "namespace": "/pgha-test/", "network": "127.0.0.0/8"},
        "hosts": [{"name": lb_host, "address": "127.0.0.1", "ssh_conn_id": "ssh_lb"}]
        + [{"name": n, "address": a, "ssh_conn_id": f"ssh_{n.replace('-', '_')}"} for n, a in nodes],
        "database_nodes": [n for n, _ in nodes],
        "source": {"host": lb_host, "major": 15},
        "haproxy": {"host": lb_host},
        "airflow": {"hosts": [{"host": lb_host, "config": "/tmp/airflow.cfg", "units": ["airflow-scheduler"]}]},
        # The loopback etcd/Patroni/PostgreSQL of tests/services.py speak plain text; a test of TLS turns it on
        # (`tls={"enabled": True}`). Everywhere else TLS is on unless the inventory says otherwise.
        "tls": {"enabled": False},
    }
    for key, value in sections.items():
        merged = copy.deepcopy(raw.get(key, {}))
        merged.update(value)
        raw[key] = merged
    return raw


def write_inventory(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def env_has(conn_id: str) -> bool:
    return conn_env_name(conn_id) in os.environ


def write_tls_dir(directory: Path, ca: Any, *, common_name: str = "node", dns_names: list[str] = (),  # type: ignore[assignment]
                  ip_addresses: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A directory laid out as pgha.tls.TLS_DIR is on a node: ca.crt, and a certificate of ``ca`` with
    these names as postgres.crt/.key, etcd.crt/.key and HAProxy's haproxy.pem (both in one; keys 0600).
    Returns the directory."""
    from pgha import tls

    directory.mkdir(parents=True, exist_ok=True)
    node = tls.issue(ca, common_name, dns_names=dns_names, ip_addresses=ip_addresses)
    (directory / "ca.crt").write_text(ca.cert_pem)
    for files in (tls.service_files("postgres", str(directory)), tls.service_files("etcd", str(directory)),
                  tls.haproxy_files(str(directory))):
        if files.combined:
            Path(files.cert).write_text(node.cert_pem + node.key_pem)
        else:
            Path(files.cert).write_text(node.cert_pem)
            Path(files.key).write_text(node.key_pem)
        Path(files.key).chmod(0o600)
    return directory
