-- Whether a subscription exists. {subscription}: a literal.
SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = {subscription});
