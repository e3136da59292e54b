"""PostgreSQL: source checks, installation (phase 2), database and data (phase 6), validation."""

from __future__ import annotations

import re
import shlex
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowSkipException
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.postgres import NodePostgresHook, load_sql
from pgha.runtime import credentials
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from pgha.operators.base import HostOperator, PghaOperator

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
        logical = [r[0] for r in hook.rows(load_sql("logical_readiness.sql"))]
        self.log.info("source: PostgreSQL %d, %s, %d tables", major, size, tables)
        self.log.info("logical replication readiness: %s", "; ".join(logical) or "ready")
        if method_of(context) == LOGICAL and any(p.startswith("table ") for p in logical):
            raise AirflowException("migration_method logical_replication is impossible: " + "; ".join(logical))
        return {"major": major, "size": size, "tables": tables, "logical_replication_needs": logical}


class InstallPostgresOperator(HostOperator):
    """
    Phase 2 on one node: the PostgreSQL server packages of ``postgres.major``,
    without a distribution-managed cluster (Patroni creates and runs it).
    Refuses, before changing anything, a node whose data directory holds a
    cluster pgha did not create.

    :param host: database node (mapped).
    """

    def run(self, context: Any) -> Any:
        major = self.inventory.postgres.major
        host = self.host_hook(self.host)
        family = host.family
        data_dir = self.inventory.postgres.data_dir or family.postgres_data(major)
        if host.exists(f"{data_dir}/PG_VERSION") and not host.exists("/etc/patroni/patroni.yml"):
            raise AirflowException(
                f"[{self.host}] {data_dir} already holds a PostgreSQL cluster that pgha did not create; "
                "move it away (pgha never deletes data) and clear this task"
            )
        for path, content in family.postgres_preconfig:
            self.note(path, host.put_file(path, content).changed)
        stream = family.postgres_stream(major)
        if stream:
            self.note(f"module stream {stream}", host.ensure_module_stream(stream))
        packages = family.packages_for("postgres", major)
        self.note(f"packages {' '.join(packages)}", host.ensure_packages(packages))
        version = host.version(f"{family.postgres_bin(major)}/postgres --version", check=False)
        if not version or major_of(version) != major:
            raise AirflowException(f"[{self.host}] version mismatch: expected PostgreSQL {major}, got {version!r}")
        self.note(f"distribution unit {family.postgres_service} disabled (Patroni runs PostgreSQL)",
                  host.disable_now(family.postgres_service))
        return {"version": version}


class CreateDatabaseOperator(PghaOperator):
    """
    Phase 6a on the leader: the application role (password from its Airflow
    connection, sent as a SCRAM verifier) and the database it owns.
    """

    PGPASS = "/run/pgha/restore.pgpass"

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

    def recreate_target(self, target: NodePostgresHook) -> None:
        inv = self.inventory
        target.execute_autocommit(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(inv.postgres.database)),
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(inv.postgres.database), sql.Identifier(inv.postgres.owner)
            ),
        )

    def dump_restore(self, leader_address: str, snapshot: str | None, schema_only: bool = False) -> None:
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
            f"{bin_dir}/pg_dump -Fc --no-owner --no-privileges "
            f"{f'--snapshot={shlex.quote(snapshot)} ' if snapshot else ''}{'--schema-only ' if schema_only else ''}"
            f"-d {database} | "
            f"PGPASSFILE={self.PGPASS} {bin_dir}/pg_restore --exit-on-error --no-owner --no-privileges "
            f"--role={shlex.quote(inv.postgres.owner)} -h {shlex.quote(leader_address)} -p {inv.postgres.port} "
            f"-U {shlex.quote(superuser.login)} -d {database}"
        )
        try:
            remote.run(f"runuser -u postgres -- bash -o pipefail -c {shlex.quote(pipeline)}", timeout=6 * 3600)
        finally:
            remote.run(f"rm -f {self.PGPASS}")

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

    def run(self, context: Any) -> Any:
        if method_of(context) != "dump_restore":
            raise AirflowSkipException(f"migration_method is {method_of(context)}")
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
            self.recreate_target(target)
            self.dump_restore(leader.address, snapshot)
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


