-- Sessions of database {database} holding a transaction open for at least {min_age} seconds, oldest
-- first: behind PgBouncer in transaction pooling, each keeps a server connection a PAUSE waits for.
SELECT pid, usename, coalesce(application_name, ''), client_addr::text, xact_start::text, query_start::text,
       coalesce(state, ''), extract(epoch FROM clock_timestamp() - xact_start)::float8
FROM pg_stat_activity
WHERE datname = {database}
  AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
  AND xact_start IS NOT NULL
  AND clock_timestamp() - xact_start >= make_interval(secs => {min_age})
ORDER BY xact_start;
