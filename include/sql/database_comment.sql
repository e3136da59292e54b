-- The comment on a database: where pgha keeps its marks (restored, live). {database}: a literal.
SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = {database};
