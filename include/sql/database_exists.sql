-- Whether a database exists. {database}: a literal.
SELECT EXISTS (SELECT FROM pg_database WHERE datname = {database});
