-- On the source: the subscription confirmed the position {lsn} (a literal, text) or later. {slot}: a literal.
SELECT coalesce(bool_and(confirmed_flush_lsn >= {lsn}::pg_lsn), false)
FROM pg_replication_slots
WHERE slot_name = {slot};
