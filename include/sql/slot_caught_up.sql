-- On the source: the subscription confirmed everything written so far. {slot}: a literal.
-- The insert position, not pg_current_wal_lsn() (the write position): with synchronous_commit = off a
-- commit is visible before its WAL is written, and the write position would call the slot caught up
-- one commit early.
SELECT coalesce(bool_and(confirmed_flush_lsn >= pg_current_wal_insert_lsn()), false)
FROM pg_replication_slots
WHERE slot_name = {slot};
