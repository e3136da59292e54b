"""Edit airflow.cfg in place: only the keys pgha owns, everything else kept.

Airflow 3: sql_alchemy_conn lives in [database], result_backend in [celery].
fernet_key and the API/JWT secrets are never touched: if they changed, stored
connections and variables would become unreadable. Values are given and returned
as Airflow reads them; in the file they are escaped for its configparser
(``pgha.secret_formats.ini_value``: a percent-encoded password's ``%`` doubled).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from pgha.secret_formats import ini_read, ini_value, sqlalchemy_url

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _key_pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(key)}\s*=")


def get_option(text: str, section: str, key: str) -> str | None:
    """The value of ``key`` in ``[section]`` as Airflow reads it, or None."""
    current = None
    for line in text.splitlines():
        header = _SECTION.match(line)
        if header:
            current = header.group(1).strip()
        elif current == section and _key_pattern(key).match(line):
            return ini_read(line.split("=", 1)[1].strip())
    return None


def set_option(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``key = value`` in ``[section]`` (replaced, or added; section created if absent)."""
    value = ini_value(value)
    lines = text.splitlines()
    current, section_end = None, None
    for i, line in enumerate(lines):
        header = _SECTION.match(line)
        if header:
            if current == section and section_end is None:
                section_end = i
            current = header.group(1).strip()
        elif current == section and _key_pattern(key).match(line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    if current == section and section_end is None:
        section_end = len(lines)
    if section_end is None:
        lines += ["", f"[{section}]", f"{key} = {value}"]
    else:
        insert_at = section_end
        while insert_at > 0 and not lines[insert_at - 1].strip():
            insert_at -= 1
        lines.insert(insert_at, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def database_url(login: str, password: str, host: str, port: int, database: str, scheme: str = "postgresql",
                 verify_ca: str | None = None) -> str:
    """A SQLAlchemy URL with the credentials percent-encoded; with ``verify_ca`` (a CA file on the Airflow
    host) libpq verifies the server's certificate and name (sslmode=verify-full)."""
    url = sqlalchemy_url(scheme, login, password, host, port, database)
    if verify_ca:
        url += "?" + urlencode({"sslmode": "verify-full", "sslrootcert": verify_ca})
    return url


def repoint(text: str, sql_alchemy_conn: str, result_backend: str | None) -> str:
    """airflow.cfg text pointing at the new database; result_backend only where Celery uses one."""
    text = set_option(text, "database", "sql_alchemy_conn", sql_alchemy_conn)
    uses_celery = "celery" in (get_option(text, "core", "executor") or "").lower()
    if result_backend and (uses_celery or get_option(text, "celery", "result_backend") is not None):
        text = set_option(text, "celery", "result_backend", result_backend)
    return text
