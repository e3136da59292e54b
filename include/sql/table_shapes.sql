-- Every user table's shape: its persistence and its columns (name and type, in order), one md5 a table. A
-- schema change is not in the WAL the change slot decodes: a table whose shape differs between source and
-- cluster is compared in full whatever the slot says. Names as list_tables.sql keys them.
SELECT CASE WHEN n.nspname ~ '^[a-z_][a-z0-9_]*$' THEN n.nspname ELSE '"' || replace(n.nspname, '"', '""') || '"' END || '.' || CASE WHEN c.relname ~ '^[a-z_][a-z0-9_]*$' THEN c.relname ELSE '"' || replace(c.relname, '"', '""') || '"' END,
       md5(c.relpersistence::text || ':' || coalesce(string_agg(quote_ident(a.attname) || ' '
                                                          || format_type(a.atttypid, a.atttypmod), ', '
                                                          ORDER BY a.attnum), ''))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND c.relpersistence <> 't'
GROUP BY n.nspname, c.relname, c.relpersistence;
