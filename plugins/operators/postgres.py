"""PostgreSQL: source checks, installation (phase 2), database and data (phase 6).

What these operators do inside PostgreSQL is ``pgha.pgdata``, the code and the
include/sql files the cutover agent runs too; the connections come from
``pgha.hooks.postgres``.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from airflow import __version__ as AIRFLOW_VERSION
from psycopg2 import sql

from pgha.compat import AirflowException, AirflowSkipException
from pgha import pgdata, pgmajors, tls
from pgha.approval import window_estimates
from pgha.hooks.pgbouncer import held_back
from pgha.hooks.postgres import RemoteDumpRestore, leader_host, node_endpoint, peer_sql
from pgha.inventory import Host
from pgha.pgdata import Endpoint, ident, lit
from pgha.runtime import credentials, verified_on_host
from pgha.secret_formats import hba_word

from pgha.operators.base import HostOperator, PghaOperator

LOGICAL = "logical_replication"
HBA_BEGIN = "# BEGIN pgha logical replication"
HBA_END = "# END pgha logical replication"
# What the logical method found on the source before changing it (root 0600, beside the cutover's state):
# UndoLogicalSourceOperator puts exactly that back after a successful cutover.
SOURCE_RECORD_DIR = "/var/lib/pgha"
SOURCE_RECORD = f"{SOURCE_RECORD_DIR}/logical-source.json"
SOURCE_SETTINGS = ("wal_level", "listen_addresses")


def major_of(version_output: str) -> int:
    """The major version in ``postgres --version`` output."""
    match = re.search(r"\(PostgreSQL\) (\d+)", version_output)
    if not match:
        raise ValueError(f"cannot read a PostgreSQL version from {version_output!r}")
    return int(match.group(1))


def method_of(context: Any) -> str:
    return (context.get("params") or {}).get("migration_method", "dump_restore")


def source_endpoint(op: PghaOperator) -> Endpoint:
    """The source database through its Airflow connection (the worker and the source host both reach it)."""
    inv = op.inventory
    return node_endpoint(inv.source.conn_id, database=inv.postgres.database)


def cluster_admin(op: PghaOperator, leader: Host) -> Endpoint:
    """The cluster superuser on the leader, in the ``postgres`` database (verified, with TLS on)."""
    inv = op.inventory
    return op.verified(node_endpoint(inv.postgres.superuser_conn_id, host=leader.address, port=inv.postgres.port,
                                     database="postgres"))


def copy_bin_dir(op: PghaOperator) -> str:
    """
    Where the pg_dump and pg_restore that copy the source are, on the source host: the cluster's
    major's when the source runs an older one (installed there first), the source's own otherwise.
    The source connection may be one only the source host reaches (127.0.0.1), so the copy runs there.
    """
    inv = op.inventory
    family = op.os_family(inv.source.host)
    if inv.postgres.major > inv.source.major:
        packages = family.packages_for("postgres_client", inv.postgres.major)
        installed = op.host_hook(inv.source.host).ensure_packages(packages)
        op.note(f"{inv.source.host}: {' '.join(packages)} (pg_dump/pg_restore of the cluster's major "
                f"{inv.postgres.major} for the PostgreSQL {inv.source.major} source)", installed)
    return family.copy_postgres_bin(inv.source.major, inv.postgres.major)


def source_dump_restore(op: PghaOperator, target: Endpoint) -> RemoteDumpRestore:
    """pg_dump | pg_restore from the source into ``target``, run on the source host with the cluster's major's tools."""
    inv = op.inventory
    return RemoteDumpRestore(op.remote(inv.source.host), source_endpoint(op), verified_on_host(target),
                             bin_dir=copy_bin_dir(op), owner=inv.postgres.owner, progress_target=target)


def without_hba_block(current: str) -> str:
    """pg_hba.conf text without pgha's block."""
    kept, inside = [], False
    for line in current.splitlines():
        if line == HBA_BEGIN:
            inside = True
        elif line == HBA_END:
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def with_hba_rules(current: str, rules: list[str]) -> str:
    """pg_hba.conf text with pgha's block (last, so earlier rules keep their precedence) holding ``rules``."""
    return without_hba_block(current) + "\n".join([HBA_BEGIN, *rules, HBA_END]) + "\n"


