-- Give {role} the verifier {verifier} (the same password: SCRAM pass-through needs the same salt everywhere).
ALTER ROLE {role} PASSWORD {verifier};
