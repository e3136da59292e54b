-- Every sequence with its current value (logical replication does not carry them).
SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, 0), last_value IS NOT NULL
FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1;
