#!/bin/bash
# Makes vm1 the runbook's VM1: Airflow (release.env: PGHA_LAB_AIRFLOW) whose metadata database is a single
# local PostgreSQL of the lab's source major (source.env: 15 from Debian 12, or 13 from
# Debian 11's archive, PGHA_LAB_SOURCE_MAJOR), with the Celery broker (Redis) for the worker on vm4. PostgreSQL
# and Redis listen on vm1's address too. Run as root on vm1 by `lab/lab provision`, from
# /root/pgha-provision (0700), where lab/lab put this script and the files it
# installs (rendered by airflow_host.py; the secrets are only in those files).
# Idempotent. Packages come only through the lab: apt-cacher-ng and the wheelhouse.
# No apt proxy configuration is left behind: pg_ha_migration's phase 1 sets it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SOURCE_MAJOR=15 SOURCE_SUITE=bookworm
[ -f "$here/source.env" ] && . "$here/source.env"  # written by lab/lab from lab/pghalab/topology.py
major=$SOURCE_MAJOR
cluster="$major-main"
proxy=http://10.83.0.1:3142
address=10.83.0.129  # vm1 in lab/lab's HOSTS
units=(airflow-scheduler airflow-api-server airflow-dag-processor airflow-triggerer)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
cd /  # runuser -u postgres/airflow: no "could not change directory to /root"
say() { echo "vm1: [${SECONDS}s] $*"; }
. "$here/airflow-host.sh"
apt_() { apt-get -q -o Acquire::http::Proxy="$proxy" -o Dpkg::Use-Pty=0 "$@"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
# install FILE DEST (root, mode of FILE): says whether DEST changed
changed_install() {
  if cmp -s "$1" "$2"; then return 1; fi
  install -D -m "$(stat -c %a "$1")" "$1" "$2"
}

# 1. PostgreSQL $major and Redis from Debian; the packages create and start the cluster
#    $major/main (default pg_hba: local peer, 127.0.0.1 scram-sha-256) and redis-server.
#    A major of another Debian release ($SOURCE_SUITE, e.g. 13 from bullseye): that release's
#    archive is added pinned at priority 1, below bookworm's 500, so apt takes from it only
#    what bookworm does not have (postgresql-13, its client and the libraries they need, such
#    as libssl1.1 and libicu67) and never upgrades or downgrades anything else to it.
if [ "$SOURCE_SUITE" != bookworm ]; then
  cat > "/etc/apt/sources.list.d/pgha-lab-$SOURCE_SUITE.list" <<SRC
deb http://deb.debian.org/debian $SOURCE_SUITE main
deb http://deb.debian.org/debian-security $SOURCE_SUITE-security main
SRC
  cat > "/etc/apt/preferences.d/pgha-lab-$SOURCE_SUITE" <<PIN
Package: *
Pin: release n=$SOURCE_SUITE
Pin-Priority: 1

Package: *
Pin: release n=$SOURCE_SUITE-security
Pin-Priority: 1
PIN
fi
if ! installed "postgresql-$major" || ! installed redis-server; then
  say "apt-get install postgresql-$major ($SOURCE_SUITE) redis-server (through $proxy, given on the command line only)"
  log=/var/log/pgha-provision-apt.log
  { apt_ update && apt_ install -y --no-install-recommends "postgresql-$major" "postgresql-client-$major" redis-server; } \
    > "$log" 2>&1 || { tail -n 40 "$log"; exit 1; }
  apt-get clean
  rm -rf /var/lib/apt/lists/*  # like the base image: whoever installs next runs apt-get update
fi
runuser -u postgres -- "/usr/lib/postgresql/$major/bin/postgres" --version | grep -q "(PostgreSQL) $major\." \
  || { echo "vm1: /usr/lib/postgresql/$major/bin/postgres is not PostgreSQL $major" >&2; exit 1; }

# 1b. Both also listen on vm1's address (for vm4), so both start after host0 has it.
restart=()
for unit in "postgresql@$cluster" redis-server; do
  changed_install "$here/network-online.conf" "/etc/systemd/system/$unit.service.d/pgha-lab.conf" \
    && restart+=("$unit")
done
systemctl daemon-reload
#    PostgreSQL: listen_addresses and TLS with the source's certificate (conf.d) and, after Debian's rules,
#    airflow_user from each worker.
for part in crt key; do
  if ! cmp -s "$here/source.$part" "/var/lib/postgresql/pgha-lab-source.$part"; then
    install -o postgres -g postgres -m 0600 "$here/source.$part" "/var/lib/postgresql/pgha-lab-source.$part"
    restart+=("postgresql@$cluster")
  fi
done
changed_install "$here/postgresql.conf" "/etc/postgresql/$major/main/conf.d/pgha-lab.conf" && restart+=("postgresql@$cluster")
hba=/etc/postgresql/$major/main/pg_hba.conf
begin='# BEGIN pgha lab: Celery workers' end='# END pgha lab: Celery workers'
want=$(sed "/^$begin\$/,/^$end\$/d" "$hba"; printf '%s\n' "$begin"; cat "$here/pg_hba.lab"; printf '%s\n' "$end")
if [ "$want" != "$(cat "$hba")" ]; then
  printf '%s\n' "$want" > "$hba.pgha-tmp" && chown postgres:postgres "$hba.pgha-tmp" && chmod 0640 "$hba.pgha-tmp"
  mv "$hba.pgha-tmp" "$hba"
  restart+=("postgresql@$cluster")
fi
#    Redis: the Celery broker, bound to 127.0.0.1 and vm1's address, password required.
if ! grep -qx 'include /etc/redis/pgha-lab.conf' /etc/redis/redis.conf; then
  echo 'include /etc/redis/pgha-lab.conf' >> /etc/redis/redis.conf
  restart+=(redis-server)
fi
if ! cmp -s "$here/redis.conf" /etc/redis/pgha-lab.conf; then
  install -o redis -g redis -m 0640 "$here/redis.conf" /etc/redis/pgha-lab.conf
  restart+=(redis-server)
fi
systemctl enable --quiet "postgresql@$cluster" redis-server
if [ ${#restart[@]} -gt 0 ]; then
  systemctl restart $(printf '%s\n' "${restart[@]}" | sort -u)
fi
systemctl start "postgresql@$cluster" redis-server
for _ in $(seq 150); do runuser -u postgres -- pg_isready -q && break; sleep 0.2; done
runuser -u postgres -- pg_isready
runuser -u postgres -- pg_isready -q -h "$address"
REDISCLI_AUTH=$(sed -n 's/^requirepass //p' "$here/redis.conf") redis-cli -h "$address" ping | grep -qx PONG

# 2. The airflow user and Airflow's virtualenv (airflow-host.sh).
ensure_airflow_user
ensure_airflow_venv
#    and aiosmtpd beside Airflow, for the SMTP sink of pgha's alerts (step 5b)
if ! "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
  say "pip install aiosmtpd (the alerts' SMTP sink)"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels" \
    --trusted-host 10.83.0.1 aiosmtpd==1.4.6
fi

# 3. Configuration: airflow.cfg, the units' environment (connections) and the units;
#    then the admin password, the lab's SSH client key and the fault gate's key.
install_airflow_config_and_units "${units[@]}"
install -d -o airflow -g airflow -m 0700 "$home/.ssh"
install -o airflow -g airflow -m 0600 "$here/simple_auth_manager_passwords.json" \
  "$airflow_home/simple_auth_manager_passwords.json"
install -o airflow -g airflow -m 0600 "$here/pgha_lab" "$home/.ssh/pgha_lab"
install -o airflow -g airflow -m 0600 "$here/pgha_fault_gate" "$home/.ssh/pgha_fault_gate"

# 4. airflow_db owned by airflow_user (SQL on stdin: the file is root's).
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres < "$here/db.sql"

# 5. Airflow's schema.
say "airflow db migrate"
/usr/local/sbin/pgha-airflow db migrate >/dev/null

# 5b. The SMTP sink of pgha's alerts (connection smtp_default, lab/inventory.yml's notify:) on
#     $address:2525: every message it accepts is a file /var/lib/pgha-lab/mail/*.eml.
install -D -m 0644 "$here/mail_sink.py" /usr/local/lib/pgha-lab/mail_sink.py
install -m 0644 "$here/pgha-mail-sink.service" /etc/systemd/system/pgha-mail-sink.service
systemctl daemon-reload
systemctl enable --quiet pgha-mail-sink
systemctl restart pgha-mail-sink
for _ in $(seq 50); do
  "$venv/bin/python" -c "import smtplib; smtplib.SMTP('$address', 2525, timeout=2).quit()" 2>/dev/null && break
  sleep 0.2
done
"$venv/bin/python" -c "import smtplib; smtplib.SMTP('$address', 2525, timeout=2).quit()"
say "SMTP sink on $address:2525 (/var/lib/pgha-lab/mail)"

# 6. The four units, enabled (they come back after a reboot or a snapshot restore).
#    The scheduler runs both executors: LocalExecutor (default) and CeleryExecutor (vm4).
systemctl enable --quiet "${units[@]}"
systemctl restart "${units[@]}"
say "units started: ${units[*]}"
