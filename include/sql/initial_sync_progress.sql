-- Tables of a subscription per sync state (i init, d data copy, f finished copy, s synced, r ready) and
-- their bytes on this side. {subscription}: a literal.
SELECT r.srsubstate::text, count(*), coalesce(sum(pg_total_relation_size(r.srrelid)), 0)::bigint
FROM pg_subscription_rel r
JOIN pg_subscription s ON s.oid = r.srsubid
WHERE s.subname = {subscription}
GROUP BY 1
ORDER BY 1;
