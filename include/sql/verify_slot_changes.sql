-- On the source: the user tables a transaction committed since the change slot was made changed, read
-- without consuming the slot. test_decoding writes "table <schema>.<name>: INSERT: ..." (names quoted as
-- quote_ident does; a TRUNCATE lists every table it emptied, comma-separated). One row per table:
--   changed|<hex of schema.name>  a change names it;
--   always|<hex of schema.name>   compared whatever the slot says: it has inheritance children or partitions
--                                 (their rows are its rows, their changes logged under their names), or it
--                                 is unlogged (its changes are not in the WAL);
--   unknown|<hex of head>         a change names a table we do not know, alone or in a TRUNCATE's list (the
--                                 caller then compares every table).
-- Hex: a name may hold any character, psql's output is one line per row. Only what the WAL flushed so far is
-- read (the caller waits for the subscription first, which implies it). {slot}: a literal; {made_at}: the
-- position the caller's pg_create_logical_replication_slot returned. A slot whose position differs was made
-- again since (another try of the task): it cannot vouch for what changed before, an unknown row says so.
WITH heads AS (
    -- a name: "quoted" (doubled quotes inside) or bare, twice with a dot between; a list of them, comma-separated
    SELECT DISTINCT substring(data FROM '^table ((?:(?:"(?:[^"]|"")*"|[^",:. ]+)[.](?:"(?:[^"]|"")*"|[^",:. ]+)(?:, )?)+): (?:INSERT|UPDATE|DELETE|TRUNCATE):') AS head
    FROM pg_logical_slot_peek_changes({slot}, NULL, NULL, 'include-xids', '0', 'skip-empty-xacts', '1')
    WHERE data LIKE 'table %'
), tables AS (
    SELECT n.nspname || '.' || c.relname AS name, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS quoted,
           c.relhassubclass OR c.relpersistence = 'u' AS always
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
)
SELECT DISTINCT 'changed', encode(convert_to(name, 'UTF8'), 'hex') FROM named
UNION ALL
SELECT 'always', encode(convert_to(name, 'UTF8'), 'hex') FROM tables WHERE always
UNION ALL
SELECT 'unknown', encode(convert_to(coalesce(head, ''), 'UTF8'), 'hex') FROM heads WHERE head IS NULL OR head NOT IN (SELECT head FROM placed)
UNION ALL
SELECT 'unknown', encode(convert_to('slot made again at ' || coalesce(confirmed_flush_lsn::text, '?'), 'UTF8'), 'hex')
FROM pg_replication_slots WHERE slot_name = {slot} AND confirmed_flush_lsn IS DISTINCT FROM {made_at}::pg_lsn;
