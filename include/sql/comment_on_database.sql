-- Sets (a literal) or clears (NULL) the comment on a database.
COMMENT ON DATABASE {database} IS {comment};
