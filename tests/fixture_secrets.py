"""Test-only credentials of the throw-away loopback services."""

# Test-only credentials (never used outside these throw-away loopback services).
POSTGRES_PASSWORD = "pgha-test-pw-1"
PATRONI_REST_USER = "pgha-rest"
PATRONI_REST_PASSWORD = "pgha-test-rest-pw"
PATRONI_SUPERUSER_PASSWORD = "pgha-test-super-pw"
PATRONI_REPLICATION_PASSWORD = "pgha-test-repl-pw"
AIRFLOW_DB_PASSWORD = "pgha-test-app-pw"  # the app login (pgha_airflow_db) the drill probe uses
