# Sourced by vm1.sh and vm4.sh: what every Airflow host of the lab has in common
# (one Airflow, one set of providers, one virtualenv layout, the units' install).
# Needs `here` (the bundle's directory) and `say` from the caller.

wheels=http://10.83.0.1:3141/
venv=/opt/airflow/venv
home=/home/airflow
airflow_home=$home/airflow
AIRFLOW_RELEASE=3.3.2
[ -f "$here/release.env" ] && . "$here/release.env"  # written by lab/lab: PGHA_LAB_AIRFLOW
# celery provider + redis: vm1's scheduler runs LocalExecutor,CeleryExecutor, vm4 the worker
requirements=(apache-airflow==$AIRFLOW_RELEASE apache-airflow-providers-ssh==7.0.1
              apache-airflow-providers-postgres==7.1.1 apache-airflow-providers-celery
              redis psycopg2-binary)

ensure_airflow_user() {
  if ! id -u airflow >/dev/null 2>&1; then
    useradd --system --user-group --create-home --home-dir "$home" --shell /bin/bash airflow
  fi
}

# Airflow in its own virtualenv, from Debian's python3 and the lab's wheelhouse (no index).
ensure_airflow_venv() {
  if [ "$(cat "$venv/.pgha-requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
    say "virtualenv $venv: ${requirements[*]}"
    rm -rf "$venv"
    install -d -m 0755 "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    local pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels"
               --trusted-host 10.83.0.1)
    "${pip[@]}" --upgrade pip
    # bytecode compiled afterwards on both cores (pip compiles on one)
    "${pip[@]}" --no-compile "${requirements[@]}"
    say "compileall"
    "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
    echo "${requirements[*]}" > "$venv/.pgha-requirements"
  fi
  ln -sfn "$venv/bin/airflow" /usr/local/bin/airflow
}

# airflow.cfg (the file the migration edits), the units' environment, the CLI wrapper, the units.
install_airflow_config_and_units() {
  install -d -o airflow -g airflow -m 0700 "$airflow_home"
  install -o airflow -g airflow -m 0600 "$here/airflow.cfg" "$airflow_home/airflow.cfg"
  install -d -m 0755 /etc/pgha /opt/pgha
  # The deployment's own plugins folder, with an `operators` package of its own as many
  # deployments have: pgha is pip-installed under its own name and must work beside it.
  install -d -o airflow -g airflow -m 0755 "$airflow_home/plugins/operators"
  printf '"""This deployment'"'"'s own operators (the lab: named like pgha'"'"'s modules)."""\n' \
    > "$airflow_home/plugins/operators/__init__.py"
  printf 'OWNER = "the deployment"  # pgha'"'"'s DAGs would fail to import if they got this module\n' \
    > "$airflow_home/plugins/operators/etcd.py"
  install -m 0600 "$here/airflow.env" /etc/pgha/airflow.env
  install -m 0755 "$here/pgha-airflow" /usr/local/sbin/pgha-airflow
  local unit
  for unit in "$@"; do
    install -m 0644 "$here/$unit.service" "/etc/systemd/system/$unit.service"
  done
  systemctl daemon-reload
}