class SourcePreflightOperator(PghaOperator):
    """
    Checks the source database: reachable, the expected major, the database present; logs its
    size. Refuses, changing nothing, a migration ``pgha.pgmajors`` rules out: a cluster major
    older than the source's, one the running Airflow does not support, a source that lacks what
    the chosen method needs.
    """

    dry_run_mode = "check"  # it only reads: a dry run runs it as any run does

    def run(self, context: Any) -> Any:
        inv = self.inventory
        try:
            conn = source_endpoint(self).connect()
        except Exception as exc:
            raise AirflowException(
                f"source database {inv.postgres.database} on {inv.source.host} is not reachable with connection "
                f"{inv.source.conn_id!r}: {str(exc).strip()}"
            ) from exc
        try:
            major = pgdata.scalar(conn, pgdata.statement("server_major.sql"))
            size = pgdata.scalar(conn, pgdata.statement("database_size.sql"))
            size_bytes = pgdata.scalar(conn, pgdata.statement("database_size_bytes.sql"))
            tables = len(pgdata.list_tables(conn))
            logical = [r[0] for r in pgdata.rows(conn, pgdata.statement("logical_readiness.sql"))]
            limits = dict(pgdata.rows(conn, pgdata.statement("replication_limits.sql",
                                                             slot=lit(pgdata.SUBSCRIPTION))))
        finally:
            conn.close()
        if major != inv.source.major:
            raise AirflowException(
                f"version mismatch: source.major is {inv.source.major} in the inventory but the source server "
                f"runs PostgreSQL {major}"
            )
        method = method_of(context)
        self.log.info("source: PostgreSQL %d, %s, %d tables; cluster: PostgreSQL %d; Airflow %s; method %s",
                      major, size, tables, inv.postgres.major, AIRFLOW_VERSION, method)
        self.log.info("logical replication readiness: %s", "; ".join(logical) or "ready")
        refusals = pgmajors.migration_refusals(
            source_major=major, target_major=inv.postgres.major, airflow_version=AIRFLOW_VERSION, method=method,
            source_settings=limits, used_slots=int(limits.get("used_slots", 0)))
        if method == LOGICAL:
            refusals += [p for p in logical if p.startswith("table ")]
        if refusals:
            raise AirflowException(f"migration_method {method} from PostgreSQL {major} to {inv.postgres.major} "
                                   "refused (nothing was changed):\n  - " + "\n  - ".join(refusals))
        if method == LOGICAL and any(p.startswith("wal_level") for p in logical):
            self.log.info("the logical method will set wal_level = logical on the source and restart it once")
        windows = window_estimates(size_bytes)
        for way, estimate in windows.items():
            self.log.info("cutover window, %s: %s", way, estimate)
        return {"major": major, "size": size, "size_bytes": size_bytes, "tables": tables,
                "logical_replication_needs": logical, "windows": windows}


class InstallPostgresOperator(HostOperator):
    """
    Phase 2 on one node: the PostgreSQL server packages of ``postgres.major``,
    without a distribution-managed cluster (Patroni creates and runs it).
    Refuses, before changing anything, a node whose data directory holds a
    cluster pgha did not create.

    :param host: database node (mapped).
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

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
        unit = family.postgres_unit_name(major)
        self.note(f"distribution unit {unit} disabled (Patroni runs PostgreSQL)", host.disable_now(unit))
        return {"version": version}


class CreateDatabaseOperator(PghaOperator):
    """
    Phase 6a on the leader: the application role (password from its Airflow
    connection, sent as a SCRAM verifier) and the database it owns.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        leader = leader_host(inv, self.patroni_api_urls(), self.client_tls())
        app = credentials(inv.postgres.app_conn_id, f"login of {inv.postgres.owner}")
        owner = inv.postgres.owner
        with pgdata.session(cluster_admin(self, leader)) as conn:
            role_created = pgdata.ensure_login_role(conn, owner, app.password)
            db_created = pgdata.create_database(conn, inv.postgres.database, owner)
        self.note(f"role {owner}", role_created)
        self.unchanged(f"password of {owner} set from connection {inv.postgres.app_conn_id}")
        self.note(f"database {inv.postgres.database}", db_created)
        return {"leader": leader.name}


