-- On the source: the subscription confirmed everything written so far. {slot}: a literal.
SELECT coalesce(bool_and(confirmed_flush_lsn >= pg_current_wal_lsn()), false)
FROM pg_replication_slots
WHERE slot_name = {slot};
