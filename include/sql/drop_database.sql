-- Drops the database and the sessions in it (a half-restored copy is never reused).
DROP DATABASE IF EXISTS {database} WITH (FORCE);