LOGICAL = "logical_replication"
PUBLICATION = "pgha_pub"
SUBSCRIPTION = "pgha_sub"
HBA_BEGIN = "# BEGIN pgha logical replication"
HBA_END = "# END pgha logical replication"


def method_of(context: Any) -> str:
    return (context.get("params") or {}).get("migration_method", "dump_restore")


def source_psql(op: PghaOperator, sql_text: str, database: str = "postgres") -> str:
    """Run SQL on the source host as the postgres OS user (peer auth); the text goes over stdin."""
    inv = op.inventory
    port = NodePostgresHook(inv.source.conn_id).connection.port or 5432
    return op.remote(inv.source.host).run(
        f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p {port} -d {shlex.quote(database)} -f -",
        stdin=sql_text,
    ).stdout.strip()


class PrepareLogicalSourceOperator(PghaOperator):
    """
    Phase 6 (logical replication only): readies the source: wal_level =
    logical, listening on its inventory address, a pg_hba rule and a
    replication role for the cluster (password from its connection, sent as a
    SCRAM verifier over stdin), then one restart of the source PostgreSQL if a
    setting needs it (Airflow reconnects on its own). Fails, changing nothing,
    when a table has no primary key or replica identity.
    """

    def run(self, context: Any) -> Any:
        if method_of(context) != LOGICAL:
            raise AirflowSkipException("migration_method is dump_restore")
        inv = self.inventory
        source = NodePostgresHook(inv.source.conn_id, database=inv.postgres.database)
        tables = [r[0] for r in source.rows(load_sql("logical_readiness.sql")) if r[0].startswith("table ")]
        if tables:
            raise AirflowException("logical replication impossible: " + "; ".join(tables))
        restart = self._settings()
        self._hba()
        self._role(source)
        if restart:
            service = self.os_family(inv.source.host).postgres_service
            self.remote(inv.source.host).run(f"systemctl restart {service}", timeout=300)
            self.changed(f"source PostgreSQL restarted ({service}) to apply wal_level/listen_addresses")
        return {"restarted": restart}

    def psql(self, sql_text: str, database: str = "postgres") -> str:
        return source_psql(self, sql_text, database)

    def _settings(self) -> bool:
        address = self.inventory.host(self.inventory.source.host).address
        restart = False
        if self.psql("SHOW wal_level;") != "logical":
            self.psql("ALTER SYSTEM SET wal_level = logical;")
            self.changed("source wal_level = logical")
            restart = True
        listen = self.psql("SHOW listen_addresses;")
        if listen != "*" and address not in listen.split(","):
            self.psql(f"ALTER SYSTEM SET listen_addresses = '{listen},{address}';")
            self.changed(f"source listens on {address} too")
            restart = True
        return restart

    def _hba(self) -> None:
        inv = self.inventory
        repl = credentials(inv.postgres.replication_conn_id, "replication user")
        hba_file = self.psql("SHOW hba_file;")
        remote = self.remote(inv.source.host)
        current = remote.read_file(hba_file) or ""
        rule = f"host {inv.postgres.database} {repl.login} {inv.cluster.network} scram-sha-256"
        from pgha.operators.host import replace_block

        updated = replace_block(current, rule, HBA_BEGIN, HBA_END)
        owner = remote.run(f"stat -c '%U %G %a' {shlex.quote(hba_file)}", quiet=True).stdout.split()
        changed = remote.put_file(hba_file, updated, owner=owner[0], group=owner[1], mode=owner[2]).changed
        if changed:
            self.psql("SELECT pg_reload_conf();")
        self.note(f"pg_hba rule for {repl.login} from {inv.cluster.network}", changed)

    def _role(self, source: NodePostgresHook) -> None:
        repl = credentials(self.inventory.postgres.replication_conn_id, "replication user")
        conn = source.get_conn()
        try:
            verifier = encrypt_password(repl.password, repl.login, conn, "scram-sha-256")
            role = sql.Identifier(repl.login).as_string(conn)
        finally:
            conn.close()
        self.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{repl.login}') THEN "
            f"CREATE ROLE {role} LOGIN REPLICATION; END IF; END $$;\n"
            f"ALTER ROLE {role} WITH LOGIN REPLICATION PASSWORD '{verifier}';\n"
            f"GRANT pg_read_all_data TO {role};\n"
        )
        self.unchanged(f"replication role {repl.login} (password from its connection)")


