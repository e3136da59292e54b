-- On the source: the change slot, unless a session still uses it; then what is left of it (no row: gone).
-- {slot}: a literal.
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {slot} AND NOT active;
SELECT slot_name || ' (in use by pid ' || coalesce(active_pid::text, '?') || ')'
FROM pg_replication_slots WHERE slot_name = {slot};
