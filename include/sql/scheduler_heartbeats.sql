-- Schedulers started after {since} that heartbeat into Airflow's job table now.
SELECT count(*) FROM job
WHERE job_type = 'SchedulerJob' AND state = 'running'
  AND start_date > {since} AND latest_heartbeat > now() - interval '30 seconds';
