"""Two loopback PostgreSQL instances as the migration's source and cluster, with an Airflow-like database.

``source`` and ``cluster`` (pytest fixtures, conftest loads this module as a plugin): one real instance
each per test module that asks for it (superuser ``postgres`` / POSTGRES_PASSWORD), stopped after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from fixture_secrets import AIRFLOW_DB_PASSWORD, POSTGRES_PASSWORD
from services import (
    PG_BIN_DIR,
    PostgresService,
    _pg_ready,
    spawn,
    start_postgres,
    stop_postmaster,
    wait_until,
)

from pgha import pgdata
from pgha.pgdata import Endpoint

DATABASE = "airflow_db"
OWNER = "airflow_user"
BIN_DIR = str(PG_BIN_DIR)


def superuser(svc: PostgresService, dbname: str = "postgres") -> Endpoint:
    return Endpoint(host=svc.host, port=svc.port, user=svc.user, dbname=dbname, password=svc.password)


def owner(svc: PostgresService, dbname: str = DATABASE) -> Endpoint:
    return Endpoint(host=svc.host, port=svc.port, user=OWNER, dbname=dbname, password=AIRFLOW_DB_PASSWORD)


def sql(endpoint: Endpoint, *statements: str, params: tuple | None = None) -> list[tuple]:
    """Run fixed test statements (each with ``params``); the rows of the last one."""
    conn = psycopg2.connect(host=endpoint.host, port=endpoint.port, user=endpoint.user, password=endpoint.password,
                            dbname=endpoint.dbname)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            result: list[tuple] = []
            for statement in statements:
                cur.execute(statement, params)
                result = cur.fetchall() if cur.description else []
            return result
    finally:
        conn.close()


def ensure_owner(svc: PostgresService) -> None:
    with pgdata.session(superuser(svc)) as conn:
        pgdata.ensure_login_role(conn, OWNER, AIRFLOW_DB_PASSWORD)


def fill_source(svc: PostgresService) -> None:
    """An airflow_db owned by airflow_user, with a few tables of Airflow-like rows."""
    ensure_owner(svc)
    with pgdata.session(superuser(svc)) as conn:
        pgdata.recreate_database(conn, DATABASE, OWNER)
    sql(owner(svc),
        "CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text NOT NULL, run_id text NOT NULL, "
        "start_date timestamptz DEFAULT now(), conf jsonb, duration double precision)",
        "INSERT INTO dag_run (dag_id, run_id, conf, duration) SELECT 'dag_' || (g % 7), 'run_' || g, "
        "jsonb_build_object('n', g), g / 3.0 FROM generate_series(1, 500) g",
        "CREATE TABLE log (id bigserial PRIMARY KEY, event text, dttm timestamptz DEFAULT now())",
        "INSERT INTO log (event) SELECT 'event ' || g FROM generate_series(1, 50) g")


def write_pgpass(path: Path, *endpoints: Endpoint) -> str:
    path.write_text(pgdata.pgpass(*endpoints))
    os.chmod(path, 0o600)
    return str(path)


def restart_with(svc: PostgresService, **settings: str) -> None:
    """ALTER SYSTEM the settings and restart the instance on the same port (wal_level needs a restart)."""
    for name, value in settings.items():
        with pgdata.session(superuser(svc)) as conn:
            pgdata.execute(conn, pgdata.statement("alter_system.sql", name=pgdata.ident(name), value=pgdata.lit(value)))
    stop_postmaster(svc.data_dir, svc.postmaster_pid())
    if svc.proc is not None:
        svc.proc.wait(timeout=30)
    svc.proc = spawn([str(svc.bin_dir / "postgres"), "-D", str(svc.data_dir)], svc.log_file, as_postgres=True,
                     env=svc.env, cwd=svc.base_dir)
    svc.pid = svc.proc.pid
    wait_until(lambda: _pg_ready(svc.host, svc.port), 30, f"postgres on port {svc.port} after restart")


def add_bulk(svc: PostgresService, rows: int) -> None:
    """A table big enough that its copy is still running a moment after it started."""
    sql(owner(svc), "CREATE TABLE IF NOT EXISTS bulk (id int PRIMARY KEY, payload text)", "TRUNCATE bulk")
    sql(owner(svc), "INSERT INTO bulk SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, %s) g",
        params=(rows,))


def _instance(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp(name), password=POSTGRES_PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """The migration's source: a real loopback PostgreSQL for the test module."""
    yield from _instance(tmp_path_factory, "source")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """The cluster (as reached through HAProxy): a real loopback PostgreSQL for the test module."""
    yield from _instance(tmp_path_factory, "cluster")
