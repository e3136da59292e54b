"""PgBouncer as data: its file formats, its settings per Airflow host, the answers of its admin console.

Model module (no hook): what ``include/templates/pgbouncer.ini.j2`` and the auth and HBA
files are given, each value escaped for the format PgBouncer reads it in:

- ``ini_key``: a database name as the key of a ``[databases]`` line (PgBouncer 1.18 reads no quoted
  key there: a name of other characters than letters, digits and ``_`` is refused);
- ``connstr_value``: a value inside that line's connect string (single-quoted, ``'`` doubled);
- ``auth_file_line``: a line of ``auth_file``, ``"user" "secret"`` (``"`` doubled in each);
- ``hba_word``: a name in ``auth_hba_file`` (pg_hba.conf rules).

Authentication (why SCRAM verifiers in ``auth_file``, not ``auth_query``): the files hold no
password, only each role's ``SCRAM-SHA-256$...`` verifier as copied from ``pg_authid``; no
extra role with the right to read ``pg_authid`` is created on the source and the cluster; and
PgBouncer never logs in to a server on its own. PgBouncer checks the client's SCRAM proof
against the verifier and logs in to the server by SCRAM pass-through (PgBouncer >= 1.14),
which works only where the server holds the SAME verifier (same salt): so the cluster's role
must carry the source's verifier before PgBouncer is switched to it (``verifier_mismatch``).
``auth_query`` would not lift that constraint (a client that logged in with the source's
verifier cannot be passed through to a server with another one) and needs the auth user's
password in plain text in ``auth_file``.

The admin console: ``admin_users`` is the OS user PgBouncer runs as, allowed by ``peer`` on
the Unix socket only (HBA), so it needs no password at all and nothing but that user (and
root) on the host itself can reach it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

from pgha.secret_formats import hba_word

__all__ = ["hba_word"]

ADMIN_DATABASE = "pgbouncer"
LISTEN_ADDRESS = "127.0.0.1"
SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def _one_line(value: str, where: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"a value written into {where} cannot hold a line break or NUL")
    return value


def ini_key(name: str) -> str:
    """A database name as the key of a ``[databases]`` line (1.18's parser takes no quoted key)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"database {name!r}: PgBouncer 1.18 serves only a database name made of letters, "
                         "digits and _ (its [databases] keys cannot be quoted)")
    return name


def connstr_value(value: Any) -> str:
    """A value of a ``[databases]`` connect string: single-quoted, ``'`` doubled."""
    return "'" + _one_line(str(value), "pgbouncer.ini").replace("'", "''") + "'"


def connstr(**pairs: Any) -> str:
    """``key='value' ...`` for a ``[databases]`` line."""
    return " ".join(f"{key}={connstr_value(value)}" for key, value in pairs.items())


def auth_file_line(user: str, secret: str) -> str:
    """One line of PgBouncer's ``auth_file``: ``"user" "secret"``, each ``"`` doubled."""
    fields = [_one_line(user, "the PgBouncer auth_file"), _one_line(secret, "the PgBouncer auth_file")]
    return " ".join('"' + f.replace('"', '""') + '"' for f in fields) + "\n"


# PgBouncer 1.18 looks every user up in auth_file, peer included: the admin user gets a verifier no
# password can match (its StoredKey would be a SHA-256 preimage of 32 zero bytes).
UNUSABLE_VERIFIER = "SCRAM-SHA-256$4096:" + "A" * 22 + "==$" + "A" * 43 + "=:" + "A" * 43 + "="


def auth_file(verifiers: dict[str, str], admin_user: str | None = None) -> str:
    """The ``auth_file``: one ``"role" "SCRAM-SHA-256$..."`` line per role (sorted: a re-render is
    identical), and the admin user (peer only) with a verifier no password matches."""
    for role, verifier in verifiers.items():
        if not is_scram_verifier(verifier):
            raise ValueError(f"role {role!r} has no SCRAM-SHA-256 password on the server (an md5 or no password): "
                             "set its password with password_encryption = scram-sha-256 first")
    header = ";; Managed by pgha: SCRAM verifiers copied from pg_authid (no password in plain text).\n"
    admin = auth_file_line(admin_user, UNUSABLE_VERIFIER) if admin_user and admin_user not in verifiers else ""
    return header + "".join(auth_file_line(role, verifiers[role]) for role in sorted(verifiers)) + admin


def is_scram_verifier(value: str | None) -> bool:
    return bool(value) and SCRAM_VERIFIER.fullmatch(value or "") is not None


