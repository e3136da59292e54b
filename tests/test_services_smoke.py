"""Smoke tests: each fixture starts a real, working service on loopback."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import psycopg2
import pytest
from services import (
    EtcdCluster,
    HAProxyService,
    PatroniService,
    PostgresService,
    SshdService,
    free_port,
    haproxy_command,
    haproxy_reload,
    http_request,
    pid_alive,
)


def _ssh_client(sshd: SshdService, host_key: str) -> paramiko.SSHClient:
    key_type, key_b64 = host_key.split()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(f"[{sshd.host}]:{sshd.port}", key_type,
                               paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64)))
    try:
        client.connect(sshd.host, port=sshd.port, username=sshd.username,
                       key_filename=str(sshd.key_file), look_for_keys=False, allow_agent=False,
                       timeout=10)
    except BaseException:
        client.close()
        raise
    return client


def test_sshd_runs_commands_with_verified_host_key(sshd: SshdService, tmp_path: Path) -> None:
    client = _ssh_client(sshd, sshd.host_key)
    try:
        _, stdout, _ = client.exec_command("id -un && echo pgha-ok")
        assert stdout.read().decode().split() == ["root", "pgha-ok"]
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()

    # a different ed25519 host key must be rejected
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                   check=True)
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh_client(sshd, other_key).close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_etcd_cluster_members_and_replication(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    expected = {m.name for m in etcd_cluster.members}
    for endpoint in etcd_cluster.endpoints:
        status, body = http_request(f"{endpoint}/v3/cluster/member/list", "POST", {})
        assert status == 200, body
        assert {m["name"] for m in body["members"]} == expected
        status, health = http_request(f"{endpoint}/health")
        assert status == 200 and health["health"] == "true"

    first, last = etcd_cluster.endpoints[0], etcd_cluster.endpoints[-1]
    status, _ = http_request(f"{first}/v3/kv/put", "POST",
                             {"key": _b64("/pgha-smoke/k"), "value": _b64("v1")})
    assert status == 200
    status, body = http_request(f"{last}/v3/kv/range", "POST", {"key": _b64("/pgha-smoke/k")})
    assert status == 200
    assert base64.b64decode(body["kvs"][0]["value"]).decode() == "v1"


def test_postgres_accepts_scram_password(postgres: PostgresService) -> None:
    with psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                          password=postgres.password, dbname="postgres",
                          connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("select current_user, current_setting('port')::int, "
                    "current_setting('password_encryption'), "
                    "(select rolpassword like 'SCRAM-SHA-256$%' from pg_authid "
                    " where rolname = current_user)")
        assert cur.fetchone() == ("postgres", postgres.port, "scram-sha-256", True)
    conn.close()
    assert postgres.postmaster_pid() == postgres.pid
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                         password="wrong", dbname="postgres", connect_timeout=5)


def test_patroni_single_leader_with_rest_auth(patroni: PatroniService) -> None:
    status, cluster = http_request(f"{patroni.rest_url}/cluster")
    assert status == 200, cluster
    assert cluster["scope"] == patroni.scope
    leaders = [m for m in cluster["members"] if m["role"] == "leader"]
    assert len(leaders) == 1 and leaders[0]["name"] == patroni.name
    assert leaders[0]["state"] == "running" and leaders[0]["port"] == patroni.pg_port

    # unsafe endpoints need the REST basic-auth credentials
    assert http_request(f"{patroni.rest_url}/reload", "POST")[0] == 401
    assert http_request(f"{patroni.rest_url}/reload", "POST",
                        auth=(patroni.rest_user, patroni.rest_password))[0] == 202

    with psycopg2.connect(patroni.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("select pg_is_in_recovery(), current_setting('wal_level')")
        assert cur.fetchone() == (False, "replica")
    conn.close()


@pytest.fixture
def tcp_banner_server() -> Iterator[int]:
    """A tiny real TCP server on loopback that answers every connection with a banner."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"pgha-backend\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


def _haproxy_config(admin_sock: Path, front_port: int, servers: dict[str, int]) -> str:
    lines = [
        "global",
        f"    stats socket {admin_sock} mode 600 level admin",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 10s",
        "    timeout server 10s",
        "listen pg",
        f"    bind 127.0.0.1:{front_port}",
        "    balance first",
    ]
    lines += [f"    server {name} 127.0.0.1:{port} check inter 500ms"
              for name, port in servers.items()]
    return "\n".join(lines) + "\n"


def test_haproxy_stats_proxying_and_reload(
    haproxy_factory: Callable[[str | os.PathLike[str]], HAProxyService],
    tcp_banner_server: int, tmp_path: Path,
) -> None:
    admin = tmp_path / "admin.sock"
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_haproxy_config(admin, front, {"up1": tcp_banner_server}))
    svc = haproxy_factory(cfg)

    stat = haproxy_command(admin, "show stat")
    assert stat.startswith("# pxname,svname,")
    rows = {tuple(line.split(",")[:2]) for line in stat.splitlines()[1:] if line}
    assert {("pg", "FRONTEND"), ("pg", "up1"), ("pg", "BACKEND")} <= rows

    with socket.create_connection(("127.0.0.1", front), timeout=5) as conn:
        assert conn.recv(64) == b"pgha-backend\n"

    old_workers = svc.worker_pids()
    cfg.write_text(_haproxy_config(admin, front, {"up1": tcp_banner_server, "down2": free_port()}))
    new_workers = haproxy_reload(svc)
    assert pid_alive(svc.pid)  # same master, new worker
    assert set(new_workers).isdisjoint(old_workers)
    assert ",down2," in haproxy_command(admin, "show stat")
