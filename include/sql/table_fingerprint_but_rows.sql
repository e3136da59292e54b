-- Row count and content checksum, as table_fingerprint.sql, of one table without the rows whose one-column
-- primary key is in a list: the rows a change touched since the change slot was made (they are compared
-- inside the pause). {table}, {column}: identifiers; {keys}: a text array literal; {type}: the key's type
-- (int2/int4/int8/uuid only).
SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '')
FROM (SELECT md5(t::text) AS h FROM {table} AS t WHERE t.{column} <> ALL({keys}::{type}[])) AS rows;
