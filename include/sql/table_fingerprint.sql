-- Row count and an order-independent content checksum of one table ({table} is
-- filled in with a quoted identifier). Session settings make the text forms
-- of timestamps and floats identical on both sides.
SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '')
FROM (SELECT md5(t::text) AS h FROM {table} AS t) AS rows;
