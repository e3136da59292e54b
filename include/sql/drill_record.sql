-- One drill's result; a retried analysis replaces its own row.
INSERT INTO public.pgha_drill_history (
    drill_id, dag_run_id, scenario, target, old_leader, new_leader, injected_at, passed, rto_s, rto_slo_s,
    acked, rpo_missing, time_to_new_leader_s, time_to_routing_s, time_to_old_leader_streaming_s, problems, details)
VALUES (
    %(drill_id)s, %(dag_run_id)s, %(scenario)s, %(target)s, %(old_leader)s, %(new_leader)s,
    to_timestamp(%(injected_at)s), %(passed)s, %(rto_s)s, %(rto_slo_s)s, %(acked)s, %(rpo_missing)s,
    %(time_to_new_leader_s)s, %(time_to_routing_s)s, %(time_to_old_leader_streaming_s)s, %(problems)s,
    %(details)s::jsonb)
ON CONFLICT (drill_id) DO UPDATE SET
    dag_run_id = EXCLUDED.dag_run_id, new_leader = EXCLUDED.new_leader, recorded_at = now(),
    passed = EXCLUDED.passed, rto_s = EXCLUDED.rto_s, acked = EXCLUDED.acked, rpo_missing = EXCLUDED.rpo_missing,
    time_to_new_leader_s = EXCLUDED.time_to_new_leader_s, time_to_routing_s = EXCLUDED.time_to_routing_s,
    time_to_old_leader_streaming_s = EXCLUDED.time_to_old_leader_streaming_s, problems = EXCLUDED.problems,
    details = EXCLUDED.details;
