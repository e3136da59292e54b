-- One sequence's value, copied from the source. {sequence}: its qualified name, a literal.
SELECT setval({sequence}, {value}, true);
