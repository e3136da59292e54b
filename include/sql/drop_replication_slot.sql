-- Drops a leftover slot on the source (a subscription that is gone keeps it). {slot}: a literal.
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {slot} AND NOT active;
