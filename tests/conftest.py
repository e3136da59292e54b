"""Shared pytest setup for pgha: import paths, Airflow test env, real loopback services.

The service fixtures are lazy: nothing starts unless a test asks for the fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent

# pgha itself is installed into the test virtualenv (pip install -e .), as a
# deployment installs it; only the test helpers and the DAG files go on sys.path.
for _path in (TESTS_DIR, REPO_ROOT / "dags"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Must happen before anything imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="pgha-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = os.path.join(_AIRFLOW_HOME, "plugins")

import pytest  # noqa: E402

# The cluster CA every test run trusts (connection pgha_ca, tls.ca_conn_id's default): TLS is on by default,
# so the tasks' clients and IssueCertificatesOperator read it. Made per run; its key never leaves this process.
from fixture_secrets import TEST_CA  # noqa: E402
from pgha import tls as _tls  # noqa: E402

os.environ["AIRFLOW_CONN_PGHA_CA"] = json.dumps(_tls.connection_json(TEST_CA))  # this process's own (xdist workers too)

# recording_host: the `fleet` fixture (fake hosts for fast operator tests); pg_pair: the `source` and
# `cluster` fixtures (real loopback PostgreSQL instances, one each per test module)
pytest_plugins = ["recording_host", "pg_pair"]
from fixture_secrets import (  # noqa: E402
    PATRONI_REPLICATION_PASSWORD,
    PATRONI_REST_PASSWORD,
    PATRONI_REST_USER,
    PATRONI_SUPERUSER_PASSWORD,
    POSTGRES_PASSWORD,
)
from services import (  # noqa: E402
    EtcdCluster,
    HAProxyService,
    PatroniService,
    PostgresService,
    SshdService,
    start_etcd_cluster,
    start_haproxy,
    start_patroni,
    start_postgres,
    start_sshd,
)


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM into KeyboardInterrupt so fixture teardown still stops the services."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the throw-away AIRFLOW_HOME."""
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def inventory_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests write inventories under pytest's temporary directory and read lab/inventory.yml:
    allow those as a deployment allows its own (pgha.inventory refuses any other directory)."""
    saved = os.environ.get("PGHA_INVENTORY_DIR")
    os.environ["PGHA_INVENTORY_DIR"] = os.pathsep.join(
        [str(tmp_path_factory.getbasetemp()), str(REPO_ROOT / "lab"), "/etc/pgha"])
    yield
    if saved is None:
        os.environ.pop("PGHA_INVENTORY_DIR", None)
    else:
        os.environ["PGHA_INVENTORY_DIR"] = saved


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdService]:
    """Real sshd on 127.0.0.1 accepting ``key_file`` for root; verify with ``host_key``."""
    svc = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Real 3-member etcd 3.4 cluster on loopback."""
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("etcd"), size=3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """Real standalone PostgreSQL 15 (superuser ``postgres`` / POSTGRES_PASSWORD, scram)."""
    svc = start_postgres(tmp_path_factory.mktemp("postgres"), password=POSTGRES_PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def patroni_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Dedicated 1-member etcd for the ``patroni`` fixture (kept apart from ``etcd_cluster``)."""
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("patroni-etcd"), size=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def patroni(tmp_path_factory: pytest.TempPathFactory,
            patroni_etcd: EtcdCluster) -> Iterator[PatroniService]:
    """Real single-node Patroni 4.1.5 cluster (leader) with REST basic auth."""
    svc = start_patroni(
        tmp_path_factory.mktemp("patroni"), patroni_etcd,
        rest_user=PATRONI_REST_USER, rest_password=PATRONI_REST_PASSWORD,
        superuser_password=PATRONI_SUPERUSER_PASSWORD,
        replication_password=PATRONI_REPLICATION_PASSWORD,
    )
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[Callable[[str | os.PathLike[str]], HAProxyService]]:
    """Start HAProxy from config text (``str``) or a config file path; all stopped at teardown."""
    started: list[HAProxyService] = []

    def factory(config: str | os.PathLike[str]) -> HAProxyService:
        if isinstance(config, str):
            path = tmp_path / f"haproxy-{len(started) + 1}.cfg"
            path.write_text(config)
        else:
            path = Path(config)
        svc = start_haproxy(path, tmp_path)
        started.append(svc)
        return svc

    try:
        yield factory
    finally:
        for svc in reversed(started):
            svc.stop()


