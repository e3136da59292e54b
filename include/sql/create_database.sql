-- The application database, owned by the application role.
CREATE DATABASE {database} OWNER {owner} ENCODING 'UTF8';
