-- On the source, inside the PAUSE: the tables written by transactions that committed after {since} (the
-- position read once every PgBouncer was paused, so no client of PgBouncer commits after it). A row means a
-- client that does not go through PgBouncer writes to the database: it would go on writing to the source
-- after the cutover. Read from the change slot without consuming it; a change row and its transaction's COMMIT
-- row carry the same transaction id (even without 'include-xids'), a COMMIT row's position is the end of the
-- commit record. Only flushed WAL is decoded: a commit not yet flushed (synchronous_commit = off) is not seen.
-- {slot}: a literal; {since}: an LSN literal. Hex: a name may hold any character.
WITH changes AS MATERIALIZED (
    SELECT lsn, xid, data
    FROM pg_logical_slot_peek_changes({slot}, NULL, NULL, 'include-xids', '0', 'skip-empty-xacts', '1')
), late AS (
    SELECT DISTINCT xid FROM changes WHERE data = 'COMMIT' AND lsn > {since}::pg_lsn
)
SELECT DISTINCT encode(convert_to(coalesce(substring(c.data FROM '^table (.+?): (?:INSERT|UPDATE|DELETE|TRUNCATE):'),
                                           left(c.data, 200)), 'UTF8'), 'hex')
FROM changes c JOIN late USING (xid)
WHERE c.data LIKE 'table %';
