#!/bin/bash
# Makes vm4 the runbook's VM4: a Celery worker of vm1's Airflow (release.env: PGHA_LAB_AIRFLOW)
# (`executor = LocalExecutor,CeleryExecutor` there; broker: Redis on vm1). Its
# airflow.cfg reaches vm1's PostgreSQL, Redis and Execution API by address, never
# localhost. Run as root on vm4 by `lab/lab provision`, from
# /root/pgha-provision (0700), like vm1.sh. Idempotent. Packages only from the
# wheelhouse (no apt). Installs and enables the unit; lab/lab starts it once vm1
# is ready and checks that it answers through the broker.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
units=(airflow-celery-worker)
export LC_ALL=C.UTF-8
cd /
say() { echo "vm4: [${SECONDS}s] $*"; }
. "$here/airflow-host.sh"

# 1. The airflow user and Airflow's virtualenv (airflow-host.sh).
ensure_airflow_user
ensure_airflow_venv

# 2. Configuration: airflow.cfg (vm1's, with vm1's address instead of 127.0.0.1; the
#    file the migration edits), the unit's environment, the unit (enabled, not started).
install_airflow_config_and_units "${units[@]}"
systemctl enable --quiet "${units[@]}"
say "installed: ${units[*]} (enabled)"
