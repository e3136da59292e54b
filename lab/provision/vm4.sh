#!/bin/bash
# Makes vm4 the runbook's VM4: a Celery worker of vm1's Airflow 3.3.2
# (`executor = LocalExecutor,CeleryExecutor` there; broker: Redis on vm1). Its
# airflow.cfg reaches vm1's PostgreSQL, Redis and Execution API by address, never
# localhost (ERRATA 15). Run as root on vm4 by `lab/lab provision`, from
# /root/pgha-provision (0700), like vm1.sh. Idempotent. Packages only from the
# wheelhouse (no apt). Installs and enables the unit; lab/lab starts it once vm1
# is ready and checks that it answers through the broker.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
wheels=http://10.83.0.1:3141/
venv=/opt/airflow/venv
home=/home/airflow
airflow_home=$home/airflow
units=(airflow-celery-worker)
# the same list as vm1.sh: one Airflow, one set of providers on every Airflow host
requirements=(apache-airflow==3.3.2 apache-airflow-providers-ssh==7.0.1
              apache-airflow-providers-postgres==7.1.1 apache-airflow-providers-celery
              redis psycopg2-binary)
export LC_ALL=C.UTF-8
cd /
say() { echo "vm4: [${SECONDS}s] $*"; }

# 1. The airflow user.
if ! id -u airflow >/dev/null 2>&1; then
  useradd --system --user-group --create-home --home-dir "$home" --shell /bin/bash airflow
fi

# 2. Airflow in its own virtualenv, from Debian's python3 and the lab's wheelhouse.
if [ "$(cat "$venv/.pgha-requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  say "virtualenv $venv: ${requirements[*]}"
  rm -rf "$venv"
  install -d -m 0755 "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels"
       --trusted-host 10.83.0.1)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" --no-compile "${requirements[@]}"
  say "compileall"
  "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
  echo "${requirements[*]}" > "$venv/.pgha-requirements"
fi
ln -sfn "$venv/bin/airflow" /usr/local/bin/airflow

# 3. Configuration: airflow.cfg (vm1's, with vm1's address instead of 127.0.0.1; the
#    file the migration edits), the unit's environment, the unit (enabled, not started).
install -d -o airflow -g airflow -m 0700 "$airflow_home"
install -o airflow -g airflow -m 0600 "$here/airflow.cfg" "$airflow_home/airflow.cfg"
install -d -m 0755 /etc/pgha /opt/pgha
install -m 0600 "$here/airflow.env" /etc/pgha/airflow.env
install -m 0755 "$here/pgha-airflow" /usr/local/sbin/pgha-airflow
for unit in "${units[@]}"; do
  install -m 0644 "$here/$unit.service" "/etc/systemd/system/$unit.service"
done
systemctl daemon-reload
systemctl enable --quiet "${units[@]}"
say "installed: ${units[*]} (enabled)"
