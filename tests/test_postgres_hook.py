"""NodePostgresHook against a real PostgreSQL: psycopg2 always, host/port from the inventory."""

from __future__ import annotations

import psycopg2
import pytest

from fixture_secrets import POSTGRES_PASSWORD
from pgha.hooks.postgres import NodePostgresHook
from pgha import pgdata
from pgha_testing import set_connection
from services import PostgresService


def test_overrides_host_and_port_and_uses_psycopg2(postgres: PostgresService, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pg_test", conn_type="postgres", host="elsewhere.invalid", port=1,
                   login="postgres", password=POSTGRES_PASSWORD, schema="postgres")
    hook = NodePostgresHook("pg_test", host=postgres.host, port=postgres.port)
    conn = hook.get_conn()
    try:
        assert isinstance(conn, psycopg2.extensions.connection)
    finally:
        conn.close()
    assert hook.server_major() == 15
    assert hook.scalar("SELECT %s::int + 1", (41,)) == 42


def test_fingerprints_detect_a_changed_row(postgres: PostgresService, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pg_test", conn_type="postgres", host=postgres.host, port=postgres.port,
                   login="postgres", password=POSTGRES_PASSWORD, schema="postgres")
    hook = NodePostgresHook("pg_test")
    hook.execute_autocommit("DROP TABLE IF EXISTS fp", "CREATE TABLE fp (id int primary key, t text)",
                            "INSERT INTO fp VALUES (1, 'a'), (2, 'b')")
    with pgdata.session(hook.endpoint()) as conn:
        before = pgdata.fingerprints(conn)
    assert before["public.fp"][0] == 2
    hook.execute_autocommit("UPDATE fp SET t = 'c' WHERE id = 2")
    with pgdata.session(hook.endpoint()) as conn:
        after = pgdata.fingerprints(conn)
    assert pgdata.compare_fingerprints(before, after) == ["public.fp: source 2 rows vs cluster 2 rows, checksums differ"]
    assert pgdata.compare_fingerprints(after, after) == []
