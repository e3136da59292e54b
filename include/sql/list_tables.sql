-- Every user table of the database, the unit row counts and checksums are taken over: schema, name, and the
-- table's key wherever tables are compared, schema.name with each part in double quotes (quotes inside doubled)
-- unless it is lowercase letters, digits and underscores: a dot inside a quoted part cannot make two tables one,
-- as "a.b".c and a."b.c" would be as plain schema.name. Not quote_ident: it also quotes keywords, and which
-- words are keywords depends on the major (system_user is one from 16), so one table would have two keys
-- between a 13 source and a 16 cluster. The same expression in table_shapes.sql and verify_slot_changes.sql.
SELECT n.nspname, c.relname,
       CASE WHEN n.nspname ~ '^[a-z_][a-z0-9_]*$' THEN n.nspname ELSE '"' || replace(n.nspname, '"', '""') || '"' END || '.' || CASE WHEN c.relname ~ '^[a-z_][a-z0-9_]*$' THEN c.relname ELSE '"' || replace(c.relname, '"', '""') || '"' END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND c.relpersistence <> 't'  -- another session's temporary table cannot be read
ORDER BY 1, 2;
