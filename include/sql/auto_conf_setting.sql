-- What postgresql.auto.conf (ALTER SYSTEM) holds for a setting: no row when it holds nothing. {name}: a literal.
SELECT setting FROM pg_file_settings
WHERE name = {name} AND sourcefile LIKE '%/postgresql.auto.conf'
ORDER BY seqno DESC LIMIT 1;
