"""The data path: what the migration's operators and the cutover agent do in PostgreSQL.

One module for both, so the copy the operators take in phase 6 and the final
copy the cutover agent takes while Airflow is stopped are the same code and the
same SQL (include/sql/*.sql; ``{name}`` placeholders, filled only with
``psycopg2.sql.Identifier`` or ``Literal``). psycopg2 and the standard library
only: the agent imports it on the Airflow hosts, outside any task.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import encrypt_password

from pgha import secret_formats

SQL_DIR = Path(str(files("pgha.include"))) / "sql"

LIVE_MARK = "pgha: live"  # comment on the cluster's database once Airflow runs on it
RESTORED_MARK = "pgha: restored"
PUBLICATION = "pgha_pub"
SUBSCRIPTION = "pgha_sub"  # also the name of its slot on the source
VERIFY_SLOT = "pgha_verify"  # the cutover's change slot on the source (test_decoding), dropped after it

Fingerprints = dict[str, tuple[int, str]]


def load_sql(name: str) -> str:
    """The text of include/sql/<name>."""
    return (SQL_DIR / name).read_text()


def statement(file: str, /, **parts: sql.Composable) -> sql.Composed:
    """include/sql/<file> with its ``{placeholders}`` filled (Identifier or Literal only)."""
    return sql.SQL(load_sql(file)).format(**parts)


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def lit(value: Any) -> sql.Literal:
    return sql.Literal(value)


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect; the password comes from ``password`` or a pgpass file, never argv."""

    host: str
    port: int
    user: str
    dbname: str = "postgres"
    password: str | None = field(default=None, repr=False)
    passfile: str | None = None
    connect_timeout: int = 10
    sslmode: str | None = None  # libpq's default (prefer) when None
    sslrootcert: str | None = None
    # the client certificate and key libpq presents: the cluster's superuser rules ask one of a session that
    # does not come from a member (clientcert=verify-ca), so a password alone is not enough there
    sslcert: str | None = None
    sslkey: str | None = None

    def on(self, dbname: str) -> Endpoint:
        return replace(self, dbname=dbname)

    def connect(self, autocommit: bool = True) -> Connection:
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname,
                                  "connect_timeout": self.connect_timeout, "application_name": "pgha"}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.passfile:
            kwargs["passfile"] = self.passfile
        kwargs.update(self.ssl_options())
        conn = psycopg2.connect(**kwargs)
        conn.autocommit = autocommit
        return conn

    def client_args(self) -> list[str]:
        """pg_dump/pg_restore arguments reaching this endpoint (the password from PGPASSFILE). With sslmode or
        sslrootcert the database is a connection string carrying them: the tools verify the server as a
        session of this endpoint does."""
        ssl = self.ssl_options()
        dbname = secret_formats.conninfo(dbname=self.dbname, **ssl) if ssl else self.dbname
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, f"--dbname={dbname}"]

    def ssl_options(self) -> dict[str, str]:
        """The libpq TLS keywords this endpoint sets (sslmode, sslrootcert, sslcert, sslkey)."""
        return {key: value for key, value in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert),
                                              ("sslcert", self.sslcert), ("sslkey", self.sslkey)) if value}

    def pgpass_line(self) -> str:
        return secret_formats.pgpass_line(self.host, self.port, "*", self.user, self.password or "")


@contextlib.contextmanager
def session(endpoint: Endpoint, autocommit: bool = True) -> Iterator[Connection]:
    """A connection, closed afterwards."""
    conn = endpoint.connect(autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def execute(conn: Connection, query: sql.Composable) -> None:
    with conn.cursor() as cur:
        cur.execute(query)


def rows(conn: Connection, query: sql.Composable) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall()) if cur.description else []


def scalar(conn: Connection, query: sql.Composable) -> Any:
    found = rows(conn, query)
    return found[0][0] if found else None


# ---------------------------------------------------------------- role and database


def role_exists(conn: Connection, role: str) -> bool:
    return bool(scalar(conn, statement("role_exists.sql", role=lit(role))))


def ensure_login_role(conn: Connection, role: str, password: str) -> bool:
    """The role, with its password sent as a SCRAM verifier; True if the role was created."""
    created = not role_exists(conn, role)
    if created:
        execute(conn, statement("create_login_role.sql", role=ident(role)))
    verifier = encrypt_password(password, role, conn, "scram-sha-256")
    execute(conn, statement("set_role_password.sql", role=ident(role), verifier=lit(verifier)))
    return created


