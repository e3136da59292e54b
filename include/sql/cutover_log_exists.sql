-- The cutover log exists (its first record creates it); read-only callers check before they read.
SELECT to_regclass('public.pgha_cutover_log') IS NOT NULL;
