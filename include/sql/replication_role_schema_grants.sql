-- What a subscription's initial copy reads on the publisher (COPY ... TO STDOUT of each published
-- table), run in the migrated database: USAGE on its schemas, SELECT on their tables. Works on 13+
-- (pg_read_all_data, 14+, would also open every other database).
GRANT USAGE ON SCHEMA {schemas} TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA {schemas} TO {role};