class StartLogicalReplicationOperator(CreateDatabaseOperator):
    """
    Phase 6 (logical replication only): the schema on the cluster, a
    publication on the source and a subscription on the leader; waits until
    every table finished its initial copy. The cutover agent catches up,
    syncs sequences and drops the subscription inside the stopped window.

    :param sync_timeout: seconds to wait for the initial copy.
    """

    def __init__(self, *, sync_timeout: int = 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sync_timeout = sync_timeout

    def run(self, context: Any) -> Any:
        if method_of(context) != LOGICAL:
            raise AirflowSkipException("migration_method is dump_restore")
        inv = self.inventory
        leader = self.leader_host()
        target_db = NodePostgresHook(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                                     database=inv.postgres.database)
        admin = NodePostgresHook(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                                 database="postgres")
        comment = admin.scalar("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (inv.postgres.database,))
        if comment and comment.startswith(LIVE_MARK):
            self.unchanged(f"{inv.postgres.database} on the cluster is live: not overwritten")
            return {"skipped": "live"}
        if not target_db.scalar("SELECT count(*) FROM pg_subscription WHERE subname = %s", (SUBSCRIPTION,)):
            self._subscribe(leader.address, admin, target_db)
        self._wait_synced(target_db)
        return {"subscription": SUBSCRIPTION, "leader": leader.name}

    def _subscribe(self, leader_address: str, admin: NodePostgresHook, target_db: NodePostgresHook) -> None:
        inv = self.inventory
        source_psql(self, f"SELECT pg_drop_replication_slot('{SUBSCRIPTION}') FROM pg_replication_slots "
                    f"WHERE slot_name = '{SUBSCRIPTION}';")
        self.recreate_target(admin)
        self.dump_restore(leader_address, snapshot=None, schema_only=True)
        source_psql(self, f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = '{PUBLICATION}') THEN "
                    f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES; END IF; END $$;", database=inv.postgres.database)
        repl = credentials(inv.postgres.replication_conn_id, "replication user")
        port = NodePostgresHook(inv.source.conn_id).connection.port or 5432
        conninfo = (f"host={inv.host(inv.source.host).address} port={port} dbname={inv.postgres.database} "
                    f"user={repl.login} password={repl.password}")
        conn = target_db.get_conn()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION %s PUBLICATION {}").format(
                    sql.Identifier(SUBSCRIPTION), sql.Identifier(PUBLICATION)), (conninfo,))
        finally:
            conn.close()
        self.changed(f"publication {PUBLICATION} on the source, subscription {SUBSCRIPTION} on the leader")

    def _wait_synced(self, target_db: NodePostgresHook) -> None:
        deadline = time.monotonic() + self.sync_timeout
        while True:
            pending, total = target_db.rows("SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*) "
                                            "FROM pg_subscription_rel")[0]
            if total and not pending:
                self.log.info("initial copy done: %d tables replicating", total)
                return
            if time.monotonic() > deadline:
                raise AirflowException(f"initial copy not finished after {self.sync_timeout}s: {pending}/{total} tables")
            self.log.info("initial copy: %d of %d tables still copying", pending, total)
            time.sleep(5)
