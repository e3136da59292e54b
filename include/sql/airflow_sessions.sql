-- Sessions of the Airflow login in its database, but this one, and where they come from.
SELECT count(*), coalesce(string_agg(DISTINCT coalesce(client_addr::text, 'local') || '/' || application_name, ', '), '')
FROM pg_stat_activity
WHERE datname = {database} AND usename = {user} AND pid <> pg_backend_pid();
