-- The logical replication slots of the server (wal_level must stay logical while one exists).
SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1;
