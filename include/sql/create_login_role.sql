-- The application role, without a password (set separately, as a SCRAM verifier).
CREATE ROLE {role} LOGIN;
