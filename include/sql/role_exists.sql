-- Whether a role exists. {role}: a literal.
SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = {role});
