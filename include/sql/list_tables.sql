-- Every user table of the database, the unit row counts and checksums are taken over: schema, name, and the
-- name as quote_ident writes it (the table's key wherever tables are compared: a dot inside a quoted name
-- cannot make two tables one, as "a.b".c and a."b.c" would be as plain schema.name).
SELECT n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND c.relpersistence <> 't'  -- another session's temporary table cannot be read
ORDER BY 1, 2;