class MigrateDataOperator(PghaOperator):
    """
    Phase 6b: copies the source database into the cluster with pg_dump |
    pg_restore, run on the source host. The dump uses a snapshot exported by
    this task, so the row counts and checksums taken in the same snapshot are
    exactly what the cluster must hold afterwards; the task fails if not.
    Skips once the cluster database is live (Airflow cut over). Killed, it
    stops the pipeline on the source host; a re-run starts from an empty database.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._copy: RemoteDumpRestore | None = None

    def run(self, context: Any) -> Any:
        if method_of(context) != "dump_restore":
            raise AirflowSkipException(f"migration_method is {method_of(context)}")
        inv = self.inventory
        database = inv.postgres.database
        leader = leader_host(inv, self.patroni_api_urls(), self.client_tls())
        admin = cluster_admin(self, leader)
        with pgdata.session(admin) as conn:
            if pgdata.is_live(conn, database):
                self.unchanged(f"{database} on the cluster is live ({pgdata.database_comment(conn, database)}): "
                               "not overwritten")
                return {"skipped": "live"}
        with pgdata.session(source_endpoint(self), autocommit=False) as snapshot_conn:
            snapshot = pgdata.export_snapshot(snapshot_conn)
            expected = pgdata.fingerprints(snapshot_conn)
            with pgdata.session(admin) as conn:
                pgdata.recreate_database(conn, database, inv.postgres.owner)
            self._copy = source_dump_restore(self, admin.on(database))
            self._copy.run(snapshot=snapshot)
            self._copy = None
        with pgdata.session(admin.on(database)) as conn:
            actual = pgdata.fingerprints(conn)
        problems = pgdata.compare_fingerprints(expected, actual)
        if problems:
            raise AirflowException("the cluster does not match the source snapshot:\n  - " + "\n  - ".join(problems))
        with pgdata.session(admin) as conn:
            pgdata.mark_restored(conn, database, inv.source.host)
        rows = sum(count for count, _ in actual.values())
        self.changed(f"copied {len(actual)} tables, {rows} rows; counts and checksums match the source snapshot")
        return {"tables": len(actual), "rows": rows, "leader": leader.name}

    def on_kill(self) -> None:
        if self._copy is not None:
            self.log.warning("killed: stopping pg_dump | pg_restore on %s: %s", self.inventory.source.host,
                             self._copy.stop())


def source_sql(op: PghaOperator, file: str, database: str = "postgres", /, **parts: Any) -> str:
    """include/sql/<file> run on the source host as the postgres OS user (peer: the source connection
    need not be a superuser); the statement, quoted by psycopg2, goes over stdin."""
    return peer_sql(op.remote(op.inventory.source.host), source_endpoint(op), file, database, **parts).stdout.strip()


def source_rows(op: PghaOperator, file: str, database: str = "postgres", /, **parts: Any) -> list[str]:
    """``source_sql``'s output, one row a line (none for an empty result)."""
    return [line for line in source_sql(op, file, database, **parts).splitlines() if line]


def replication_login(op: PghaOperator) -> Any:
    return credentials(op.inventory.postgres.replication_conn_id, "replication user")


def hba_file_of(op: PghaOperator) -> str:
    return source_sql(op, "show_setting.sql", name=lit("hba_file"))


def put_hba(op: PghaOperator, hba_file: str, text: str) -> bool:
    """Write pg_hba.conf (its owner and mode kept) and reload the source when it changed."""
    remote = op.remote(op.inventory.source.host)
    owner = remote.run(f"stat -c '%U %G %a' {shlex.quote(hba_file)}", quiet=True).stdout.split()
    changed = remote.put_file(hba_file, text, owner=owner[0], group=owner[1], mode=owner[2]).changed
    if changed:
        source_sql(op, "reload_conf.sql")
    return changed


