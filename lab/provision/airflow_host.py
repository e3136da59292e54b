"""What `lab/lab provision` puts on the Airflow hosts, rendered from the lab's secrets:
vm1 (scheduler, API server, dag-processor, triggerer, PostgreSQL, the Celery broker)
and vm4 (a Celery worker that reaches vm1 by address).

Standard library only: lab/lab imports this module. Everything under
lab/provision/ is part of the key of the `provisioned` snapshots, so a change
here (or to a template beside it) makes the next `provision` build both again.

A bundle is a set of files pushed to /root/pgha-provision on the host (0700) and
installed by vm1.sh or vm4.sh; secrets travel only inside it (never on a command line).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import secrets as _secrets
from pathlib import Path
from typing import Any
from string import Template

HERE = Path(__file__).resolve().parent

AIRFLOW_HOME = "/home/airflow/airflow"
VENV = "/opt/airflow/venv"
SSH_KEY = "/home/airflow/.ssh/pgha_lab"
FAULT_GATE_KEY = "/home/airflow/.ssh/pgha_fault_gate"  # may only run the fault gate on the outer machine
INVENTORY = "/opt/pgha/lab/inventory.yml"
UNITS = ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer")
WORKER_UNITS = ("airflow-celery-worker",)
API_PORT = 8080
DB_PORT = 5432
REDIS_PORT = 6379
MAIL_PORT = 2525  # the SMTP sink of pgha's alerts on vm1 (mail_sink.py); topology.MAIL_SINK_PORT
MAIL_DIR = "/var/lib/pgha-lab/mail"  # one .eml file per message the sink accepted
DB_NAME, DB_USER = "airflow_db", "airflow_user"


def _token() -> str:
    return _secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe in URLs, env files, YAML, SQL


# Every password pgha handles ends with what breaks a naive writer of one of its formats
# (airflow.cfg's %, a URL's @ : /, conninfo's quotes and backslash, pgpass's :, a shell's
# $ # ; and space): every lab run proves that any password works.
HOSTILE_TAIL = "%@:/'\"\\ $#;"


def _password() -> str:
    return _token() + HOSTILE_TAIL


# Every generated secret of the lab: name -> how to make it. Made once, kept in
# lab/.state/secrets.json (0600) and stored beside each snapshot. The Airflow UI
# admin's and Redis's are the lab's own (pgha never writes them): plain tokens.
SECRETS = {
    "airflow_db_password": _password,     # airflow_user on vm1 today, and on the cluster after the move
    "admin_password": _token,             # Airflow UI/API user `admin`
    "pg_superuser_password": _password,   # cluster superuser `postgres` (Patroni)
    "pg_replication_password": _password,  # `replicator`
    "pg_rewind_password": _password,      # `rewinder`: Patroni's pg_rewind login (connection pgha_rewind)
    "patroni_api_password": _password,    # Patroni REST API user `patroni`
    "etcd_root_password": _password,      # etcd's `root` (connection pgha_etcd_root)
    "etcd_patroni_password": _password,   # etcd user `patroni`: Patroni's keys only (connection pgha_etcd_patroni)
    "etcd_pgha_password": _password,      # etcd user `pgha`: pgha's own etcd calls (connection pgha_etcd_pgha)
    "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "jwt_secret": lambda: _secrets.token_urlsafe(48),
    "api_secret_key": lambda: _secrets.token_urlsafe(32),
    "redis_password": _token,             # the Celery broker (Redis on vm1), `requirepass`
    "cluster_ca": lambda: _cluster_ca(),  # connection pgha_ca: the cluster CA pgha issues node certificates with
}
PASSWORDS = tuple(name for name, make in SECRETS.items() if make is _password)


def _cluster_ca() -> str:
    """A cluster CA (EC P-256, ten years, signs host certificates only) as JSON {certificate, key}, made with
    openssl (this module is standard library only); the key exists only in the lab's secrets file."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pgha-lab-ca-") as tmp:
        subprocess.run(
            ["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{tmp}/ca.key", "-out", f"{tmp}/ca.crt", "-days", "3650", "-subj", "/CN=pgha lab CA",
             "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
            check=True, capture_output=True)
        return json.dumps({"certificate": Path(f"{tmp}/ca.crt").read_text(), "key": Path(f"{tmp}/ca.key").read_text()})


def source_certificate(secrets: dict[str, str], address: str) -> tuple[str, str]:
    """vm1's PostgreSQL (the source) certificate and key, issued by the lab's cluster CA for vm1's name and
    address: what an operator whose CA also signed the source's certificate has, so the logical method's
    subscription verifies the source (sslmode=verify-full)."""
    import subprocess
    import tempfile

    ca = json.loads(secrets["cluster_ca"])
    with tempfile.TemporaryDirectory(prefix="pgha-lab-source-") as tmp:
        Path(f"{tmp}/ca.crt").write_text(ca["certificate"])
        Path(f"{tmp}/ca.key").write_text(ca["key"])
        Path(f"{tmp}/ext").write_text(f"subjectAltName=IP:{address},DNS:vm1\nbasicConstraints=critical,CA:FALSE\n"
                                      "keyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{tmp}/source.key", "-out", f"{tmp}/source.csr", "-subj", "/O=pgha lab"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", f"{tmp}/source.csr", "-CA", f"{tmp}/ca.crt", "-CAkey",
                        f"{tmp}/ca.key", "-CAcreateserial", "-days", "3650", "-extfile", f"{tmp}/ext",
                        "-out", f"{tmp}/source.crt"], check=True, capture_output=True)
        return Path(f"{tmp}/source.crt").read_text(), Path(f"{tmp}/source.key").read_text()


