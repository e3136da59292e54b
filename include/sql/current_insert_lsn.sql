-- The source's WAL insert position. As the first statement of a repeatable-read transaction, its snapshot is
-- taken first: every transaction the snapshot sees has its commit record before this position.
SELECT pg_current_wal_insert_lsn()::text;
