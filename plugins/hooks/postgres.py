"""The Postgres provider's hook, pointed at a chosen cluster member.

Credentials come from the Airflow connection; host and port from the
inventory (the cluster's leader moves, the connection does not). What the
operators do in PostgreSQL is ``pgha.pgdata`` (shared with the cutover agent);
this module is its Airflow side: connections, and the leader from Patroni.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import shlex

import attrs
import psycopg2
from airflow.providers.postgres.hooks.postgres import PostgresHook
from pgha.compat import AirflowException
from pgha import pgdata
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.remote import RemoteHook
from pgha.inventory import Host, Inventory
from pgha.pgdata import Endpoint, load_sql
from pgha.tls import ClientTLS, TlsFiles
from psycopg2 import sql

__all__ = ["NodePostgresHook", "RemoteDumpRestore", "leader_host", "load_sql", "node_endpoint", "peer_psql", "peer_sql"]

RUN_DIR = "/run/pgha"


def node_endpoint(conn_id: str, host: str | None = None, port: int | None = None,
                  database: str | None = None) -> Endpoint:
    """Login and password of an Airflow connection, at ``host``:``port`` (default: the connection's)."""
    return NodePostgresHook(conn_id, host=host, port=port, database=database).endpoint()


def peer_psql(remote: RemoteHook, port: int, database: str, text: str, *, log_as: str, check: bool = True) -> Any:
    """``text`` (SQL, quoted already) run by psql on ``remote``'s host as the postgres OS user (peer: no
    password, and the server's own superuser whatever the connections hold); the SQL goes over stdin, so
    no value reaches a command line. The command's result (rows as ``a|b`` lines in its stdout)."""
    return remote.run(f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p {int(port)} "
                      f"-d {shlex.quote(database)} -f -", stdin=text, log_as=log_as, check=check)


def peer_sql(remote: RemoteHook, source: Endpoint, file: str, database: str, /, check: bool = True,
             **parts: sql.Composable) -> Any:
    """include/sql/<file> (values quoted by psycopg2 through a session of ``source``) run by ``peer_psql`` on
    ``remote``'s host, at ``source``'s port: the source connection need not be a superuser."""
    with pgdata.session(source) as conn:
        text = pgdata.statement(file, **parts).as_string(conn)
    return peer_psql(remote, source.port, database, text, log_as=f"psql -d {database} -f {file}", check=check)


def leader_host(inventory: Inventory, api_urls: list[str], tls: ClientTLS | None = None) -> Host:
    """The inventory host Patroni names as the cluster's single leader."""
    name = PatroniHook(api_urls, tls=tls).leader()
    if not name:
        raise AirflowException("the Patroni cluster has no single leader: run phase 5 first")
    return inventory.host(name)


class NodePostgresHook(PostgresHook):
    """
    PostgresHook with host/port/database overridden.

    :param postgres_conn_id: connection holding login and password.
    :param host: address to connect to (default: the connection's).
    :param port: port (default: the connection's).
    :param database: database (default: the connection's schema).
    :param tls_files: this process's cluster CA, client certificate and key (``runtime.cluster_tls_files``):
        the server's certificate verified against the CA and its name against ``host`` (sslmode=verify-full),
        and the client certificate presented (the cluster superuser needs one from a host that is no member).
        Default: the connection's own settings.
    """

    def __init__(
        self, postgres_conn_id: str, host: str | None = None, port: int | None = None, database: str | None = None,
        tls_files: TlsFiles | None = None,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, database=database)
        self.override_host = host
        self.override_port = port
        self.tls_files = tls_files

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        """Always psycopg2: the provider picks psycopg 3 when it is installed, and the
        operators rely on psycopg2's API (set_session, encrypt_password, client-side binding)."""
        return psycopg2.connect(**conn_args)

    @property
    def connection(self) -> Any:
        if self._connection is None:
            base = self.get_connection(self.postgres_conn_id)
            overrides = {"host": self.override_host or base.host, "port": self.override_port or base.port,
                         "extra": self._extra(base.extra)}
            if attrs.has(type(base)):  # the Task SDK's Connection
                self._connection = attrs.evolve(base, **overrides)
            else:  # Airflow 3.0's provider hook returns airflow.models.Connection, an ORM model
                self._connection = type(base)(conn_id=base.conn_id, conn_type=base.conn_type, schema=base.schema,
                                              login=base.login, password=base.password, **overrides)
        return self._connection

    def _extra(self, extra: str | None) -> str:
        """The connection's extra (libpq keywords), with ``tls_files``' settings when given."""
        ssl = self.ssl_options()
        if not ssl:
            return extra or '{"connect_timeout": 10}'
        return json.dumps({"connect_timeout": 10, **json.loads(extra or "{}"), **ssl})

    def ssl_options(self) -> dict[str, str]:
        files = self.tls_files
        if not files:
            return {}
        return {"sslmode": "verify-full", "sslrootcert": files.ca, "sslcert": files.cert, "sslkey": files.key}

    @connection.setter
    def connection(self, value: Any) -> None:
        self._connection = value

    def endpoint(self) -> Endpoint:
        """Host, port, login, password and database of this hook, for ``pgha.pgdata``."""
        conn = self.connection
        return Endpoint(host=conn.host or "127.0.0.1", port=int(conn.port or 5432), user=conn.login,
                        dbname=self.database or conn.schema or "postgres", password=conn.password,
                        **self.ssl_options())

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


class RemoteDumpRestore:
    """
    ``pg_dump | pg_restore`` (``pgha.pgdata.dump_restore_command``) run on a
    host over SSH as a killable command (``RemoteHook.run(killable=True)``), so
    ``stop`` (a killed task's ``on_kill``) leaves neither pg_dump nor
    pg_restore running. The passwords go into a 0600 pgpass file there, removed
    afterwards; it has one name, so a retry after a hard death overwrites it.

    :param remote: the host that runs the pipeline (the source host).
    :param source: the source database as that host reaches it.
    :param target: the cluster database as that host reaches it.
    :param progress_target: the same as this process reaches it (the progress polls run here); default ``target``.
    """

    PGPASS = f"{RUN_DIR}/copy.pgpass"
    CLIENT_CERT = f"{RUN_DIR}/copy-client.crt"  # pgha's client certificate and key, for the copy's duration:
    CLIENT_KEY = f"{RUN_DIR}/copy-client.key"  # the cluster superuser needs one from a host that is no member
    SECRET_FILES = (PGPASS, CLIENT_CERT, CLIENT_KEY)  # removed when the copy ends, whatever its outcome
    PROGRESS_INTERVAL = 15.0  # seconds between progress lines while the pipeline runs

    def __init__(self, remote: RemoteHook, source: Endpoint, target: Endpoint, *, bin_dir: str, owner: str,
                 progress_target: Endpoint | None = None) -> None:
        self.remote = remote
        self.source = source
        self.target = target
        self.progress_target = progress_target or target
        self.bin_dir = bin_dir
        self.owner = owner

    def run(self, snapshot: str | None = None, schema_only: bool = False, timeout: float = 6 * 3600) -> None:
        self.remote.add_secret(self.source.password, self.target.password)
        self.remote.run(f"install -d -m 0711 {RUN_DIR}")
        try:
            self.remote.put_file(self.PGPASS, pgdata.pgpass(self.source, self.target), mode="0600", secret=True)
            target = self._with_client_certificate(self.target)
            pipeline = pgdata.dump_restore_command(self.source, target, bin_dir=self.bin_dir, owner=self.owner,
                                                   passfile=self.PGPASS, snapshot=snapshot, schema_only=schema_only)
            if schema_only:
                self.remote.run(pipeline, killable=True, timeout=timeout)
            else:
                with pgdata.CopyProgress(self.progress_target, self.source_bytes(), self.log_progress, self.PROGRESS_INTERVAL):
                    self.remote.run(pipeline, killable=True, timeout=timeout)
        finally:
            for path in self.SECRET_FILES:
                self.remote.run(f"rm -f {shlex.quote(path)}")

    def _with_client_certificate(self, target: Endpoint) -> Endpoint:
        """``target`` with the client certificate this process presents (its local files), copied to the host
        (0600) for the copy; ``target`` itself when it presents none."""
        if not (target.sslcert and target.sslkey):
            return target
        with open(target.sslcert) as cert, open(target.sslkey) as key:
            cert_pem, key_pem = cert.read(), key.read()
        self.remote.add_secret(key_pem)
        self.remote.put_file(self.CLIENT_CERT, cert_pem, mode="0600")
        self.remote.put_file(self.CLIENT_KEY, key_pem, mode="0600", secret=True)
        return replace(target, sslcert=self.CLIENT_CERT, sslkey=self.CLIENT_KEY)

    def source_bytes(self) -> int:
        """The source database's size, what the copy's progress is measured against (0 if unknown)."""
        try:
            with pgdata.session(self.source) as conn:
                return pgdata.database_bytes(conn, self.source.dbname)
        except psycopg2.Error as exc:
            self.log_progress(f"source size unknown ({str(exc).strip()}): progress without an estimate")
            return 0

    def log_progress(self, line: str) -> None:
        self.remote.log.info("[%s] pg_dump | pg_restore: %s", self.remote.host_name, line)

    def stop(self) -> str:
        """Stop the pipeline's process group and remove the pgpass file (over a connection of its own)."""
        return "; ".join(self.remote.kill_running(remove=self.SECRET_FILES)) or "nothing was running"
