"""PostgreSQL: source checks, installation (phase 2), database and data (phase 6), validation."""

from __future__ import annotations

import re
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowException
from hooks.patroni import PatroniHook
from hooks.postgres import NodePostgresHook, load_sql
from pgha.runtime import credentials
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from operators.base import HostOperator, PghaOperator

LIVE_MARK = "pgha: live"
RESTORED_MARK = "pgha: restored"


def major_of(version_output: str) -> int:
    """The major version in ``postgres --version`` output."""
    match = re.search(r"\(PostgreSQL\) (\d+)", version_output)
    if not match:
        raise ValueError(f"cannot read a PostgreSQL version from {version_output!r}")
    return int(match.group(1))


def fingerprints(hook: NodePostgresHook, conn: Any = None) -> dict[str, tuple[int, str]]:
    """Row count and content checksum of every user table (on ``conn`` if given: same snapshot)."""
    own = conn is None
    conn = conn or hook.get_conn()
    try:
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'")
            cur.execute(load_sql("list_tables.sql"))
            tables = cur.fetchall()
            result = {}
            for schema, table in tables:
                query = sql.SQL(load_sql("table_fingerprint.sql")).format(table=sql.Identifier(schema, table))
                cur.execute(query)
                count, digest = cur.fetchone()
                result[f"{schema}.{table}"] = (count, digest)
        return result
    finally:
        if own:
            conn.close()


def compare_fingerprints(source: dict[str, tuple[int, str]], target: dict[str, tuple[int, str]]) -> list[str]:
    """Tables whose row count or checksum differ, in words."""
    problems = []
    for table in sorted(set(source) | set(target)):
        if table not in target:
            problems.append(f"{table}: missing on the cluster")
        elif table not in source:
            problems.append(f"{table}: exists only on the cluster")
        elif source[table] != target[table]:
            problems.append(f"{table}: source {source[table][0]} rows vs cluster {target[table][0]} rows, checksums differ")
    return problems


class SourcePreflightOperator(PghaOperator):
    """Checks the source database: reachable, the expected major, the database present; logs its size."""

    def run(self, context: Any) -> Any:
        inv = self.inventory
        hook = NodePostgresHook(inv.source.conn_id, database=inv.postgres.database)
        try:
            major = hook.server_major()
        except Exception as exc:
            raise AirflowException(
                f"source database {inv.postgres.database} on {inv.source.host} is not reachable with connection "
                f"{inv.source.conn_id!r}: {str(exc).strip()}"
            ) from exc
        if major != inv.source.major:
            raise AirflowException(
                f"version mismatch: source.major is {inv.source.major} in the inventory but the source server "
                f"runs PostgreSQL {major}"
            )
        size = hook.scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
        tables = len(hook.rows(load_sql("list_tables.sql")))
        self.log.info("source: PostgreSQL %d, %s, %d tables", major, size, tables)
        return {"major": major, "size": size, "tables": tables}


class InstallPostgresOperator(HostOperator):
    """
    Phase 2 on one node: the PostgreSQL server packages of ``postgres.major``,
    without a distribution-managed cluster (Patroni creates and runs it).

    :param host: database node (mapped).
    """

    def run(self, context: Any) -> Any:
        major = self.inventory.postgres.major
        family = self.os_family(self.host)
        remote = self.remote(self.host)
        remote.run(family.prepare_postgres(major))
        self.ensure_packages(self.host, family, family.packages_for("postgres", major))
        version = remote.run(f"{family.postgres_bin(major)}/postgres --version", check=False)
        if not version.ok or major_of(version.stdout) != major:
            raise AirflowException(
                f"[{self.host}] version mismatch: expected PostgreSQL {major}, got {version.stdout.strip() or version.stderr.strip()}"
            )
        disabled = remote.run(
            f"systemctl is-enabled --quiet {family.postgres_service} && "
            f"systemctl disable --now {family.postgres_service} && echo disabled || true"
        )
        self.note(f"distribution unit {family.postgres_service} disabled (Patroni runs PostgreSQL)", "disabled" in disabled.stdout)
        self._refuse_foreign_cluster(major)
        return {"version": version.stdout.strip()}

    def _refuse_foreign_cluster(self, major: int) -> None:
        """A data directory Patroni did not create is never overwritten."""
        data_dir = self.inventory.postgres.data_dir or self.os_family(self.host).postgres_data(major)
        check = self.remote(self.host).run(
            f"test -f {shlex.quote(data_dir)}/PG_VERSION && ! test -f /etc/patroni/patroni.yml && echo foreign || true",
            quiet=True,
        )
        if "foreign" in check.stdout:
            raise AirflowException(
                f"[{self.host}] {data_dir} already holds a PostgreSQL cluster that pgha did not create; "
                "move it away (pgha never deletes data) and clear this task"
            )


