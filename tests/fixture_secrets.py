"""Test-only credentials of the throw-away loopback services.

The PostgreSQL passwords hold what breaks a naive writer of each format pgha uses
(airflow.cfg's `%`, URLs' `@ : /`, conninfo's quotes and backslash, pgpass's `:`,
shells' `$ # ;` and spaces): every test that logs in with them proves that path.
"""

# Test-only credentials (never used outside these throw-away loopback services).
POSTGRES_PASSWORD = "su %40pw@h:1/'\"\\ $HOME#;%%"
PATRONI_REST_USER = "pgha-rest"
PATRONI_REST_PASSWORD = "rest %40pw@h:1/'\"\\ $x#;"
PATRONI_SUPERUSER_PASSWORD = "super %40pw@h:1/'\"\\ $x#;%%"
PATRONI_REPLICATION_PASSWORD = "repl %40pw@h:1/'\"\\ $x#;\\"
AIRFLOW_DB_PASSWORD = "app %40pw@h:1/'\"\\ $x#;%s\\"  # the app login (pgha_airflow_db) the drill probe uses


def _test_run_ca():  # made per test process; its key never leaves it
    from pgha import tls

    return tls.make_ca("pgha test-run CA")


TEST_CA = _test_run_ca()
