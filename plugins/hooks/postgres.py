"""The Postgres provider's hook, pointed at a chosen cluster member.

Credentials come from the Airflow connection; host and port from the
inventory (the cluster's leader moves, the connection does not).
"""

from __future__ import annotations

from typing import Any

import attrs
from airflow.providers.postgres.hooks.postgres import PostgresHook
from pgha.inventory import INCLUDE_DIR
import psycopg2
from psycopg2 import sql

SQL_DIR = INCLUDE_DIR / "sql"


def load_sql(name: str) -> str:
    """The text of include/sql/<name>."""
    return (SQL_DIR / name).read_text()


class NodePostgresHook(PostgresHook):
    """
    PostgresHook with host/port/database overridden.

    :param postgres_conn_id: connection holding login and password.
    :param host: address to connect to (default: the connection's).
    :param port: port (default: the connection's).
    :param database: database (default: the connection's schema).
    """

    def __init__(
        self, postgres_conn_id: str, host: str | None = None, port: int | None = None, database: str | None = None
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, database=database)
        self.override_host = host
        self.override_port = port

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        """Always psycopg2: the provider picks psycopg 3 when it is installed, and the
        operators rely on psycopg2's API (set_session, encrypt_password, client-side binding)."""
        return psycopg2.connect(**conn_args)

    @property
    def connection(self) -> Any:
        if self._connection is None:
            base = self.get_connection(self.postgres_conn_id)
            self._connection = attrs.evolve(
                base,
                host=self.override_host or base.host,
                port=self.override_port or base.port,
                extra=base.extra or '{"connect_timeout": 10}',
            )
        return self._connection

    @connection.setter
    def connection(self, value: Any) -> None:
        self._connection = value

    def scalar(self, query: str | sql.Composable, parameters: Any = None) -> Any:
        """First column of the first row, without logging the parameters."""
        rows = self.rows(query, parameters)
        return rows[0][0] if rows else None

    def rows(self, query: str | sql.Composable, parameters: Any = None) -> list[tuple[Any, ...]]:
        """All rows of one read-only query (its own connection, closed afterwards)."""
        conn = self.get_conn()
        try:
            with conn.cursor() as cur:
                cur.execute(query, parameters)
                return list(cur.fetchall())
        finally:
            conn.close()

    def execute_autocommit(self, *statements: str | sql.Composable, parameters: Any = None) -> None:
        """Run statements outside a transaction (CREATE DATABASE needs that); parameters are not logged."""
        conn = self.get_conn()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, parameters)
        finally:
            conn.close()

    def server_major(self) -> int:
        return int(self.scalar("SHOW server_version_num")) // 10000
