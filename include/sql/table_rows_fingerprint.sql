-- Row count and content checksum, as table_fingerprint.sql, of only the rows of one table whose one-column
-- primary key is in a list: the rows a change touched since the table was found identical. {table},
-- {column}: identifiers; {keys}: a text array literal; {type}: the key's type (int2/int4/int8/uuid only).
SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '')
FROM (SELECT md5(t::text) AS h FROM {table} AS t WHERE t.{column} = ANY({keys}::{type}[])) AS rows;