class PrepareLogicalSourceOperator(PghaOperator):
    """
    Phase 6 (logical replication only): readies the source: wal_level =
    logical, listening on its inventory address, a pg_hba rule per database
    node and a replication role for the cluster (password from its connection,
    sent as a SCRAM verifier over stdin) that may enter only the migrated
    database and read only its tables (what a subscription's initial copy
    needs), then one restart of the source PostgreSQL if a setting needs it:
    with pooler pgbouncer, under a PAUSE of every Airflow host's PgBouncer (no
    Airflow transaction fails), else Airflow reconnects on its own. Before its
    first change it records what it found (root-only
    /var/lib/pgha/logical-source.json on the source host), which
    ``UndoLogicalSourceOperator`` restores after the cutover. Fails, changing
    nothing, when a table has no primary key or replica identity. The PAUSE
    waits at most the inventory's ``pgbouncer.pause_timeout`` for Airflow's
    open transactions.
    """

    def run(self, context: Any) -> Any:
        if method_of(context) != LOGICAL:
            raise AirflowSkipException("migration_method is dump_restore")
        inv = self.inventory
        with pgdata.session(source_endpoint(self)) as conn:
            readiness = [r[0] for r in pgdata.rows(conn, pgdata.statement("logical_readiness.sql"))]
        tables = [p for p in readiness if p.startswith("table ")]
        if tables:
            raise AirflowException("logical replication impossible: " + "; ".join(tables))
        self._record_originals()
        restart = self._settings()
        self._hba()
        self._role()
        if restart:
            service = self.os_family(inv.source.host).postgres_service
            source = source_endpoint(self)  # now: inside the pause a connection lookup could wait on Airflow
            with self._airflow_held_back(context):
                self.host_hook(inv.source.host).restart(service, timeout=300)
                self._wait_until_source_answers(source)
            self.changed(f"source PostgreSQL restarted ({service}) to apply wal_level/listen_addresses")
        return {"restarted": restart}

    def _airflow_held_back(self, context: Any) -> AbstractContextManager[Any]:
        """Pooler pgbouncer (Airflow already on its PgBouncers): Airflow's transactions wait in them (PAUSE)
        while the source restarts, so none fails and no Airflow process dies; RESUME once the source answers.
        A PAUSE that times out fails the task before the restart (the settings wait for a re-run's restart).
        Without a pooler, Airflow's connections break and its processes reconnect or restart on their own."""
        if (context.get("params") or {}).get("pooler") != "pgbouncer":
            return nullcontext()
        inv = self.inventory
        return held_back(self.pgbouncer_consoles(inv.pgbouncer.port, source_endpoint(self)), inv.postgres.database,
                         inv.pgbouncer.pause_timeout, self.log)

    def _wait_until_source_answers(self, source: Endpoint, timeout: float = 120) -> None:
        """A login on the source succeeds (systemd may report the unit started before PostgreSQL accepts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with pgdata.session(source):
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise AirflowException(f"the source does not answer {timeout:g}s after its restart: {exc}") from exc
                time.sleep(0.5)

    def _setting(self, name: str) -> str:
        return source_sql(self, "show_setting.sql", name=lit(name))

    def _record_originals(self) -> None:
        """What the source had before pgha's first change, written once (a re-run keeps the first record)."""
        inv = self.inventory
        remote = self.remote(inv.source.host)
        if remote.read_file(SOURCE_RECORD) is not None:
            self.unchanged(f"originals of the source recorded in {SOURCE_RECORD}")
            return
        role = replication_login(self).login
        record = {
            "auto_conf": {name: (source_rows(self, "auto_conf_setting.sql", name=lit(name)) or [None])[0]
                          for name in SOURCE_SETTINGS},
            "role": role,
            "role_existed": source_sql(self, "role_exists.sql", role=lit(role)) == "t",
        }
        self.host_hook(inv.source.host).ensure_directory(SOURCE_RECORD_DIR, mode="0700")
        remote.put_file(SOURCE_RECORD, json.dumps(record, indent=2) + "\n", mode="0600")
        self.changed(f"originals of the source recorded in {SOURCE_RECORD}: {json.dumps(record)}")

    def _settings(self) -> bool:
        address = self.inventory.host(self.inventory.source.host).address
        restart = False
        if self._setting("wal_level") != "logical":
            source_sql(self, "alter_system.sql", name=ident("wal_level"), value=lit("logical"))
            self.changed("source wal_level = logical")
            restart = True
        listen = self._setting("listen_addresses")
        if listen != "*" and address not in listen.split(","):
            source_sql(self, "alter_system.sql", name=ident("listen_addresses"), value=lit(f"{listen},{address}"))
            self.changed(f"source listens on {address} too")
            restart = True
        return restart

    def _hba(self) -> None:
        inv = self.inventory
        login = replication_login(self).login
        hba_file = hba_file_of(self)
        # from the database nodes only: the subscription runs on whichever of them leads
        rules = [f"host {hba_word(inv.postgres.database)} {hba_word(login)} {node.address}/32 scram-sha-256"
                 for node in inv.db_hosts]
        current = self.remote(inv.source.host).read_file(hba_file) or ""
        changed = put_hba(self, hba_file, with_hba_rules(current, rules))
        self.note(f"pg_hba rules for {login} into {inv.postgres.database} from "
                  f"{', '.join(node.name for node in inv.db_hosts)}", changed)

    def _role(self) -> None:
        inv = self.inventory
        repl = replication_login(self)
        database = inv.postgres.database
        self.remote(inv.source.host).add_secret(repl.password)
        with pgdata.session(source_endpoint(self)) as conn:
            verifier = pgdata.encrypt_password(repl.password, repl.login, conn, "scram-sha-256")
            schemas = sorted({schema for schema, _ in pgdata.list_tables(conn)})
        created = source_sql(self, "role_exists.sql", role=lit(repl.login)) != "t"
        if created:
            source_sql(self, "create_replication_role.sql", role=ident(repl.login))
        source_sql(self, "replication_role_grants.sql", role=ident(repl.login), verifier=lit(verifier),
                   database=ident(database))
        if schemas:
            source_sql(self, "replication_role_schema_grants.sql", database, role=ident(repl.login),
                       schemas=sql.SQL(", ").join(ident(schema) for schema in schemas))
        self.note(f"replication role {repl.login}", created)
        self.unchanged(f"password of {repl.login} set from connection {inv.postgres.replication_conn_id}; "
                       f"it may read {database} (schemas {', '.join(schemas) or '-'}) and nothing else")
        # an earlier pgha granted pg_read_all_data (every database): take it back
        if source_sql(self, "role_member_of.sql", granted=lit("pg_read_all_data"), member=lit(repl.login)) == "t":
            source_sql(self, "revoke_role.sql", granted=ident("pg_read_all_data"), role=ident(repl.login))
            self.changed(f"pg_read_all_data revoked from {repl.login}")