class CreateDatabaseOperator(PghaOperator):
    """
    Phase 6a on the leader: the application role (password from its Airflow
    connection, sent as a SCRAM verifier) and the database it owns.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        leader = self.leader_host()
        hook = NodePostgresHook(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                                database="postgres")
        app = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}")
        owner = inv.postgres.owner
        existed = bool(hook.scalar("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,)))
        conn = hook.get_conn()
        try:
            conn.autocommit = True
            verifier = encrypt_password(app.password, owner, conn, "scram-sha-256")
            with conn.cursor() as cur:
                cur.execute(load_sql("ensure_owner_role.sql"), {"owner": owner})
                cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(owner)), (verifier,))
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (inv.postgres.database,))
                db_exists = cur.fetchone() is not None
                if not db_exists:
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                            sql.Identifier(inv.postgres.database), sql.Identifier(owner)
                        )
                    )
        finally:
            conn.close()
        self.note(f"role {owner}", not existed)
        self.unchanged(f"password of {owner} set from connection {inv.postgres.app_conn_id}")
        self.note(f"database {inv.postgres.database}", not db_exists)
        return {"leader": leader.name}

    def leader_host(self) -> Any:
        name = PatroniHook(self.patroni_api_urls()).leader()
        if not name:
            raise AirflowException("the Patroni cluster has no single leader: run phase 5 first")
        return self.inventory.host(name)


class MigrateDataOperator(CreateDatabaseOperator):
    """
    Phase 6b: copies the source database into the cluster with pg_dump |
    pg_restore, run on the source host. The dump uses a snapshot exported by
    this task, so the row counts and checksums taken in the same snapshot are
    exactly what the cluster must hold afterwards; the task fails if not.
    Skips once the cluster database is live (Airflow cut over).
    """

    PGPASS = "/run/pgha/restore.pgpass"

    def run(self, context: Any) -> Any:
        inv = self.inventory
        leader = self.leader_host()
        target = NodePostgresHook(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                                  database="postgres")
        comment = target.scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (inv.postgres.database,)
        )
        if comment and comment.startswith(LIVE_MARK):
            self.unchanged(f"{inv.postgres.database} on the cluster is live ({comment}): not overwritten")
            return {"skipped": "live"}
        source = NodePostgresHook(inv.source.conn_id, database=inv.postgres.database)
        source_conn = source.get_conn()
        try:
            source_conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with source_conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot()")
                snapshot = cur.fetchone()[0]
            expected = fingerprints(source, source_conn)
            self._recreate_target(target)
            self._dump_restore(leader.address, snapshot)
        finally:
            source_conn.close()
        actual = fingerprints(NodePostgresHook(inv.postgres.superuser_conn_id, host=leader.address,
                                               port=inv.postgres.port, database=inv.postgres.database))
        problems = compare_fingerprints(expected, actual)
        if problems:
            raise AirflowException("the cluster does not match the source snapshot:\n  - " + "\n  - ".join(problems))
        target.execute_autocommit(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(inv.postgres.database), sql.Literal(f"{RESTORED_MARK} from {inv.source.host}")
            )
        )
        rows = sum(count for count, _ in actual.values())
        self.changed(f"copied {len(actual)} tables, {rows} rows; counts and checksums match the source snapshot")
        return {"tables": len(actual), "rows": rows, "leader": leader.name}

    def _recreate_target(self, target: NodePostgresHook) -> None:
        inv = self.inventory
        target.execute_autocommit(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(inv.postgres.database)),
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(inv.postgres.database), sql.Identifier(inv.postgres.owner)
            ),
        )

    def _dump_restore(self, leader_address: str, snapshot: str) -> None:
        inv = self.inventory
        superuser = credentials(inv.postgres.superuser_conn_id, "cluster superuser")
        remote = self.remote(inv.source.host)
        remote.add_secret(superuser.password)
        pgpass = f"{leader_address}:{inv.postgres.port}:*:{superuser.login}:{superuser.password}\n"
        remote.run("mkdir -p /run/pgha && chmod 0711 /run/pgha")
        remote.put_file(self.PGPASS, pgpass, owner="postgres", mode="0600", secret=True)
        family = self.os_family(inv.source.host)
        bin_dir = family.postgres_bin(inv.source.major)
        database = shlex.quote(inv.postgres.database)
        pipeline = (
            f"{bin_dir}/pg_dump -Fc --no-owner --no-privileges --snapshot={shlex.quote(snapshot)} -d {database} | "
            f"PGPASSFILE={self.PGPASS} {bin_dir}/pg_restore --exit-on-error --no-owner --no-privileges "
            f"--role={shlex.quote(inv.postgres.owner)} -h {shlex.quote(leader_address)} -p {inv.postgres.port} "
            f"-U {shlex.quote(superuser.login)} -d {database}"
        )
        try:
            remote.run(f"runuser -u postgres -- bash -o pipefail -c {shlex.quote(pipeline)}", timeout=6 * 3600)
        finally:
            remote.run(f"rm -f {self.PGPASS}")
