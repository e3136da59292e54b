"""NodePostgresHook against a real PostgreSQL: psycopg2 always, host/port from the inventory."""

from __future__ import annotations

import dataclasses

import psycopg2
import pytest

from fixture_secrets import POSTGRES_PASSWORD
from pgha.hooks.postgres import NodePostgresHook
from pgha import pgdata
from pgha_testing import set_connection
from services import PostgresService, free_port


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


def test_tables_whose_dotted_names_read_alike_are_two_tables(postgres: PostgresService,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """"a.b".c and a."b.c" are both a.b.c as plain schema.name: keyed that way, one table's fingerprint would
    hide the other's. With a part quoted unless it is lowercase letters, digits and underscores they stay two,
    and a change in either is seen."""
    set_connection(monkeypatch, "pg_test", conn_type="postgres", host=postgres.host, port=postgres.port,
                   login="postgres", password=POSTGRES_PASSWORD, schema="postgres")
    hook = NodePostgresHook("pg_test")
    hook.execute_autocommit('DROP SCHEMA IF EXISTS "a.b" CASCADE', "DROP SCHEMA IF EXISTS a CASCADE",
                            'CREATE SCHEMA "a.b"', "CREATE SCHEMA a", 'CREATE TABLE "a.b".c (id int)',
                            'CREATE TABLE a."b.c" (id int)', 'INSERT INTO "a.b".c VALUES (1)',
                            'CREATE TABLE a."select" (id int)', 'CREATE TABLE a."Big" (id int)')
    try:
        with pgdata.session(hook.endpoint()) as conn:
            before = pgdata.fingerprints(conn)
        assert before['"a.b".c'][0] == 1 and before['a."b.c"'][0] == 0
        # a keyword is not quoted in the key: the keywords differ between majors, the key must not
        assert {"a.select", 'a."Big"'} <= set(before)
        hook.execute_autocommit('INSERT INTO a."b.c" VALUES (1)')
        with pgdata.session(hook.endpoint()) as conn:
            after = pgdata.fingerprints(conn)
        assert pgdata.compare_fingerprints(before, after) == ['a."b.c": source 0 rows vs cluster 1 rows, checksums differ']
    finally:
        hook.execute_autocommit('DROP SCHEMA "a.b" CASCADE', "DROP SCHEMA a CASCADE")


def test_takes_writes_on_a_primary_and_not_where_nothing_answers(postgres: PostgresService,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A primary takes writes; an address where no server listens does not (no exception)."""
    set_connection(monkeypatch, "pg_test", conn_type="postgres", host=postgres.host, port=postgres.port,
                   login="postgres", password=POSTGRES_PASSWORD, schema="postgres")
    endpoint = NodePostgresHook("pg_test").endpoint()
    assert pgdata.takes_writes(endpoint)
    assert not pgdata.takes_writes(dataclasses.replace(endpoint, port=free_port()))
