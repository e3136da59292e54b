-- Size of the current database, for the log.
SELECT pg_size_pretty(pg_database_size(current_database()));
