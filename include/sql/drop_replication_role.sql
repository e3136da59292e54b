-- Drops the replication role pgha created on the source, run in the migrated database: DROP OWNED
-- revokes its privileges there and on shared objects (CONNECT), which DROP ROLE needs gone.
DROP OWNED BY {role};
DROP ROLE {role};
