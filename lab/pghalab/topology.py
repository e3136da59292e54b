"""The lab's hosts table: names, addresses, roles and ports.

The one place to add or change a host or an address. `lab/lab`, tests/lab,
bench/ and lab/demo import it; files that cannot import Python
(lab/inventory.yml, the shell scripts under lab/provision/, the READMEs)
repeat the addresses, and tests/test_lab_tables.py checks that they agree.

Pure data, standard library only: importable by the outer machine's python3
and by the project's virtualenv alike.
"""

import os

# Roles mirror the runbook; `boot` says whether a plain `lab/lab up` boots it.
HOSTS = {
    "vm1": {"ip": "10.83.0.129", "boot": True, "role": "Airflow host: old single PostgreSQL, HAProxy"},
    "psg1": {"ip": "10.83.0.140", "boot": True, "role": "PostgreSQL + Patroni + etcd"},
    "psg2": {"ip": "10.83.0.144", "boot": True, "role": "PostgreSQL + Patroni + etcd"},
    "psg3": {"ip": "10.83.0.145", "boot": True, "role": "PostgreSQL + Patroni + etcd"},
    "vm4": {"ip": "10.83.0.131", "boot": True, "role": "Celery worker (CeleryExecutor, broker on vm1)"},
}
AIRFLOW_HOST = "vm1"  # the runbook's VM1: Airflow on a single PostgreSQL, Celery broker, HAProxy
WORKER_HOST = "vm4"  # the runbook's VM4: a Celery worker of vm1's Airflow
AIRFLOW_HOSTS = (AIRFLOW_HOST, WORKER_HOST)  # what `deploy` copies the code to
DATABASE_HOSTS = ("psg1", "psg2", "psg3")  # the Patroni + etcd cluster the migration builds

# The source: vm1's single PostgreSQL, the major the migration starts from. 15 is Debian 12's
# own; 13 (PGHA_LAB_SOURCE_MAJOR=13) is Debian 11's postgresql-13, which vm1.sh installs from
# bullseye pinned low (only it and what it needs come from there). The cluster stays
# lab/inventory.yml's postgres.major. Set it before `lab/lab provision`: it is part of the
# provisioned snapshot's key, and `deploy` writes it into the hosts' inventory (source.major).
SOURCE_SUITES = {13: "bullseye", 15: "bookworm"}  # the Debian release each source major comes from
DEFAULT_SOURCE_MAJOR = 15


def source_major(environ=os.environ):
    """The lab's source major (PGHA_LAB_SOURCE_MAJOR, default 15); one of SOURCE_SUITES."""
    text = environ.get("PGHA_LAB_SOURCE_MAJOR", "").strip() or str(DEFAULT_SOURCE_MAJOR)
    if not text.isdigit() or int(text) not in SOURCE_SUITES:
        raise ValueError(f"PGHA_LAB_SOURCE_MAJOR={text!r}: the lab runs a source of major "
                         f"{' or '.join(map(str, SOURCE_SUITES))}")
    return int(text)


SOURCE_MAJOR = source_major()

# The cluster: the major the migration builds (lab/inventory.yml's postgres.major, which `deploy`
# sets) and the Debian release its database hosts run, whose own PostgreSQL it is (no PGDG here).
# 15: Debian 12, every host on one image. 17 (PGHA_LAB_CLUSTER_MAJOR=17): psg1-3 boot a Debian 13
# image and Patroni comes from Debian 13's package; vm1 and vm4 stay Debian 12.
CLUSTER_SUITES = {15: "bookworm", 17: "trixie"}
DEFAULT_CLUSTER_MAJOR = 15
AIRFLOW_HOSTS_SUITE = "bookworm"


def cluster_major(environ=os.environ):
    """The lab's cluster major (PGHA_LAB_CLUSTER_MAJOR, default 15); one of CLUSTER_SUITES."""
    text = environ.get("PGHA_LAB_CLUSTER_MAJOR", "").strip() or str(DEFAULT_CLUSTER_MAJOR)
    if not text.isdigit() or int(text) not in CLUSTER_SUITES:
        raise ValueError(f"PGHA_LAB_CLUSTER_MAJOR={text!r}: the lab builds a cluster of major "
                         f"{' or '.join(map(str, CLUSTER_SUITES))}")
    return int(text)


CLUSTER_MAJOR = cluster_major()


