#!/bin/bash
# What `lab/lab provision` compares with the `provisioned` snapshot to tell whether
# vm1 is still as provisioned: config files, which DAG runs exist, units running,
# PostgreSQL and Redis listening (also on vm1's address, for the worker on vm4).
# Any DAG run besides lab_history's (e.g. pg_ha_migration's) means it was used.
set -u
major=${PGHA_LAB_SOURCE_MAJOR:-15}  # lab/pghalab/topology.py's SOURCE_MAJOR, given by lab/lab
sha256sum /home/airflow/airflow/airflow.cfg /etc/pgha/airflow.env 2>&1
systemctl is-active "postgresql@$major-main" redis-server airflow-scheduler airflow-api-server \
  airflow-dag-processor airflow-triggerer pgha-mail-sink 2>&1
ss -Hltn '( sport = :5432 or sport = :6379 or sport = :2525 )' | awk '{print $4}' | sort
runuser -u postgres -- psql -X -At -d airflow_db \
  -c "SELECT dag_id, state, count(*) FROM dag_run GROUP BY 1, 2 ORDER BY 1, 2" 2>&1
