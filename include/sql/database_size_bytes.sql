-- Size of the current database in bytes, for the cutover's stopped-window estimate.
SELECT pg_database_size(current_database());
