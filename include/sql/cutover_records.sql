-- Every outcome the agents of a cutover run recorded, oldest first, with when each agent started
-- (the record's seconds before it was written). {run_id}: a literal.
SELECT host, role, outcome, coalesce(record->>'detail', ''),
       at - make_interval(secs => coalesce((record->>'seconds')::float, 0)),
       coalesce(record->'steps', '[]'::jsonb)
FROM public.pgha_cutover_log
WHERE run_id = {run_id}
ORDER BY id;
