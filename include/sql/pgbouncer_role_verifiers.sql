-- The stored password (a SCRAM verifier) of each role in {roles}: PgBouncer's auth_file holds these.
SELECT rolname, coalesce(rolpassword, '') FROM pg_authid WHERE rolname = ANY({roles}) ORDER BY rolname;
