-- What pg_rewind needs of its login on the source server (PostgreSQL 11+), and nothing more: the
-- same grants Patroni gives a rewind role when it bootstraps a cluster. {role}: an identifier.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {role};
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {role};
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {role};
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {role};
