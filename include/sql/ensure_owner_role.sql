-- Creates the application role if missing; the password is set separately
-- with a bound parameter so it never appears in SQL text or logs.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %(owner)s) THEN
    EXECUTE format('CREATE ROLE %%I LOGIN', %(owner)s);
  END IF;
END
$$;
