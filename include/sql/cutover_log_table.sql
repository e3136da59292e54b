-- One row per cutover agent run, in the cluster's postgres database.
CREATE TABLE IF NOT EXISTS public.pgha_cutover_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    run_id  text,
    host    text,
    role    text,
    outcome text,
    record  jsonb
);