@dataclass(frozen=True)
class Backend:
    """Where PgBouncer sends a database's server connections."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """One Airflow host's PgBouncer: paths and names from the OS family, the rest from the inventory."""

    config: str
    auth_file: str
    hba_file: str
    socket_dir: str
    os_user: str  # runs PgBouncer; also its only admin user (peer on the socket)
    listen_port: int
    database: str
    owner: str
    backend: Backend
    pool_size: int = 20
    max_client_conn: int = 500
    # the server leg: "prefer" for a source that may not speak TLS; the cluster with TLS on refuses a plain
    # client, so to it: "verify-full" against the cluster CA (HAProxy passes TLS through to the member, whose
    # certificate names HAProxy's address and 127.0.0.1)
    server_tls_ca_file: str | None = None


def ini_context(settings: Settings) -> dict[str, Any]:
    """What ``pgbouncer.ini.j2`` renders, every value already escaped for pgbouncer.ini."""
    return {
        "database_key": ini_key(settings.database),
        "database_connstr": connstr(host=settings.backend.host, port=settings.backend.port,
                                    dbname=settings.database),
        "listen_address": LISTEN_ADDRESS,
        "listen_port": int(settings.listen_port),
        "socket_dir": _plain_path(settings.socket_dir),
        "auth_file": _plain_path(settings.auth_file),
        "hba_file": _plain_path(settings.hba_file),
        "admin_user": _plain_name(settings.os_user),
        "pool_size": int(settings.pool_size),
        "max_client_conn": int(settings.max_client_conn),
        "server_tls_sslmode": "verify-full" if settings.server_tls_ca_file else "prefer",
        "server_tls_ca_file": _plain_path(settings.server_tls_ca_file) if settings.server_tls_ca_file else None,
    }


def hba(settings: Settings) -> str:
    """The ``auth_hba_file``: the admin console by peer on the socket; the database by SCRAM on loopback."""
    return (
        "# Managed by pgha. The admin console: only PgBouncer's own OS user, on the Unix socket (peer).\n"
        f"local  {ADMIN_DATABASE}  {hba_word(settings.os_user)}  peer\n"
        "# Airflow, on this host only.\n"
        f"host   {hba_word(settings.database)}  {hba_word(settings.owner)}  {LISTEN_ADDRESS}/32  scram-sha-256\n"
    )


def _plain_path(path: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9_./-]*", path):
        raise ValueError(f"{path!r}: a PgBouncer path must be absolute and plain (letters, digits, _ . / -)")
    return path


def _plain_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise ValueError(f"{name!r}: PgBouncer's OS user must be a plain name")
    return name


def parse_csv(text: str) -> list[dict[str, str]]:
    """``psql --csv`` output of an admin console SHOW as one dict per row."""
    return list(csv.DictReader(io.StringIO(text)))


def backend_of(databases: list[dict[str, str]], database: str) -> Backend | None:
    """Where SHOW DATABASES says ``database`` goes (None when PgBouncer does not serve it)."""
    for row in databases:
        if row.get("name") == database:
            return Backend(row["host"], int(row["port"]))
    return None


def busy_servers(pools: list[dict[str, str]], database: str) -> int:
    """Server connections of ``database`` linked to a client (what a PAUSE waits for)."""
    return sum(int(row.get("sv_active") or 0) for row in pools if row.get("database") == database)


def verifier_mismatch(source: dict[str, str], target: dict[str, str]) -> list[str]:
    """Roles whose SCRAM verifier differs between the source and the target (pass-through needs them equal)."""
    return sorted(role for role in source if source[role] != target.get(role))


@dataclass(frozen=True)
class Blocker:
    """A session holding a transaction open on the server: it keeps its server connection from PgBouncer."""

    pid: int
    user: str
    application_name: str
    client_addr: str | None
    xact_start: str
    query_start: str | None
    state: str
    age_s: float

    def __str__(self) -> str:
        return (f"pid {self.pid} ({self.user}, application_name {self.application_name!r}, from "
                f"{self.client_addr or 'local'}): {self.state}, transaction open since {self.xact_start} "
                f"({self.age_s:.1f}s), last query started {self.query_start}")


class PauseTimedOut(Exception):
    """PAUSE did not finish in time; PgBouncer was resumed. Carries what held it."""

    def __init__(self, database: str, timeout: float, blockers: list[Blocker]) -> None:
        self.database = database
        self.timeout = timeout
        self.blockers = blockers
        held = "; ".join(map(str, blockers)) or "no open transaction seen any more (it ended in the meantime)"
        super().__init__(f"PAUSE {database} did not finish within {timeout:g}s and was undone (RESUME); "
                         f"held by: {held}")


class ResumeFailed(Exception):
    """RESUME failed on some PgBouncers: Airflow's transactions wait there until one is sent."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("RESUME failed on " + "; ".join(f"{host}: {why}" for host, why in failures.items())
                         + ": Airflow's transactions wait there (a re-run resumes every PgBouncer)")
