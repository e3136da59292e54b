-- What logical replication from this database needs, one row per problem.
SELECT 'wal_level is ' || current_setting('wal_level') || ', needs logical'
WHERE current_setting('wal_level') <> 'logical'
UNION ALL
SELECT 'table ' || n.nspname || '.' || c.relname || ' has no primary key or replica identity'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (c.relreplident = 'n'
       OR (c.relreplident = 'd'
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)));
