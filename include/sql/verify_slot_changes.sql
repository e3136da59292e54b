-- On the source: the user tables a transaction committed since the change slot was made changed, read
-- without consuming the slot. test_decoding writes "table <schema>.<name>: INSERT: <column>[<type>]:<value> ..."
-- (names quoted as quote_ident does; a TRUNCATE lists every table it emptied, comma-separated). Rows:
--   changed|<hex of schema.name>          (names keyed as list_tables.sql keys them) a change names it: the table is compared in full;
--   rows|<hex of schema.name>:<hex key>   a table whose primary key is one integer or uuid column, its first,
--                                         and its replica identity, and every change to which named its row (old and new key of an
--                                         UPDATE that moved it; no TRUNCATE): only these rows are compared;
--   key|<hex of schema.name>:<hex column>:<type>   that table's key column and type (pg_type's name);
--   always|<hex of schema.name>           compared whatever the slot says: it has inheritance children or
--                                         partitions (their rows are its rows, their changes logged under
--                                         their names), or it is unlogged (its changes are not in the WAL);
--   unknown|<hex of head>                 a change names a table we do not know, alone or in a TRUNCATE's list
--                                         (the caller then compares every table).
-- Hex: a name may hold any character, psql's output is one line per row. Only what the WAL flushed so far is
-- read (the caller waits for the subscription first, which implies it). {slot}: a literal; {made_at}: the
-- position the caller's pg_create_logical_replication_slot returned. A slot whose position differs was made
-- again since (another try of the task): it cannot vouch for what changed before, an unknown row says so.
-- A key is read only where the line's layout leaves no doubt (right after "table <name>: <operation>:", the
-- first column's name and type, a value of digits or a quoted uuid): a text value further on cannot pose as one.
WITH changes AS MATERIALIZED (
    SELECT data
    FROM pg_logical_slot_peek_changes({slot}, NULL, NULL, 'include-xids', '0', 'skip-empty-xacts', '1')
    WHERE data LIKE 'table %'
), heads AS (
    -- a name: "quoted" (doubled quotes inside) or bare, twice with a dot between; a list of them, comma-separated
    SELECT DISTINCT substring(data FROM '^table ((?:(?:"(?:[^"]|"")*"|[^",:. ]+)[.](?:"(?:[^"]|"")*"|[^",:. ]+)(?:, )?)+): (?:INSERT|UPDATE|DELETE|TRUNCATE):') AS head
    FROM changes
), tables AS (
    -- name: the key list_tables.sql gives it; quoted: as test_decoding writes it (keywords quoted too)
    SELECT c.oid, CASE WHEN n.nspname ~ '^[a-z_][a-z0-9_]*$' THEN n.nspname ELSE '"' || replace(n.nspname, '"', '""') || '"' END || '.' || CASE WHEN c.relname ~ '^[a-z_][a-z0-9_]*$' THEN c.relname ELSE '"' || replace(c.relname, '"', '""') || '"' END AS name,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS quoted,
           c.relhassubclass OR c.relpersistence = 'u' AS always, c.relreplident
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
      AND c.relpersistence <> 't'
), named AS (
    SELECT h.head, t.name, t.quoted
    FROM heads h JOIN tables t
      ON h.head = t.quoted OR starts_with(h.head, t.quoted || ', ') OR right(h.head, length(t.quoted) + 2) = ', ' || t.quoted
         OR position(', ' || t.quoted || ', ' IN h.head) > 0
), placed AS (
    -- every name of the head known: the names found, with their ", " separators, make up the whole head
    SELECT head FROM named GROUP BY head HAVING sum(length(quoted)) + 2 * (count(*) - 1) = length(head)
), keyed AS (
    SELECT t.name, t.quoted, a.attname, ty.typname,
           quote_ident(a.attname) || '[' || format_type(a.atttypid, NULL) || ']:' AS col,
           CASE ty.typname WHEN 'uuid' THEN '''[0-9a-f-]+''' ELSE '-?[0-9]+' END AS value
    FROM tables t
    JOIN pg_index i ON i.indrelid = t.oid AND i.indisprimary AND i.indnkeyatts = 1
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
    JOIN pg_type ty ON ty.oid = a.atttypid
    WHERE NOT t.always
      -- the key is the replica identity (an UPDATE that moves it logs the old key; with another index as the
      -- identity it would log only the new one, and the row it left would go unnamed)
      AND (t.relreplident = 'd' OR (t.relreplident = 'i' AND i.indisreplident))
      AND ty.typname IN ('int2', 'int4', 'int8', 'uuid')
      AND a.attnum = (SELECT min(f.attnum) FROM pg_attribute f WHERE f.attrelid = t.oid AND f.attnum > 0 AND NOT f.attisdropped)
), keyed_lines AS (
    -- the text after "table <name>: " of each change to a keyed table, and how its row's key would start
    SELECT k.name, k.col, k.value, substr(c.data, length(k.quoted) + 9) AS rest,
           'UPDATE: old-key: ' || k.col AS moved
    FROM changes c JOIN keyed k ON starts_with(c.data, 'table ' || k.quoted || ': ')
), line_keys AS (
    -- per line its key (NULL: not readable); an UPDATE that moved the row gives the old key and the new one
    SELECT l.name, trim(BOTH '''' FROM k.key) AS key
    FROM keyed_lines l
    CROSS JOIN LATERAL (
        SELECT CASE WHEN starts_with(l.rest, l.moved)
                    THEN substring(substr(l.rest, length(l.moved) + 1) FROM '^(' || l.value || ') new-tuple: ') END AS old_key
    ) o
    CROSS JOIN LATERAL (
        SELECT CASE WHEN o.old_key IS NOT NULL
                    THEN substr(l.rest, length(l.moved || o.old_key || ' new-tuple: ') + 1)
                    ELSE substr(l.rest, length(substring(l.rest FROM '^(?:INSERT|UPDATE|DELETE): ')) + 1) END AS tuple
    ) t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN starts_with(t.tuple, l.col)
                    THEN substring(substr(t.tuple, length(l.col) + 1) FROM '^(' || l.value || ')(?: |$)') END AS new_key
    ) n
    CROSS JOIN LATERAL unnest(CASE WHEN o.old_key IS NULL THEN ARRAY[n.new_key] ELSE ARRAY[o.old_key, n.new_key] END) AS k(key)
), by_rows AS (
    -- keyed tables every change of which named its row, no TRUNCATE list among them, not too many rows
    SELECT name FROM line_keys GROUP BY name HAVING bool_and(key IS NOT NULL) AND count(DISTINCT key) <= 100000
    EXCEPT
    SELECT name FROM named WHERE head <> quoted
)
SELECT DISTINCT 'changed', encode(convert_to(name, 'UTF8'), 'hex') FROM named WHERE name NOT IN (SELECT name FROM by_rows)
UNION ALL
SELECT DISTINCT 'rows', encode(convert_to(name, 'UTF8'), 'hex') || ':' || encode(convert_to(key, 'UTF8'), 'hex')
FROM line_keys WHERE name IN (SELECT name FROM by_rows)
UNION ALL
SELECT 'key', encode(convert_to(name, 'UTF8'), 'hex') || ':' || encode(convert_to(attname, 'UTF8'), 'hex') || ':' || typname
FROM keyed WHERE name IN (SELECT name FROM by_rows)
UNION ALL
SELECT 'always', encode(convert_to(name, 'UTF8'), 'hex') FROM tables WHERE always
UNION ALL
SELECT 'unknown', encode(convert_to(coalesce(head, ''), 'UTF8'), 'hex') FROM heads WHERE head IS NULL OR head NOT IN (SELECT head FROM placed)
UNION ALL
SELECT 'unknown', encode(convert_to('slot made again at ' || coalesce(confirmed_flush_lsn::text, '?'), 'UTF8'), 'hex')
FROM pg_replication_slots WHERE slot_name = {slot} AND confirmed_flush_lsn IS DISTINCT FROM {made_at}::pg_lsn;
