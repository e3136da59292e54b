-- Password (SCRAM verifier) and read access of the replication role on the source.
ALTER ROLE {role} WITH LOGIN REPLICATION PASSWORD {verifier};
GRANT pg_read_all_data TO {role};
