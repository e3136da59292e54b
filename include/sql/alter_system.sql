-- A server setting written to postgresql.auto.conf. {name}: an identifier, {value}: a literal.
ALTER SYSTEM SET {name} = {value};
