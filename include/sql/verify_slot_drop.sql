-- On the source: the change slot of an earlier try, unless a session still uses it. {slot}: a literal.
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {slot} AND NOT active;
