-- The failover drill's tables, in the cluster's `postgres` database (never in Airflow's).
-- pgha_drill_probe: one row per commit the probe attempted; an acknowledged seq
-- missing here after the drill is a lost write (RPO).
CREATE TABLE IF NOT EXISTS public.pgha_drill_probe (
    drill_id     text        NOT NULL,
    seq          bigint      NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (drill_id, seq)
);
-- pgha_drill_history: one row per drill, what an auditor asks for.
CREATE TABLE IF NOT EXISTS public.pgha_drill_history (
    drill_id                        text PRIMARY KEY,
    dag_run_id                      text,
    scenario                        text NOT NULL,
    target                          text NOT NULL,
    old_leader                      text,
    new_leader                      text,
    injected_at                     timestamptz NOT NULL,
    recorded_at                     timestamptz NOT NULL DEFAULT now(),
    passed                          boolean NOT NULL,
    rto_s                           double precision,
    rto_slo_s                       double precision NOT NULL,
    acked                           bigint NOT NULL,
    rpo_missing                     bigint NOT NULL,
    time_to_new_leader_s            double precision,
    time_to_routing_s               double precision,
    time_to_old_leader_streaming_s  double precision,
    problems                        text[] NOT NULL DEFAULT '{}',
    details                         jsonb NOT NULL DEFAULT '{}'
);
