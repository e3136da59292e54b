-- Removes a setting from postgresql.auto.conf. {name}: an identifier.
ALTER SYSTEM RESET {name};
