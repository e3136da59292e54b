"""Any password works: each format pgha writes a secret into gives back exactly that secret.

The writers are pgha.secret_formats (through airflowcfg, pgdata and the patroni.yml
template); the readers are the real ones: Airflow's configparser, SQLAlchemy, libpq
(connection strings and password files, against a real PostgreSQL) and PyYAML.
"""

from __future__ import annotations

import configparser
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from pg_pair import superuser
from psycopg2 import sql
from psycopg2.extensions import parse_dsn
from services import PostgresService
from sqlalchemy.engine import make_url

from pgha import airflowcfg, pgdata, secret_formats
from pgha.inventory import parse_inventory
from pgha.osfamily import DEBIAN
from pgha.pgdata import Endpoint
from pgha.render import node_context, render
from pgha_testing import shipped_inventory

HOSTILE = [
    pytest.param("p%40ss@w:rd/'\"\\ $x#;", id="everything"),
    pytest.param(" x ", id="spaces-around"),
    pytest.param("   ", id="spaces-only"),
    pytest.param("100%% %s %(home)s %", id="percents"),
    pytest.param("ends-with-backslash\\", id="trailing-backslash"),
    pytest.param("\\'\\:\\\\", id="escapes-of-escapes"),
    pytest.param("a:b:c\\:d", id="colons"),
    pytest.param("#;=&?+[]{}`!*", id="punctuation"),
    pytest.param("caf\u00e9 \u00fc", id="non-ascii"),
]

CFG = """\
[core]
executor = CeleryExecutor
fernet_key = KEEP-ME

[database]
sql_alchemy_conn = postgresql+psycopg2://airflow_user:old@127.0.0.1:5432/airflow_db

[celery]
result_backend = db+postgresql+psycopg2://airflow_user:old@127.0.0.1:5432/airflow_db
"""


@pytest.fixture(scope="module")
def airflow_parser() -> Any:
    """Airflow's own configparser (built once: it loads every default); each read_string replaces the values."""
    from airflow.configuration import AirflowConfigParser

    return AirflowConfigParser()


@pytest.mark.parametrize("password", HOSTILE)
def test_airflow_reads_back_the_url_and_sqlalchemy_the_password(airflow_parser: Any, password: str) -> None:
    url = airflowcfg.database_url("airflow user@x", password, "127.0.0.1", 5000, "airflow_db",
                                  scheme="postgresql+psycopg2")
    text = airflowcfg.repoint(CFG, url, "db+" + url)
    airflow_parser.read_string(text)
    assert airflow_parser.get("database", "sql_alchemy_conn") == url
    assert airflow_parser.get("celery", "result_backend") == "db+" + url
    assert airflowcfg.get_option(text, "database", "sql_alchemy_conn") == url
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "airflow user@x", password, "127.0.0.1", 5000, "airflow_db")
    assert make_url(url.removeprefix("db+")).password == password


def test_an_unescaped_percent_is_what_breaks_airflow(airflow_parser: Any) -> None:
    """Why ini_value exists: the URL written as is fails to load."""
    airflow_parser.read_string("[database]\nsql_alchemy_conn = postgresql://u:p%40ss@h:5/d\n")
    with pytest.raises(configparser.InterpolationSyntaxError):
        airflow_parser.get("database", "sql_alchemy_conn")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", " lead", "trail "])
def test_ini_value_refuses_what_configparser_cannot_keep(value: str) -> None:
    with pytest.raises(ValueError):
        secret_formats.ini_value(value)


@pytest.mark.parametrize("password", HOSTILE)
def test_conninfo_parses_back(password: str) -> None:
    endpoint = Endpoint(host="127.0.0.1", port=5432, user="o'neil \\x", dbname="airflow db", password=password)
    parsed = parse_dsn(pgdata.conninfo(endpoint))
    assert parsed == {"host": "127.0.0.1", "port": "5432", "user": "o'neil \\x", "dbname": "airflow db",
                      "password": password}


