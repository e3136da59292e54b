-- Every sequence that was used, with its current value (logical replication
-- does not carry sequences; unused ones are as fresh on the cluster).
SELECT format('%I.%I', schemaname, sequencename), last_value
FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  AND last_value IS NOT NULL
ORDER BY 1;
