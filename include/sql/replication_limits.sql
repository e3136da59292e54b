-- The source's limits logical replication needs (only a restart changes them) and the replication
-- slots other than pgha's own (a re-run finds that one in use by the migration itself). {slot}: a literal.
SELECT name, setting FROM pg_settings WHERE name IN ('max_replication_slots', 'max_wal_senders')
UNION ALL
SELECT 'used_slots', count(*)::text FROM pg_replication_slots WHERE slot_name <> {slot};
