-- Password (SCRAM verifier) of the replication role on the source, and the one database it may enter.
-- Nothing more: its SELECTs come from replication_role_schema_grants.sql (run in that database).
ALTER ROLE {role} WITH LOGIN REPLICATION PASSWORD {verifier};
GRANT CONNECT ON DATABASE {database} TO {role};