class UndoLogicalSourceOperator(PghaOperator):
    """
    After a successful cutover by logical replication: removes from the
    source what ``PrepareLogicalSourceOperator`` and the replication added:
    the publication and a leftover slot, the replication role (if pgha
    created it), pgha's pg_hba block, and postgresql.auto.conf's
    listen_addresses / wal_level as recorded before (one restart of the
    source PostgreSQL, which Airflow no longer uses, when a setting changes
    back; wal_level stays logical while another logical slot exists). Skips
    for dump_restore and unless the cutover's recorded outcome is success:
    after a rollback everything stays, so a retry works. Logs what it
    removed; a re-run finds nothing left to do.

    :param cutover_outcome: the cutover_outcome sensor's outcome (templated), ``success`` to act.
    """

    template_fields = (*PghaOperator.template_fields, "cutover_outcome")

    def __init__(self, *, cutover_outcome: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cutover_outcome = cutover_outcome

    def run(self, context: Any) -> Any:
        if method_of(context) != LOGICAL:
            raise AirflowSkipException("migration_method is dump_restore: the source was not changed for it")
        if (self.cutover_outcome or "").strip() != "success":
            raise AirflowSkipException(f"the cutover's outcome is {self.cutover_outcome or 'unknown'!r}, not "
                                       "success: the source stays ready for logical replication (a retry needs it)")
        inv = self.inventory
        remote = self.remote(inv.source.host)
        text = remote.read_file(SOURCE_RECORD)
        record = json.loads(text) if text else None
        if record is None:
            self.log.warning("no %s on %s: the role and settings stay as they are (nothing says what they were)",
                             SOURCE_RECORD, inv.source.host)
        self._publication()
        restart = False
        if record is not None:
            self._role(record)
        self._hba()
        if record is not None:
            restart = self._settings(record)
        if restart:
            service = self.os_family(inv.source.host).postgres_service
            self.host_hook(inv.source.host).restart(service, timeout=300)
            self.changed(f"source PostgreSQL restarted ({service}) to apply the restored settings")
        if record is not None:
            self.host_hook(inv.source.host).remove(SOURCE_RECORD)
            self.changed(f"{SOURCE_RECORD} removed (its originals are back)")
        return {"restarted": restart, "recorded": record}

    def _publication(self) -> None:
        database = self.inventory.postgres.database
        publication = pgdata.PUBLICATION
        exists = source_sql(self, "publication_exists.sql", database, publication=lit(publication)) == "t"
        if exists:
            source_sql(self, "drop_publication.sql", database, publication=ident(publication))
        self.note(f"publication {publication} dropped from {database}" if exists
                  else f"no publication {publication} in {database}", exists)
        slots = source_rows(self, "logical_slots.sql")
        # the subscription's (DROP SUBSCRIPTION on the cluster normally took it along) and the paused
        # cutover's change slot (dropped by it unless it was killed)
        for name in (pgdata.SUBSCRIPTION, pgdata.VERIFY_SLOT):
            slot = name in slots
            if slot:
                source_sql(self, "drop_replication_slot.sql", slot=lit(name))
            self.note(f"replication slot {name} dropped" if slot else f"no replication slot {name}", slot)

    def _role(self, record: dict[str, Any]) -> None:
        role = record["role"]
        if record.get("role_existed"):
            self.unchanged(f"role {role} existed before pgha: kept")
            return
        exists = source_sql(self, "role_exists.sql", role=lit(role)) == "t"
        if exists:
            source_sql(self, "drop_replication_role.sql", self.inventory.postgres.database, role=ident(role))
        self.note(f"replication role {role} dropped" if exists else f"no replication role {role}", exists)

    def _hba(self) -> None:
        hba_file = hba_file_of(self)
        current = self.remote(self.inventory.source.host).read_file(hba_file) or ""
        if HBA_BEGIN not in current.splitlines():
            self.unchanged(f"no pgha block in {hba_file}")
            return
        self.note(f"pgha's pg_hba block removed from {hba_file}", put_hba(self, hba_file, without_hba_block(current)))

    def _settings(self, record: dict[str, Any]) -> bool:
        """postgresql.auto.conf's settings as recorded; True when one changed (a restart applies it)."""
        restart = False
        for name, original in record.get("auto_conf", {}).items():
            if name not in SOURCE_SETTINGS:
                continue
            current = (source_rows(self, "auto_conf_setting.sql", name=lit(name)) or [None])[0]
            if current == original:
                self.unchanged(f"source {name}: postgresql.auto.conf as recorded ({original or 'not set'})")
                continue
            if name == "wal_level":
                slots = source_rows(self, "logical_slots.sql")
                if slots:
                    self.log.warning("source wal_level stays logical: logical slot(s) %s still exist (PostgreSQL "
                                     "would not start without it); drop them, then clear this task", ", ".join(slots))
                    self.unchanged(f"source wal_level kept logical for slot(s) {', '.join(slots)}")
                    continue
            if original is None:
                source_sql(self, "alter_system_reset.sql", name=ident(name))
            else:
                source_sql(self, "alter_system.sql", name=ident(name), value=lit(original))
            self.changed(f"source {name}: postgresql.auto.conf back to {original or 'not set'} (was {current})")
            restart = True
        return restart


class StartLogicalReplicationOperator(PghaOperator):
    """
    Phase 6 (logical replication only): the schema on the cluster (copied on
    the leader with the cluster's pg_dump, as the replication login), a
    publication on the source and a subscription on the leader, which starts
    the initial copy (``LogicalSyncSensor`` waits for it). The cutover agent
    catches up, syncs sequences and drops the subscription inside the stopped
    window. Killed while copying the schema, it stops that pipeline.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._copy: RemoteDumpRestore | None = None

    def run(self, context: Any) -> Any:
        if method_of(context) != LOGICAL:
            raise AirflowSkipException("migration_method is dump_restore")
        inv = self.inventory
        leader = leader_host(inv, self.patroni_api_urls(), self.client_tls())
        admin = cluster_admin(self, leader)
        with pgdata.session(admin) as conn:
            if pgdata.is_live(conn, inv.postgres.database):
                self.unchanged(f"{inv.postgres.database} on the cluster is live: not overwritten")
                return {"skipped": "live"}
            subscribed = pgdata.subscription_exists(conn)
        if subscribed:
            self.unchanged(f"subscription {pgdata.SUBSCRIPTION} on the leader")
        else:
            self._subscribe(leader, admin)
        return {"subscription": pgdata.SUBSCRIPTION, "leader": leader.name}

    def _subscribe(self, leader: Host, admin: Endpoint) -> None:
        inv = self.inventory
        database = inv.postgres.database
        source_sql(self, "drop_replication_slot.sql", slot=lit(pgdata.SUBSCRIPTION))
        with pgdata.session(admin) as conn:
            pgdata.recreate_database(conn, database, inv.postgres.owner)
        publisher = self._publisher()
        self._copy_schema(leader, publisher, admin.on(database))
        if source_sql(self, "publication_exists.sql", database, publication=lit(pgdata.PUBLICATION)) != "t":
            source_sql(self, "create_publication.sql", database, publication=ident(pgdata.PUBLICATION))
        with pgdata.session(admin.on(database)) as conn:
            pgdata.create_subscription(conn, publisher)
        self.changed(f"publication {pgdata.PUBLICATION} on the source, subscription {pgdata.SUBSCRIPTION} "
                     "on the leader: the initial copy runs")

    def _publisher(self) -> Endpoint:
        """The source as the cluster reaches it: its inventory address, as the replication login."""
        inv = self.inventory
        repl = replication_login(self)
        port = source_endpoint(self).port
        address = inv.host(inv.source.host).address
        return Endpoint(host=address, port=port, user=repl.login, dbname=inv.postgres.database,
                        password=repl.password, **self._source_tls(address, port))

    def _copy_schema(self, leader: Host, publisher: Endpoint, target: Endpoint) -> None:
        """The source's schema into the leader's empty database, copied on the leader with the cluster's own
        pg_dump (never older than the source's) over the subscription's own way in (the replication login,
        the pg_hba rules and TLS of phase 6's source preparation): the source host needs no PostgreSQL
        client of the cluster's major, which its distribution may not have (Debian 12 has no 17)."""
        bin_dir = self.os_family(leader.name).postgres_bin(self.inventory.postgres.major)
        self._copy = RemoteDumpRestore(self.remote(leader.name), publisher, verified_on_host(target),
                                       bin_dir=bin_dir, owner=self.inventory.postgres.owner)
        self._copy.run(schema_only=True)
        self._copy = None
        self.changed(f"schema of {publisher.dbname} copied on {leader.name} with {bin_dir}/pg_dump")

    def _source_tls(self, address: str, port: int) -> dict[str, str]:
        """The subscription's libpq TLS settings for the source at ``address``: verify-full against the
        cluster CA (the file phase 3 put on every member) when the source's certificate is one of that CA
        naming ``address``; otherwise encrypted but unverified (require) where the source offers TLS, and
        prefer, with a warning, where it has ssl off. The task log says which and why."""
        files = self.tls_files()
        problem = pgdata.certificate_problem(address, port, files.ca) if files else "tls.enabled is false"
        if problem is None:
            self.unchanged(f"the subscription connects to the source with sslmode=verify-full: its certificate "
                           f"is the cluster CA's and names {address}")
            return {"sslmode": "verify-full", "sslrootcert": tls.CA_FILE}
        if source_sql(self, "show_setting.sql", name=lit("ssl")) == "on":
            self.log.warning("the source's certificate cannot be verified (%s): the subscription's copy is "
                             "encrypted (sslmode=require) but a man in the middle could read it. %s", problem,
                             f"Give the source a certificate of the cluster CA that names {address} to have it "
                             "verified (sslmode=verify-full)" if files else "With tls.enabled pgha verifies it "
                             "against the cluster CA")
            self.unchanged("the subscription connects to the source with sslmode=require (source ssl = on)")
            return {"sslmode": "require"}
        self.log.warning("the source %s has ssl = off: the subscription's copy of airflow_db crosses the network "
                         "in plain text (turn ssl on at the source with a certificate of the cluster CA that "
                         "names %s; pgha then uses sslmode=verify-full)", self.inventory.source.host, address)
        self.unchanged("the subscription connects to the source with sslmode=prefer (source ssl = off)")
        return {"sslmode": "prefer"}

    def on_kill(self) -> None:
        if self._copy is not None:
            self.log.warning("killed: stopping the schema copy on %s: %s", self._copy.remote.host_name,
                             self._copy.stop())
