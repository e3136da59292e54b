-- A role's password as a SCRAM verifier (never the password itself). {verifier}: a literal.
ALTER ROLE {role} WITH LOGIN PASSWORD {verifier};
