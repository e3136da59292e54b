-- The drill page (pgha.ui.drill_history): the latest drills, newest first.
SELECT drill_id, dag_run_id, scenario, target, old_leader, new_leader,
       extract(epoch FROM injected_at)::double precision AS injected_at,
       passed, rto_s, rto_slo_s, acked, rpo_missing,
       time_to_new_leader_s, time_to_routing_s, time_to_old_leader_streaming_s, problems
FROM public.pgha_drill_history
ORDER BY injected_at DESC, drill_id DESC
LIMIT %(limit)s;
