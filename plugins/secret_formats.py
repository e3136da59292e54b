"""How a value, a password above all, is written into each format pgha puts one in.

A password may hold any printable character (``% @ : / ' " \\ $ # ;``, spaces).
Each function writes it so that the format's own reader gives it back unchanged;
every place that writes one of these formats uses the function here, so the
rule lives in one place:

- ``url_part``/``sqlalchemy_url``: SQLAlchemy URLs (airflow.cfg, Celery's result backend)
- ``ini_value``/``ini_read``: a value of airflow.cfg (Airflow's configparser interpolates ``%``)
- ``conninfo``: a libpq connection string (CREATE SUBSCRIPTION ... CONNECTION)
- ``pgpass_line``: a line of a libpq password file
- ``yaml_quote``: a YAML scalar in a Jinja template (patroni.yml)
- ``hba_word``: a user name in a pg_hba rule

A value that reaches a shell is ``shlex.quote``'d where the command is built; a
secret never does (stdin or 0600 files). Standard library only: the cutover agent
imports this on the Airflow hosts, and the lab's provisioning loads it by path.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

_PLAIN_HBA_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HBA_KEYWORDS = {"all", "sameuser", "samerole", "samegroup", "replication"}


def _one_line(value: str, where: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"a value written into {where} cannot hold a line break or NUL")
    return value


def url_part(value: str) -> str:
    """``value`` percent-encoded for the user or password of a URL (every reserved character)."""
    return quote(value, safe="")


def sqlalchemy_url(scheme: str, login: str, password: str, host: str, port: int, database: str) -> str:
    """A SQLAlchemy URL; ``make_url(url).password == password`` for any password."""
    return f"{scheme}://{url_part(login)}:{url_part(password)}@{host}:{port}/{database}"


def ini_value(value: str) -> str:
    """``value`` as written after ``key =`` in airflow.cfg, so that Airflow reads it back unchanged.

    Airflow's configparser interpolates: a single ``%`` (as in a percent-encoded
    URL, ``%40``) raises InterpolationSyntaxError, so every ``%`` is doubled.
    configparser strips a value's surrounding whitespace and ends it at the line.
    """
    _one_line(value, "airflow.cfg")
    if value != value.strip():
        raise ValueError("an airflow.cfg value cannot begin or end with whitespace")
    return value.replace("%", "%%")


def ini_read(raw: str) -> str:
    """The value Airflow reads from ``raw`` as written in airflow.cfg (the inverse of ``ini_value``)."""
    return raw.replace("%%", "%")


def libpq_value(value: str) -> str:
    """``value`` single-quoted for a libpq connection string (``\\`` and ``'`` backslash-escaped)."""
    return "'" + _one_line(value, "a connection string").replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(**pairs: Any) -> str:
    """A libpq ``key='value' ...`` connection string; ``psycopg2.extensions.parse_dsn`` gives the values back.

    It is a value itself: pass it to SQL as ``psycopg2.sql.Literal``, never formatted in."""
    return " ".join(f"{key}={libpq_value(str(value))}" for key, value in pairs.items())


def pgpass_line(host: str, port: int | str, database: str, user: str, password: str) -> str:
    """One line of a libpq password file: ``:`` and ``\\`` escaped in every field."""
    fields = [str(f) for f in (host, port, database, user, password)]
    for field in fields:
        _one_line(field, "a pgpass file")
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"


def yaml_quote(value: Any) -> str:
    """``value`` as a YAML double-quoted scalar that ``yaml.safe_load`` returns unchanged.

    JSON (``tojson``) is not enough: it writes characters outside the BMP as a
    surrogate pair (``\\ud83d\\ude00``), which PyYAML (and so Patroni) decodes
    into two lone surrogates. Here everything but printable ASCII becomes a
    YAML escape (``\\xXX``, ``\\uXXXX``, ``\\UXXXXXXXX``).
    """
    out: list[str] = []
    for char in str(value):
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def hba_word(name: str) -> str:
    """A role name as a pg_hba.conf field: as is when plain, else double-quoted (``"`` doubled)."""
    _one_line(name, "pg_hba.conf")
    if _PLAIN_HBA_WORD.fullmatch(name) and name not in _HBA_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def haproxy_word(value: str) -> str:
    """``value`` as one haproxy.cfg word, read back verbatim: single-quoted (no escape, no variable
    inside), each ``'`` written as ``'\\''``."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("a control character cannot be written into haproxy.cfg")
    return "'" + value.replace("'", "'\\''") + "'"