def suite_of(name):
    """The Debian release host ``name`` boots."""
    return CLUSTER_SUITES[CLUSTER_MAJOR] if name in DATABASE_HOSTS else AIRFLOW_HOSTS_SUITE


# The Airflow release vm1 and vm4 run (PGHA_LAB_AIRFLOW), one of pgha's supported releases, with
# the pins it needs beside it (tests/airflow_releases.py says why). By default the newest, except
# beside a PostgreSQL 13 source: Airflow 3.2 dropped PostgreSQL 13 as a metadata database, so a
# 13 source runs the oldest supported release, as such an installation would. lab/wheelhouse.txt
# names the newest; `cache` builds one wheelhouse per release.
AIRFLOW_RELEASE_PINS = {
    "3.0.6": ("cadwyn==5.4.6", "fastapi==0.116.1", "pydantic==2.11.7", "PyJWT==2.10.1"),
    "3.1.8": (),
    "3.2.2": ("cadwyn==7.0.0", "fastapi==0.136.3", "svcs==25.1.0"),
    "3.3.2": (),
}
DEFAULT_AIRFLOW_RELEASE = {13: "3.0.6", 15: "3.3.2"}  # by source major


def airflow_release(environ=os.environ, source=None):
    """The lab's Airflow release (PGHA_LAB_AIRFLOW, default by the source major)."""
    default = DEFAULT_AIRFLOW_RELEASE[source or source_major(environ)]
    text = environ.get("PGHA_LAB_AIRFLOW", "").strip() or default
    if text not in AIRFLOW_RELEASE_PINS:
        raise ValueError(f"PGHA_LAB_AIRFLOW={text!r}: the lab runs Airflow "
                         f"{', '.join(AIRFLOW_RELEASE_PINS)}")
    if (source or source_major(environ)) < 14 and text >= "3.2":
        raise ValueError(f"PGHA_LAB_AIRFLOW={text}: Airflow 3.2 and newer do not take PostgreSQL 13 as their "
                         f"database (PGHA_LAB_SOURCE_MAJOR=13): use {DEFAULT_AIRFLOW_RELEASE[13]} or 3.1.8")
    return text


AIRFLOW_RELEASE = airflow_release()

# The bridge: the outer machine's side of the lab network.
BRIDGE = "pgha0"
BRIDGE_IP = "10.83.0.1"
PREFIX = 24
NETWORK = BRIDGE_IP.rsplit(".", 1)[0] + f".0/{PREFIX}"

# Services of the outer machine, bound to the bridge address.
APT_PROXY_PORT = 3142
WHEEL_PORT = 3141
# The only ports of the outer machine that hosts may reach (plus ping).
OUTER_PORTS = (APT_PROXY_PORT, WHEEL_PORT)
# The drill's fault injector: an sshd on the outer machine whose one key may only run
# include/drill/fault_gate.py (crash/start/isolate/heal of a database host). Only the
# Airflow hosts reach it.
FAULT_GATE_PORT = 2222
FAULT_GATE_NODES = DATABASE_HOSTS
APT_PROXY_URL = f"http://{BRIDGE_IP}:{APT_PROXY_PORT}"
WHEELS_URL = f"http://{BRIDGE_IP}:{WHEEL_PORT}/"

# Services on the hosts. The Airflow API server on vm1; the others at lab/inventory.yml's
# ports (the inventory's defaults): PostgreSQL on every host, HAProxy on vm1, Patroni's
# REST API and etcd's client port on the database hosts.
API_PORT = 8080
POSTGRES_PORT = 5432
HAPROXY_WRITE_PORT = 5433
HAPROXY_READ_PORT = 5434
HAPROXY_STATS_PORT = 7000  # HTTPS, behind a login
PATRONI_REST_PORT = 8008
ETCD_CLIENT_PORT = 2379
MAIL_SINK_PORT = 2525  # vm1: the SMTP sink of pgha's alerts (lab/provision/mail_sink.py)


def address(name):
    """A host's address on the bridge."""
    return HOSTS[name]["ip"]


def database_addresses():
    """{database host: address}, in the cluster's order."""
    return {name: address(name) for name in DATABASE_HOSTS}


def api_url():
    """The Airflow API server (and UI) on vm1."""
    return f"http://{address(AIRFLOW_HOST)}:{API_PORT}"