def database_exists(conn: Connection, database: str) -> bool:
    return bool(scalar(conn, statement("database_exists.sql", database=lit(database))))


def create_database(conn: Connection, database: str, owner: str) -> bool:
    """The database owned by ``owner`` unless it exists; True if created. ``conn`` in autocommit."""
    if database_exists(conn, database):
        return False
    execute(conn, statement("create_database.sql", database=ident(database), owner=ident(owner)))
    return True


def recreate_database(conn: Connection, database: str, owner: str) -> None:
    """An empty database in place of whatever was there (a half-restored copy is never reused)."""
    execute(conn, statement("drop_database.sql", database=ident(database)))
    execute(conn, statement("create_database.sql", database=ident(database), owner=ident(owner)))


# ---------------------------------------------------------------- marks


def database_comment(conn: Connection, database: str) -> str | None:
    return scalar(conn, statement("database_comment.sql", database=lit(database)))


def is_live(conn: Connection, database: str) -> bool:
    """Airflow runs on this copy: nothing may overwrite it."""
    return (database_comment(conn, database) or "").startswith(LIVE_MARK)


def set_comment(conn: Connection, database: str, comment: str | None) -> None:
    execute(conn, statement("comment_on_database.sql", database=ident(database), comment=lit(comment)))


def mark_live(conn: Connection, database: str, run_id: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    comment = f"{LIVE_MARK} since {stamp} (run {run_id})"
    set_comment(conn, database, comment)
    return comment


def mark_restored(conn: Connection, database: str, source_host: str) -> None:
    set_comment(conn, database, f"{RESTORED_MARK} from {source_host}")


def clear_mark(conn: Connection, database: str) -> None:
    set_comment(conn, database, None)


# ---------------------------------------------------------------- fingerprints


def export_snapshot(conn: Connection) -> str:
    """Opens a read-only repeatable-read transaction on ``conn`` and exports its snapshot."""
    conn.autocommit = False
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return str(scalar(conn, statement("export_snapshot.sql")))


def list_tables(conn: Connection) -> list[tuple[str, str]]:
    return [(schema, table) for schema, table, _ in rows(conn, statement("list_tables.sql"))]


VERIFIED_BEFORE = (-1, "identical before the pause, unchanged since")  # a table skipped on both sides


def fingerprints(conn: Connection, skip: frozenset[str] = frozenset(),
                 by_rows: dict[str, RowKeys] | None = None,
                 but_rows: dict[str, RowKeys] | None = None) -> Fingerprints:
    """Row count and content checksum of every user table, in ``conn``'s snapshot; a table in ``skip``
    (verified earlier, unchanged since) is listed with ``VERIFIED_BEFORE`` instead of read, one in ``by_rows``
    (verified earlier, changed since in these rows only) by those rows alone. With ``but_rows``, only those
    tables, each without the rows its keys name."""
    execute(conn, statement("fingerprint_session.sql"))
    by_rows = by_rows or {}
    result = {}
    for schema, table, name in rows(conn, statement("list_tables.sql")):
        if but_rows is not None and name not in but_rows:
            continue
        if but_rows is not None:
            query = rows_fingerprint(sql.Identifier(schema, table), but_rows[name], "table_fingerprint_but_rows.sql")
        elif name in skip:
            result[name] = VERIFIED_BEFORE
            continue
        elif name in by_rows:
            query = rows_fingerprint(sql.Identifier(schema, table), by_rows[name])
        else:
            query = statement("table_fingerprint.sql", table=sql.Identifier(schema, table))
        count, digest = rows(conn, query)[0]
        result[name] = (int(count), digest)
    return result


def rows_fingerprint(table: sql.Identifier, keys: RowKeys, file: str = "table_rows_fingerprint.sql") -> sql.Composed:
    """The fingerprint of the rows ``keys`` names (or, with table_fingerprint_but_rows.sql, of all others)."""
    if keys.type not in KEY_TYPES:  # spliced in as a type name: only the few the change slot reads
        raise ValueError(f"not a key type the change slot reads: {keys.type!r}")
    return statement(file, table=table, column=sql.Identifier(keys.column),
                     keys=sql.Literal(sorted(keys.values)), type=sql.Identifier(keys.type))


def takes_writes(endpoint: Endpoint, connect_timeout: int = 2) -> bool:
    """Whether ``endpoint`` reaches a server out of recovery; False when it cannot be reached at all (asked
    over and over while Airflow waits: one try never blocks longer than ``connect_timeout``)."""
    try:
        with session(replace(endpoint, connect_timeout=connect_timeout)) as conn:
            return not scalar(conn, statement("in_recovery.sql"))
    except psycopg2.Error:
        return False


def at_once(source: Endpoint, cluster: Endpoint,
            read: Callable[[Connection], Fingerprints]) -> tuple[Fingerprints, Fingerprints]:
    """``read`` on source and cluster at the same time: a wait for them is the slower side's, not the sum."""
    def at(endpoint: Endpoint) -> Fingerprints:
        with session(endpoint) as conn:
            return read(conn)

    with ThreadPoolExecutor(max_workers=2) as pool:
        source_side, cluster_side = pool.submit(at, source), pool.submit(at, cluster)
        return source_side.result(), cluster_side.result()


def both_sides(source: Endpoint, cluster: Endpoint, skip: frozenset[str] = frozenset(),
               by_rows: dict[str, RowKeys] | None = None,
               but_rows: dict[str, RowKeys] | None = None) -> tuple[Fingerprints, Fingerprints]:
    """The fingerprints of source and cluster (``fingerprints``' arguments), read at once."""
    return at_once(source, cluster, lambda conn: fingerprints(conn, skip, by_rows, but_rows))


def snapshot_fingerprints(conn: Connection) -> tuple[str, Fingerprints]:
    """(the WAL position every commit it saw is before, fingerprints) in one repeatable-read snapshot of
    ``conn`` (its transaction rolled back afterwards)."""
    conn.autocommit = False
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        position = str(scalar(conn, statement("current_insert_lsn.sql")))
        return position, fingerprints(conn)
    finally:
        conn.rollback()


def identical_tables(source: Fingerprints, target: Fingerprints) -> frozenset[str]:
    return frozenset(table for table, print_ in source.items() if target.get(table) == print_)


def compare_fingerprints(source: Fingerprints, target: Fingerprints) -> list[str]:
    """Tables whose row count or checksum differ, in words."""
    problems = []
    for table in sorted(set(source) | set(target)):
        if table not in target:
            problems.append(f"{table}: missing on the cluster")
        elif table not in source:
            problems.append(f"{table}: exists only on the cluster")
        elif source[table] != target[table]:
            problems.append(
                f"{table}: source {source[table][0]} rows vs cluster {target[table][0]} rows, checksums differ"
            )
    return problems


def as_text(prints: Fingerprints) -> dict[str, str]:
    """'count|md5' per table, the form psql prints and the cutover record keeps."""
    return {table: f"{count}|{digest}" for table, (count, digest) in prints.items()}


# ---------------------------------------------------------------- dump | restore


def pgpass(*endpoints: Endpoint) -> str:
    """A pgpass file for these endpoints (each field escaped as the format wants)."""
    return "".join(e.pgpass_line() for e in endpoints)


def dump_restore_command(
    source: Endpoint,
    target: Endpoint,
    *,
    bin_dir: str,
    owner: str,
    passfile: str,
    snapshot: str | None = None,
    schema_only: bool = False,
) -> str:
    """The ``pg_dump | pg_restore`` shell pipeline (run it under ``bash -o pipefail``)."""
    # No publications or subscriptions: the logical method's own publication (a retry finds it on the
    # source) would be restored as the owner, and only a superuser may create a FOR ALL TABLES one.
    dump = [f"{bin_dir}/pg_dump", "-Fc", "--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions",
            *source.client_args()]
    if snapshot:
        dump.append(f"--snapshot={snapshot}")
    if schema_only:
        dump.append("--schema-only")
    restore = [f"{bin_dir}/pg_restore", "--exit-on-error", "--no-owner", "--no-privileges", f"--role={owner}",
               *target.client_args()]
    return f"export PGPASSFILE={shlex.quote(passfile)} PGCONNECT_TIMEOUT=10; {shlex.join(dump)} | {shlex.join(restore)}"


class PipelineFailed(RuntimeError):
    pass


def run_pipeline(command: str, timeout: float) -> float:
    """Run a pipeline here, in its own process group; on any failure or interruption the
    whole group is killed, so no pg_dump or pg_restore outlives it. Returns its duration."""
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    if proc.returncode:
        raise PipelineFailed(f"pg_dump | pg_restore failed ({proc.returncode}): {err.strip()[-1500:]}")
    return time.monotonic() - started


def kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM a process group, SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def database_bytes(conn: Connection, database: str) -> int:
    return int(scalar(conn, statement("database_bytes.sql", database=lit(database))) or 0)


def user_table_bytes(conn: Connection) -> int:
    """Bytes of the user tables of ``conn``'s database (indexes and TOAST included)."""
    return int(scalar(conn, statement("user_table_bytes.sql")) or 0)


MB = 1024 * 1024


class CopyProgress:
    """
    While a copy into ``target`` runs elsewhere, logs every ``interval`` seconds, from a connection of
    its own (to ``postgres``, never to the target database), how far it got: what the target database
    grew by since the start against the source database's size (an estimate: the copy is packed
    tighter, and pg_restore builds indexes after the rows), the rate and the time left at that rate.
    A context manager; a poll that fails is logged and the copy goes on.
    """

    def __init__(self, target: Endpoint, source_bytes: int, log: Any, interval: float = 15) -> None:
        self.target = target
        self.source_bytes = source_bytes
        self.log = log
        self.interval = interval
        self.lines: list[str] = []
        self._baseline = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgha-copy-progress", daemon=True)

    def __enter__(self) -> CopyProgress:
        self._baseline = self._size() or 0  # an empty database is not nothing (its catalog)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.target.connect_timeout + 5)

    def _size(self) -> int | None:
        try:
            with session(replace(self.target, dbname="postgres")) as conn:
                return database_bytes(conn, self.target.dbname)
        except Exception as exc:  # the copy decides success; the progress line only informs
            self.log(f"copy progress unknown: {str(exc).strip()}")
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            size = self._size()
            if size is not None:
                self.lines.append(self.describe(size - self._baseline, time.monotonic() - self._started))
                self.log(self.lines[-1])

    def describe(self, done: int, elapsed: float) -> str:
        return "copied " + progress_line(max(done, 0), self.source_bytes - self._baseline, elapsed,
                                         finishing="about all rows in: pg_restore finishing (indexes, constraints)")


def progress_line(done: int, expected: int, elapsed: float, finishing: str = "all in") -> str:
    """'X MB of ~Y MB (Z MB/s), ~T s left' (without the estimate when ``expected`` is unknown, 0;
    ``finishing`` once ``done`` reached it)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if expected <= 0:
        return f"{done / MB:.1f} MB ({rate / MB:.2f} MB/s)"
    line = f"{done / MB:.1f} MB of ~{expected / MB:.1f} MB ({rate / MB:.2f} MB/s)"
    if done >= expected:
        return f"{line}, {finishing}"
    if rate > 0:
        return f"{line}, ~{(expected - done) / rate:.0f} s left"
    return line


# ---------------------------------------------------------------- logical replication


def conninfo(endpoint: Endpoint) -> str:
    """A libpq connection string for a subscription (values quoted as libpq wants)."""
    return secret_formats.conninfo(host=endpoint.host, port=endpoint.port, dbname=endpoint.dbname,
                                   user=endpoint.user, password=endpoint.password or "", **endpoint.ssl_options())


def publication_exists(conn: Connection) -> bool:
    return bool(scalar(conn, statement("publication_exists.sql", publication=lit(PUBLICATION))))


def ensure_publication(conn: Connection) -> bool:
    if publication_exists(conn):
        return False
    execute(conn, statement("create_publication.sql", publication=ident(PUBLICATION)))
    return True


def drop_publication(conn: Connection) -> None:
    execute(conn, statement("drop_publication.sql", publication=ident(PUBLICATION)))


def subscription_exists(conn: Connection) -> bool:
    return bool(scalar(conn, statement("subscription_exists.sql", subscription=lit(SUBSCRIPTION))))


SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")  # PostgreSQL's "let us speak TLS" packet


def certificate_problem(host: str, port: int, cafile: str, timeout: float = 10) -> str | None:
    """Why a libpq client at ``host``:``port`` with sslmode=verify-full and sslrootcert=``cafile`` would not
    accept the server's certificate (no TLS offered, another CA, a name that is not ``host``); None when it
    would. Only the TLS handshake runs: no login, nothing on the server changes."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=cafile)  # verifies the chain and that the certificate names host
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.sendall(SSL_REQUEST)
            if raw.recv(1) != b"S":
                return "the server does not offer TLS (ssl = off)"
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"its certificate does not verify: {exc.verify_message}"
    except (OSError, ssl.SSLError) as exc:
        return f"no TLS handshake with {host}:{port}: {exc}"


def create_subscription(conn: Connection, publisher: Endpoint) -> None:
    """Subscribe ``conn``'s database (autocommit) to the source's publication: the initial copy starts."""
    execute(conn, statement("create_subscription.sql", subscription=ident(SUBSCRIPTION),
                            conninfo=lit(conninfo(publisher)), publication=ident(PUBLICATION)))


def drop_subscription(conn: Connection) -> None:
    """Drop the subscription and, through its own connection to the source, its slot there."""
    execute(conn, statement("drop_subscription.sql", subscription=ident(SUBSCRIPTION)))


def drop_replication_slot(conn: Connection) -> None:
    execute(conn, statement("drop_replication_slot.sql", slot=lit(SUBSCRIPTION)))


def initial_sync_progress(conn: Connection) -> dict[str, tuple[int, int]]:
    """Per sync state of the subscription's tables ('i', 'd', 'f', 's', 'r'): (tables, bytes on this side)."""
    found = rows(conn, statement("initial_sync_progress.sql", subscription=lit(SUBSCRIPTION)))
    return {state: (int(count), int(size)) for state, count, size in found}


def initial_sync_state(conn: Connection) -> tuple[int, int]:
    """(tables still copying, tables) of the subscription."""
    pending, total = rows(conn, statement("initial_sync_state.sql", subscription=lit(SUBSCRIPTION)))[0]
    return int(pending), int(total)


def slot_caught_up(conn: Connection) -> bool:
    """On the source: the subscription confirmed everything written so far."""
    return bool(scalar(conn, statement("slot_caught_up.sql", slot=lit(SUBSCRIPTION))))


def slot_confirmed(conn: Connection, position: str) -> bool:
    """On the source: the subscription confirmed ``position`` (an LSN as text) or later."""
    return bool(scalar(conn, statement("slot_confirmed.sql", slot=lit(SUBSCRIPTION), lsn=lit(position))))


KEY_TYPES = ("int2", "int4", "int8", "uuid")  # a key column the change slot reads, by pg_type's name


@dataclass(frozen=True)
class RowKeys:
    """The rows of one table a change named since the slot was made: its one-column key and the values."""

    column: str
    type: str
    values: frozenset[str]


@dataclass(frozen=True)
class TableChanges:
    """What the change slot saw since it was made: tables a change named (compared in full), tables whose every
    change named its row (only those rows compared), tables compared whatever it saw (with children: a child's
    change is theirs; unlogged: not in the WAL), and changes that named no table we know or lines we cannot
    read (then nothing can be skipped)."""

    changed: frozenset[str]
    always: frozenset[str]
    unknown: tuple[str, ...]
    rows: dict[str, RowKeys] = field(default_factory=dict)

    def may_skip(self, identical: frozenset[str]) -> frozenset[str]:
        """Of the tables found identical earlier, those no change can have touched since."""
        if self.unknown:
            return frozenset()
        return identical - self.changed - self.always - set(self.rows)

    def by_rows(self, identical: frozenset[str]) -> dict[str, RowKeys]:
        """Of the tables found identical earlier, those only the named rows of which can differ since."""
        if self.unknown:
            return {}
        return {table: keys for table, keys in self.rows.items()
                if table in identical and table not in self.always and table not in self.changed}


def table_changes(lines: list[str]) -> TableChanges:
    """``verify_slot_changes.sql``'s rows ("kind|hex", "rows|hex:hex", "key|hex:hex:type") as a TableChanges."""
    found: dict[str, list[str]] = {"changed": [], "always": [], "unknown": []}
    values: dict[str, set[str]] = {}
    columns: dict[str, tuple[str, str]] = {}
    for line in lines:
        kind, _, payload = line.partition("|")
        try:
            if kind == "rows":
                table, key = (bytes.fromhex(part).decode() for part in payload.split(":"))
                values.setdefault(table, set()).add(key)
            elif kind == "key":
                table, column, type_ = payload.split(":")
                if type_ not in KEY_TYPES:
                    raise ValueError(type_)
                columns[bytes.fromhex(table).decode()] = (bytes.fromhex(column).decode(), type_)
            else:
                found[kind].append(bytes.fromhex(payload).decode())
        except (KeyError, ValueError):
            found["unknown"].append(line)
    for table in set(values) - set(columns):  # rows without their key column: compared in full
        found["changed"].append(table)
    rows = {table: RowKeys(*columns[table], frozenset(keys)) for table, keys in values.items() if table in columns}
    return TableChanges(frozenset(found["changed"]), frozenset(found["always"]), tuple(found["unknown"]), rows)


def insert_position(conn: Connection) -> str:
    """The source's WAL insert position, as text."""
    return str(scalar(conn, statement("current_insert_lsn.sql")))


def written_tables(lines: list[str]) -> list[str]:
    """``verify_slot_written_since.sql``'s rows (hex of a table's name) as names; a row that is not hex stays
    as it came (it still says something was written)."""
    names = []
    for line in lines:
        try:
            names.append(bytes.fromhex(line.strip()).decode())
        except ValueError:
            names.append(line.strip())
    return sorted(name for name in names if name)


def table_shapes(conn: Connection) -> dict[str, str]:
    """Each user table's persistence and columns, as an md5."""
    return dict(rows(conn, statement("table_shapes.sql")))


def reshaped_tables(source: Endpoint, cluster: Endpoint) -> frozenset[str]:
    """Tables whose columns or persistence differ between the two sides (or that one side lacks)."""
    with session(source) as conn:
        ours = table_shapes(conn)
    with session(cluster) as conn:
        theirs = table_shapes(conn)
    return frozenset(table for table in set(ours) | set(theirs) if ours.get(table) != theirs.get(table))


def sequence_values(conn: Connection) -> list[tuple[str, int]]:
    return [(name, int(value)) for name, value in rows(conn, statement("sequences.sql"))]


def set_sequences(conn: Connection, values: list[tuple[str, int]]) -> None:
    """Logical replication does not carry sequences: set them from the source's values."""
    for name, value in values:
        execute(conn, statement("set_sequence.sql", sequence=lit(name), value=lit(value)))


# ---------------------------------------------------------------- cutover


def airflow_sessions(conn: Connection, database: str, user: str) -> tuple[int, str]:
    """(count, 'address/application, ...') of ``user``'s sessions in ``database`` but this one."""
    count, who = rows(conn, statement("airflow_sessions.sql", database=lit(database), user=lit(user)))[0]
    return int(count), who


def scheduler_heartbeats(conn: Connection, since: dt.datetime) -> int:
    return int(scalar(conn, statement("scheduler_heartbeats.sql", since=lit(since))))


def record_cutover(conn: Connection, run_id: str, host: str, role: str, outcome: str, record: str) -> None:
    """One row of pgha_cutover_log (the table is created on first use)."""
    execute(conn, statement("cutover_log_table.sql"))
    execute(conn, statement("cutover_record.sql", run_id=lit(run_id), host=lit(host), role=lit(role),
                            outcome=lit(outcome), record=lit(record)))


@dataclass(frozen=True)
class CutoverRecord:
    """One agent's recorded outcome (a row of pgha_cutover_log, or its RECORD line in the agent's log)."""

    host: str
    role: str
    outcome: str
    detail: str
    started: dt.datetime | None
    steps: list[dict[str, Any]]

    @property
    def stopped_seconds(self) -> float:
        """How long this host's Airflow was stopped: the steps from ``stop`` to the (re)start."""
        names = [s.get("step") for s in self.steps]
        if "stop" not in names:
            return 0.0
        window = self.steps[names.index("stop"):]
        return round(sum(float(s.get("seconds") or 0) for s in window if s.get("step") != "healthy"), 2)


def cutover_records(conn: Connection, run_id: str) -> list[CutoverRecord]:
    """What a run's agents recorded, oldest first; nothing before the first record (read-only)."""
    if not scalar(conn, statement("cutover_log_exists.sql")):
        return []
    return [CutoverRecord(host, role, outcome, detail, started, list(steps or []))
            for host, role, outcome, detail, started, steps in rows(conn, statement("cutover_records.sql",
                                                                                       run_id=lit(run_id)))]


def cutover_outcome(conn: Connection, run_id: str, role: str) -> str | None:
    execute(conn, statement("cutover_log_table.sql"))
    return scalar(conn, statement("cutover_outcome.sql", run_id=lit(run_id), role=lit(role)))