def complete(secrets: dict[str, str]) -> dict[str, str]:
    """`secrets` plus any missing one, generated. An existing value is kept, except a
    password made before passwords ended with HOSTILE_TAIL: that one is made again (safe:
    this file is part of the snapshots' key, so no kept host still runs on the old one)."""
    out = dict(secrets)
    for name, make in SECRETS.items():
        if name not in out or (name in PASSWORDS and not out[name].endswith(HOSTILE_TAIL)):
            out[name] = make()
    return out


def _secret_formats() -> Any:
    """pgha's one writer per format (plugins/secret_formats.py, standard library only),
    loaded by path: lab/lab runs on the machine's python3, where pgha is not installed."""
    spec = importlib.util.spec_from_file_location("pgha_secret_formats",
                                                  HERE.parent.parent / "plugins" / "secret_formats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


formats = _secret_formats()


def env_assignment(name: str, value: str) -> str:
    """`NAME="value"` read back unchanged by systemd (EnvironmentFile=) and by bash (`.`):
    inside double quotes both take a backslash before one of  \\ " $ `  as an escape and keep
    any other backslash (single quotes cannot hold a ' for systemd)."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"{name}: an environment file value cannot hold a line break")
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'{name}="{escaped}"'


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier: the server learns the password without it being sent."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    salt64, stored64, server64 = (base64.b64encode(b).decode() for b in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"


def connections(secrets: dict[str, str], hosts: dict[str, dict], host_pubkeys: dict[str, str],
                fault_injector: dict[str, Any], mail_host: str | None = None) -> dict[str, dict]:
    """The Airflow connections pg_ha_migration and pg_ha_failover_drill need (ids as in lab/inventory.yml)."""
    conns = {"pgha_fault_injector": {
        "conn_type": "ssh", "host": fault_injector["host"], "port": fault_injector["port"], "login": "root",
        "extra": {"key_file": FAULT_GATE_KEY, "host_key": fault_injector["host_key"], "no_host_key_check": False},
    }}
    for name, h in hosts.items():
        conns[f"ssh_{name}"] = {
            "conn_type": "ssh", "host": h["ip"], "port": 22, "login": "root",
            "extra": {"key_file": SSH_KEY, "host_key": host_pubkeys[name], "no_host_key_check": False},
        }
    conns["pgha_source_db"] = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": DB_USER,
                               "password": secrets["airflow_db_password"], "schema": DB_NAME}
    conns["pgha_pg_superuser"] = {"conn_type": "postgres", "login": "postgres",
                                  "password": secrets["pg_superuser_password"]}
    conns["pgha_pg_replication"] = {"conn_type": "generic", "login": "replicator",
                                    "password": secrets["pg_replication_password"]}
    conns["pgha_rewind"] = {"conn_type": "generic", "login": "rewinder",
                            "password": secrets["pg_rewind_password"]}
    conns["pgha_airflow_db"] = {"conn_type": "postgres", "login": DB_USER,
                                "password": secrets["airflow_db_password"], "schema": DB_NAME}
    conns["pgha_patroni_api"] = {"conn_type": "http", "login": "patroni",
                                 "password": secrets["patroni_api_password"]}
    for conn_id, login in (("pgha_etcd_root", "root"), ("pgha_etcd_patroni", "patroni"), ("pgha_etcd_pgha", "pgha")):
        conns[conn_id] = {"conn_type": "generic", "login": login,
                          "password": secrets[f"etcd_{login}_password"]}  # etcd RBAC (phase 3's etcd_auth)
    ca = json.loads(secrets["cluster_ca"])  # pgha.tls's layout: certificate in extra, key in password
    conns["pgha_ca"] = {"conn_type": "generic", "password": ca["key"], "extra": {"certificate": ca["certificate"]}}
    if mail_host:  # lab/inventory.yml's notify: section (plain SMTP on the lab bridge, no login)
        conns["smtp_default"] = {"conn_type": "smtp", "host": mail_host, "port": MAIL_PORT, "extra": {
            "disable_ssl": True, "disable_tls": True, "from_email": "airflow@pgha-lab.test", "timeout": 10,
            "retry_limit": 1}}
    return conns


def env_file(secrets: dict[str, str], hosts: dict[str, dict], host_pubkeys: dict[str, str],
             fault_injector: dict[str, Any], mail_host: str | None = None) -> str:
    """/etc/pgha/airflow.env: read by systemd (EnvironmentFile=) and by bash (`set -a; .`)."""
    lines = ["# pgha lab (lab/lab provision): environment of the Airflow units. root 0600: it holds",
             "# the connections (env-var secrets backend). Use `pgha-airflow CMD` for the CLI.",
             f"AIRFLOW_HOME={AIRFLOW_HOME}", f"PGHA_INVENTORY={INVENTORY}"]
    for conn_id, conn in connections(secrets, hosts, host_pubkeys, fault_injector, mail_host).items():
        value = json.dumps(conn, separators=(",", ":"), sort_keys=True)
        lines.append(env_assignment(f"AIRFLOW_CONN_{conn_id.upper()}", value))
    return "\n".join(lines) + "\n"


def render(name: str, **values: object) -> str:
    return Template((HERE / name).read_text()).substitute(**values)


def airflow_cfg(secrets: dict[str, str], api_address: str, local: bool) -> str:
    """airflow.cfg of an Airflow host: vm1 (`local`) reaches PostgreSQL, Redis and the
    Execution API on 127.0.0.1; a remote worker reaches them at vm1's address.
    Everything else, the secrets included (fernet key, API/JWT secrets), is the same on every host."""
    server = "127.0.0.1" if local else api_address
    url = formats.sqlalchemy_url("postgresql+psycopg2", DB_USER, secrets["airflow_db_password"], server, DB_PORT,
                                 DB_NAME)
    backend = formats.sqlalchemy_url("db+postgresql", DB_USER, secrets["airflow_db_password"], server, DB_PORT,
                                     DB_NAME)
    broker = f"redis://:{formats.url_part(secrets['redis_password'])}@{server}:{REDIS_PORT}/0"
    return render("airflow.cfg.in", home=AIRFLOW_HOME, api_address=api_address, port=API_PORT,
                  api_host=server, fernet_key=secrets["fernet_key"], api_secret_key=secrets["api_secret_key"],
                  jwt_secret=secrets["jwt_secret"], sql_alchemy_conn=formats.ini_value(url),
                  result_backend=formats.ini_value(backend), broker_url=formats.ini_value(broker))


def bundle(secrets: dict[str, str], hosts: dict[str, dict], host_pubkeys: dict[str, str], client_key: str,
           address: str, workers: dict[str, str], fault_injector: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    """Files for /root/pgha-provision on the Airflow host (vm1): name -> (content, mode).
    `workers`: name -> address of each remote Celery worker (PostgreSQL lets them in).
    `fault_injector`: host, port, host_key and (private) key of the drill's fault gate."""
    hba = "".join(f"host    {DB_NAME}    {DB_USER}    {ip}/32    scram-sha-256    # Celery worker {name}\n"
                  for name, ip in sorted(workers.items()))
    source_cert, source_key = source_certificate(secrets, address)
    files = {
        "vm1.sh": ((HERE / "vm1.sh").read_bytes(), 0o700),
        "airflow-host.sh": ((HERE / "airflow-host.sh").read_bytes(), 0o600),
        "pgha-airflow": ((HERE / "pgha-airflow").read_bytes(), 0o755),
        "airflow.cfg": (airflow_cfg(secrets, address, local=True).encode(), 0o600),
        "simple_auth_manager_passwords.json": (json.dumps({"admin": secrets["admin_password"]}).encode(), 0o600),
        "airflow.env": (env_file(secrets, hosts, host_pubkeys, fault_injector, mail_host=address).encode(), 0o600),
        "pgha_lab": (client_key.encode(), 0o600),
        "pgha_fault_gate": (fault_injector["key"].encode(), 0o600),
        "db.sql": (render("db.sql.in", db_user=DB_USER, db_name=DB_NAME,
                          verifier=scram_verifier(secrets["airflow_db_password"])).encode(), 0o600),
        "postgresql.conf": (render("postgresql.conf.in", address=address).encode(), 0o644),
        "source.crt": (source_cert.encode(), 0o644),
        "source.key": (source_key.encode(), 0o600),
        "pg_hba.lab": (hba.encode(), 0o644),
        "redis.conf": (render("redis.conf.in", address=address, port=REDIS_PORT,
                              redis_password=secrets["redis_password"]).encode(), 0o640),
        "network-online.conf": ((HERE / "network-online.conf").read_bytes(), 0o644),
        "mail_sink.py": ((HERE / "mail_sink.py").read_bytes(), 0o644),
        "pgha-mail-sink.service": (render("mail-sink.service.in", venv=VENV, address=address, port=MAIL_PORT,
                                          mail_dir=MAIL_DIR, state_directory=MAIL_DIR.removeprefix("/var/lib/"))
                                   .encode(), 0o644),
    }
    for unit in UNITS:
        files[f"{unit}.service"] = (render("airflow.service.in", unit=unit, command=unit.removeprefix("airflow-"),
                                           venv=VENV, after="network-online.target postgresql.service redis-server.service").encode(),
                                    0o644)
    return files


def worker_env_file() -> str:
    """/etc/pgha/airflow.env of a Celery worker: no connections (a task asks the API server
    for them through the Execution API, and the migration's tasks run on vm1 anyway)."""
    return ("# pgha lab (lab/lab provision): environment of the Celery worker unit. root 0600.\n"
            "# Use `pgha-airflow CMD` for the CLI.\n"
            f"AIRFLOW_HOME={AIRFLOW_HOME}\nPGHA_INVENTORY={INVENTORY}\n")


def worker_bundle(secrets: dict[str, str], api_address: str) -> dict[str, tuple[bytes, int]]:
    """Files for /root/pgha-provision on a Celery worker host (vm4): name -> (content, mode)."""
    files = {
        "vm4.sh": ((HERE / "vm4.sh").read_bytes(), 0o700),
        "airflow-host.sh": ((HERE / "airflow-host.sh").read_bytes(), 0o600),
        "pgha-airflow": ((HERE / "pgha-airflow").read_bytes(), 0o755),
        "airflow.cfg": (airflow_cfg(secrets, api_address, local=False).encode(), 0o600),
        "airflow.env": (worker_env_file().encode(), 0o600),
    }
    for unit in WORKER_UNITS:
        files[f"{unit}.service"] = (render("airflow.service.in", unit=unit, command="celery worker",
                                           venv=VENV, after="network-online.target").encode(), 0o644)
    return files
