-- A server setting. {name}: a literal.
SELECT current_setting({name});
