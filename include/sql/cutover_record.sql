INSERT INTO public.pgha_cutover_log (run_id, host, role, outcome, record)
VALUES ({run_id}, {host}, {role}, {outcome}, {record}::jsonb);
