-- The source's publication of every table.
CREATE PUBLICATION {publication} FOR ALL TABLES;
