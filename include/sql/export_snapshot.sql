-- The snapshot pg_dump --snapshot reads (the exporting transaction must stay open).
SELECT pg_export_snapshot();
