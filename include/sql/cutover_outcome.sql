-- The latest outcome a run's agent of a role recorded.
SELECT outcome FROM public.pgha_cutover_log WHERE run_id = {run_id} AND role = {role} ORDER BY id DESC LIMIT 1;
