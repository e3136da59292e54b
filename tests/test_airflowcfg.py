"""airflow.cfg edits: only the keys pgha owns change; fernet key and secrets stay."""

from __future__ import annotations

from pgha.airflowcfg import database_url, get_option, repoint, set_option

CFG = """\
[core]
executor = LocalExecutor
fernet_key = KEEP-ME
# a comment that stays

[database]
sql_alchemy_conn = postgresql+psycopg2://airflow_user:old@127.0.0.1:5432/airflow_db
sql_alchemy_pool_size = 5

[api_auth]
jwt_secret = ALSO-KEEP
"""


def test_repoint_changes_only_the_database_url() -> None:
    url = database_url("airflow_user", "p@ss:/w rd", "127.0.0.1", 5433, "airflow_db", scheme="postgresql+psycopg2")
    new = repoint(CFG, url, "db+" + url)
    assert get_option(new, "database", "sql_alchemy_conn") == url
    assert url == "postgresql+psycopg2://airflow_user:p%40ss%3A%2Fw%20rd@127.0.0.1:5433/airflow_db"
    assert get_option(new, "celery", "result_backend") is None  # LocalExecutor: no Celery section added
    before, after = CFG.splitlines(), new.splitlines()
    assert [a for a, b in zip(before, after) if a != b] == [before[6]]
    assert "fernet_key = KEEP-ME" in new and "jwt_secret = ALSO-KEEP" in new


def test_celery_result_backend_is_repointed_when_celery_is_used() -> None:
    cfg = CFG.replace("LocalExecutor", "CeleryExecutor")
    new = repoint(cfg, "postgresql://u:p@h:5433/d", "db+postgresql://u:p@h:5433/d")
    assert get_option(new, "celery", "result_backend") == "db+postgresql://u:p@h:5433/d"


def test_set_option_inserts_into_an_existing_section_and_creates_missing_ones() -> None:
    text = set_option(CFG, "database", "new_key", "1")
    assert text.index("new_key = 1") < text.index("[api_auth]")
    text = set_option(text, "celery", "result_backend", "x")
    assert text.rstrip().endswith("[celery]\nresult_backend = x")
    assert set_option(text, "celery", "result_backend", "x") == text


def test_a_percent_is_doubled_in_the_file_and_read_back_single() -> None:
    """Airflow's configparser interpolates '%': a percent-encoded password is written '%%'."""
    url = database_url("airflow_user", "100% p@ss", "127.0.0.1", 5433, "airflow_db")
    new = repoint(CFG, url, None)
    assert "sql_alchemy_conn = postgresql://airflow_user:100%%25%%20p%%40ss@127.0.0.1:5433/airflow_db" in new
    assert get_option(new, "database", "sql_alchemy_conn") == url