@pytest.mark.parametrize("password", HOSTILE)
def test_patroni_yml_gives_back_the_secrets(password: str) -> None:
    inv = parse_inventory(shipped_inventory(), "include/inventory.yml")
    secrets = {"rest_user": "patroni", "rest_password": password, "superuser": "postgres",
               "superuser_password": password, "replication_user": "replicator", "replication_password": password}
    cfg = yaml.safe_load(render("patroni.yml.j2", secrets=secrets, **node_context(inv, inv.db_hosts[0], DEBIAN)))
    auth = cfg["postgresql"]["authentication"]
    assert cfg["restapi"]["authentication"]["password"] == password
    assert auth["superuser"]["password"] == auth["rewind"]["password"] == password
    assert auth["replication"]["password"] == password


def test_pgpass_refuses_a_line_break() -> None:
    with pytest.raises(ValueError):
        secret_formats.pgpass_line("h", 5432, "*", "u", "two\nlines")


# ---------------------------------------------------------------- libpq against a real PostgreSQL

_roles = itertools.count()


@pytest.fixture
def hostile_role(postgres: PostgresService, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A login role (its name hostile too) whose password is the test's password; dropped afterwards."""
    role, password = f"pgha pw:{next(_roles)}'\\", request.param
    with pgdata.session(superuser(postgres)) as conn:
        pgdata.ensure_login_role(conn, role, password)
    try:
        yield role, password
    finally:
        with pgdata.session(superuser(postgres)) as conn:
            pgdata.execute(conn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _whoami(conn: psycopg2.extensions.connection) -> str:
    try:
        return pgdata.scalar(conn, sql.SQL("SELECT current_user"))
    finally:
        conn.close()


@pytest.mark.parametrize("hostile_role", HOSTILE, indirect=True)
def test_libpq_logs_in_through_pgpass_and_conninfo(postgres: PostgresService, hostile_role: tuple[str, str],
                                                   tmp_path: Path) -> None:
    role, password = hostile_role
    endpoint = Endpoint(host=postgres.host, port=postgres.port, user=role, password=password)
    passfile = tmp_path / "pgpass"
    # another entry first, so the right line is found among several
    passfile.write_text(pgdata.pgpass(superuser(postgres), endpoint))
    passfile.chmod(0o600)
    by_file = Endpoint(host=postgres.host, port=postgres.port, user=role, passfile=str(passfile))
    assert _whoami(by_file.connect()) == role
    assert _whoami(psycopg2.connect(pgdata.conninfo(endpoint))) == role
    wrong = Endpoint(host=postgres.host, port=postgres.port, user=role, password=password + "x")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        wrong.connect()


@pytest.mark.parametrize("password", HOSTILE)
def test_subscription_conninfo_survives_the_sql_literal(postgres: PostgresService, password: str) -> None:
    """What CREATE SUBSCRIPTION stores is the conninfo pgha built (connect = false: no publisher needed)."""
    publisher = Endpoint(host="127.0.0.1", port=5432, user="replicator", dbname="airflow_db", password=password)
    create = sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                     "WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE)").format(
        pgdata.ident("pgha pw test"), pgdata.lit(pgdata.conninfo(publisher)), pgdata.ident(pgdata.PUBLICATION))
    with pgdata.session(superuser(postgres)) as conn:
        pgdata.execute(conn, create)
        try:
            stored = pgdata.scalar(conn, sql.SQL("SELECT subconninfo FROM pg_subscription WHERE subname = {}")
                                   .format(sql.Literal("pgha pw test")))
        finally:
            pgdata.execute(conn, sql.SQL("DROP SUBSCRIPTION {}").format(pgdata.ident("pgha pw test")))
    assert parse_dsn(stored)["password"] == password


@pytest.mark.parametrize("name", ["replicator", "all", "o'neil", 'say "hi" #not-a-comment', "a b,c"])
def test_a_role_name_in_pg_hba_is_read_back_by_postgres(postgres: PostgresService, name: str) -> None:
    """hba_word: PostgreSQL's own parser (pg_hba_file_rules reads the file on disk) sees the name."""
    with pgdata.session(superuser(postgres)) as conn:
        hba_file = Path(pgdata.scalar(conn, sql.SQL("SHOW hba_file")))
        original = hba_file.read_text()
        try:
            hba_file.write_text(original + f"host airflow_db {secret_formats.hba_word(name)} 10.0.0.0/8 scram-sha-256\n")
            found = pgdata.rows(conn, sql.SQL("SELECT user_name, error FROM pg_hba_file_rules "
                                              "WHERE address = '10.0.0.0'"))
        finally:
            hba_file.write_text(original)
    assert found == [([name], None)]


# ---------------------------------------------------------------- the lab's secrets and the files it writes


@pytest.fixture(scope="module")
def lab_host() -> Any:
    """lab/provision/airflow_host.py (standard library only; nothing of the lab runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lab_airflow_host", Path(__file__).resolve().parent.parent / "lab" / "provision" / "airflow_host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lab_makes_every_pgha_password_hostile_and_upgrades_old_ones(lab_host: Any) -> None:
    made = lab_host.complete({})
    assert set(lab_host.PASSWORDS) == {"airflow_db_password", "pg_superuser_password", "pg_replication_password",
                                       "patroni_api_password", "pg_rewind_password", "etcd_root_password",
                                       "etcd_patroni_password", "etcd_pgha_password"}
    assert all(made[name].endswith(lab_host.HOSTILE_TAIL) for name in lab_host.PASSWORDS)
    assert lab_host.complete(made) == made  # made once, kept
    old = {**made, "airflow_db_password": "plain-old-token", "admin_password": "plain-admin"}
    upgraded = lab_host.complete(old)
    assert upgraded["airflow_db_password"].endswith(lab_host.HOSTILE_TAIL)
    assert upgraded["admin_password"] == "plain-admin" and upgraded["fernet_key"] == made["fernet_key"]


def test_the_lab_airflow_cfg_gives_airflow_the_password(lab_host: Any, airflow_parser: Any) -> None:
    secrets = lab_host.complete({})
    for local in (True, False):
        airflow_parser.read_string(lab_host.airflow_cfg(secrets, "10.0.0.9", local=local))
        url = make_url(airflow_parser.get("database", "sql_alchemy_conn"))
        assert (url.username, url.password, url.host) == (
            "airflow_user", secrets["airflow_db_password"], "127.0.0.1" if local else "10.0.0.9")
        backend = make_url(airflow_parser.get("celery", "result_backend").removeprefix("db+"))
        assert backend.password == secrets["airflow_db_password"]
        assert make_url(airflow_parser.get("celery", "broker_url")).password == secrets["redis_password"]
        assert airflow_parser.get("core", "fernet_key") == secrets["fernet_key"]


def test_the_lab_env_file_gives_bash_the_connections(lab_host: Any, tmp_path: Path) -> None:
    """/etc/pgha/airflow.env as bash reads it (pgha-airflow: `set -a; .`); systemd's EnvironmentFile=
    unescapes the same way inside double quotes (\\ \" \\$ \\` only)."""
    import json
    import subprocess

    secrets = lab_host.complete({})
    hosts = {"vm1": {"ip": "10.0.0.9"}}
    env = tmp_path / "airflow.env"
    env.write_text(lab_host.env_file(secrets, hosts, {"vm1": "ssh-ed25519 AAAA"},
                                     {"host": "10.0.0.1", "port": 2222, "host_key": "ssh-ed25519 BBBB"}))
    shown = subprocess.run(["bash", "-c", 'set -euo pipefail; set -a; . "$1"; set +a; env -0', "-", str(env)],
                           capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    read = dict(item.split("=", 1) for item in shown.split("\0") if item.startswith("AIRFLOW_CONN_"))
    conns = {name.removeprefix("AIRFLOW_CONN_").lower(): json.loads(value) for name, value in read.items()}
    assert conns["pgha_airflow_db"]["password"] == secrets["airflow_db_password"]
    assert conns["pgha_source_db"]["password"] == secrets["airflow_db_password"]
    assert conns["pgha_pg_superuser"]["password"] == secrets["pg_superuser_password"]
    assert conns["pgha_pg_replication"]["password"] == secrets["pg_replication_password"]
    assert conns["pgha_patroni_api"]["password"] == secrets["patroni_api_password"]
