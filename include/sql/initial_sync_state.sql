-- Tables of a subscription still in their initial copy, and all its tables. {subscription}: a literal.
SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*)
FROM pg_subscription_rel r
JOIN pg_subscription s ON s.oid = r.srsubid
WHERE s.subname = {subscription};
