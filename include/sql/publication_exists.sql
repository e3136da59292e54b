-- Whether a publication exists in this database. {publication}: a literal.
SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = {publication});
