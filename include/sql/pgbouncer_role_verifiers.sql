-- The stored password (a SCRAM verifier) of each role in {roles}: PgBouncer's auth_file holds these.
SELECT rolname AS role, coalesce(rolpassword, '') AS verifier FROM pg_authid WHERE rolname = ANY({roles}) ORDER BY rolname;
