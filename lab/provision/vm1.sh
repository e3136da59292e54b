#!/bin/bash
# Makes vm1 the runbook's VM1: Airflow 3.3.2 whose metadata database is a single
# local PostgreSQL 15. Run as root on vm1 by `lab/lab provision`, from
# /root/pgha-provision (0700), where lab/lab put this script and the files it
# installs (rendered by airflow_host.py; the secrets are only in those files).
# Idempotent. Packages come only through the lab: apt-cacher-ng and the wheelhouse.
# No apt proxy configuration is left behind: pg_ha_migration's phase 1 sets it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
proxy=http://10.83.0.1:3142
wheels=http://10.83.0.1:3141/
venv=/opt/airflow/venv
home=/home/airflow
airflow_home=$home/airflow
units=(airflow-scheduler airflow-api-server airflow-dag-processor airflow-triggerer)
requirements=(apache-airflow==3.3.2 apache-airflow-providers-ssh==7.0.1
              apache-airflow-providers-postgres==7.1.1 psycopg2-binary)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
cd /  # runuser -u postgres/airflow: no "could not change directory to /root"
say() { echo "vm1: [${SECONDS}s] $*"; }
apt_() { apt-get -q -o Acquire::http::Proxy="$proxy" -o Dpkg::Use-Pty=0 "$@"; }

# 1. PostgreSQL 15 from Debian; the package creates and starts the cluster 15/main
#    (default pg_hba: local peer, 127.0.0.1 scram-sha-256).
if ! dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null | grep -q 'ok installed'; then
  say "apt-get install postgresql-15 (through $proxy, given on the command line only)"
  log=/var/log/pgha-provision-apt.log
  { apt_ update && apt_ install -y --no-install-recommends postgresql-15 postgresql-client-15; } \
    > "$log" 2>&1 || { tail -n 40 "$log"; exit 1; }
  apt-get clean
  rm -rf /var/lib/apt/lists/*  # like the base image: whoever installs next runs apt-get update
fi
systemctl enable --quiet --now postgresql@15-main
for _ in $(seq 150); do runuser -u postgres -- pg_isready -q && break; sleep 0.2; done
runuser -u postgres -- pg_isready

# 2. The airflow user.
if ! id -u airflow >/dev/null 2>&1; then
  useradd --system --user-group --create-home --home-dir "$home" --shell /bin/bash airflow
fi

# 3. Airflow in its own virtualenv, from Debian's python3 and the lab's wheelhouse.
if [ "$(cat "$venv/.pgha-requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  say "virtualenv $venv: ${requirements[*]}"
  rm -rf "$venv"
  install -d -m 0755 "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels"
       --trusted-host 10.83.0.1)
  "${pip[@]}" --upgrade pip
  # bytecode compiled afterwards on both cores (pip compiles on one)
  "${pip[@]}" --no-compile "${requirements[@]}"
  say "compileall"
  "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
  echo "${requirements[*]}" > "$venv/.pgha-requirements"
fi
ln -sfn "$venv/bin/airflow" /usr/local/bin/airflow

# 4. Configuration: airflow.cfg (the file the migration edits), the admin password,
#    the lab's SSH client key, the units' environment (connections), the units.
install -d -o airflow -g airflow -m 0700 "$home/.ssh" "$airflow_home"
install -o airflow -g airflow -m 0600 "$here/airflow.cfg" "$airflow_home/airflow.cfg"
install -o airflow -g airflow -m 0600 "$here/simple_auth_manager_passwords.json" \
  "$airflow_home/simple_auth_manager_passwords.json"
install -o airflow -g airflow -m 0600 "$here/pgha_lab" "$home/.ssh/pgha_lab"
install -d -m 0755 /etc/pgha /opt/pgha
install -m 0600 "$here/airflow.env" /etc/pgha/airflow.env
install -m 0755 "$here/pgha-airflow" /usr/local/sbin/pgha-airflow
for unit in "${units[@]}"; do
  install -m 0644 "$here/$unit.service" "/etc/systemd/system/$unit.service"
done
systemctl daemon-reload

# 5. airflow_db owned by airflow_user (SQL on stdin: the file is root's).
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres < "$here/db.sql"

# 6. Airflow's schema.
say "airflow db migrate"
/usr/local/sbin/pgha-airflow db migrate >/dev/null

# 7. The four units, enabled (they come back after a reboot or a snapshot restore).
systemctl enable --quiet "${units[@]}"
systemctl restart "${units[@]}"
say "units started: ${units[*]}"
