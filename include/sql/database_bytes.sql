-- Size in bytes of a database. {database}: a literal.
SELECT pg_database_size({database});
