"""Every template in include/templates, rendered for both OS families and accepted by the real tool.

haproxy -c and a live HAProxy in front of a real Patroni, patroni --validate-config, a
real 3-member etcd started from the rendered unit's ExecStart, systemd-analyze verify,
apt-config, pip and glibc's /etc/hosts lookup.
"""

from __future__ import annotations

import configparser
import csv
import io
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
import yaml
from pgha.inventory import Inventory, parse_inventory
from pgha.osfamily import DEBIAN, RHEL, OsFamily
from pgha.operators.host import NEIGHBOUR_SETTINGS, NEIGHBOUR_SYSCTL
from pgha import tls
from pgha.render import haproxy_context, node_context, plain_http_hosts, render, tls_context
from pgha_testing import loopback_inventory, shipped_inventory, write_tls_dir
from services import (
    ETCD_BIN,
    HAPROXY_BIN,
    PG_BIN_DIR,
    HAProxyService,
    PatroniService,
    ensure_patroni_venv,
    free_port,
    haproxy_command,
    log_tail,
    spawn,
    terminate,
    wait_until,
)

FAMILIES = [pytest.param(DEBIAN, id="debian"), pytest.param(RHEL, id="rhel")]
DB_LOOPBACK = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"

# Test-only credentials. The passwords hold what breaks naive YAML: quotes, ": ", " #",
# backslashes, Jinja syntax, non-ASCII and a character outside the BMP.
SECRETS = {
    "rest_user": "pgha-rest",
    "rest_password": 'rest "pw": #1 with spaces',
    "superuser": "postgres",
    "superuser_password": "s'uper: #pw \\ {{ x }} %s caf\u00e9 \U0001F418",
    "replication_user": "replicator",
    "replication_password": 'r"e: p # l ',
}


# --------------------------------------------------------------------------- helpers

def shipped() -> Inventory:
    """The shipped include/inventory.yml (the product's own topology)."""
    return parse_inventory(shipped_inventory(), "include/inventory.yml")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion, capturing its output as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kwargs)


def output(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout + res.stderr


def short_tmp_dir() -> Path:
    """A short /tmp directory (unix socket paths are limited to 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="pgha-test-tpl-"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = short_tmp_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


TEST_CA = tls.make_ca("pgha test CA")


def render_haproxy(inv: Inventory, tmp_path: Path) -> str:
    """haproxy.cfg with its TLS files in ``tmp_path/tls`` (a real CA and certificate: `haproxy -c` loads
    the ca-file and the stats page's crt)."""
    directory = write_tls_dir(tmp_path / "tls", TEST_CA)
    return render("haproxy.cfg.j2", **{**haproxy_context(inv), "tls": tls_context(inv, str(directory))})


def write_state_file(path: Path) -> Path:
    """A server-state file as `show servers state` writes it with no servers (version line + header)."""
    path.write_text("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n")
    return path


def haproxy_stats(socket_path: Path) -> list[dict[str, str]]:
    """`show stat` from the stats socket, one dict per CSV row."""
    text = haproxy_command(socket_path, "show stat").lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def server_status(socket_path: Path, backend: str) -> dict[str, str]:
    """{server name: status} for one proxy, read through the stats socket."""
    return {row["svname"]: row["status"] for row in haproxy_stats(socket_path)
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}


def unit_exec_start(unit: str) -> list[str]:
    """ExecStart of a rendered unit as argv (backslash-newline continuations joined, as systemd does)."""
    joined = re.sub(r"\\\n", " ", unit)
    lines = [line for line in joined.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


BOOLEAN_ETCD_FLAGS = {"--pre-vote", "--client-cert-auth", "--peer-client-cert-auth"}


def flag_values(argv: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of an argv; a bare ``--flag`` (a boolean such as --pre-vote) maps to "true"."""
    values: dict[str, str] = {}
    flags = iter(argv[1:])
    for flag in flags:
        assert flag.startswith("--"), argv
        if flag in BOOLEAN_ETCD_FLAGS:
            values[flag] = "true"
        else:
            values[flag] = next(flags)
    return values


def port_free_everywhere(addresses: list[str]) -> int:
    """A port that is free on every address (the inventory has one port for all members)."""
    for _ in range(50):
        port = free_port()
        ok = True
        for address in addresses:
            with socket.socket() as sock:
                try:
                    sock.bind((address, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError(f"no port free on all of {addresses}")


# --------------------------------------------------------------------------- haproxy.cfg

def test_haproxy_cfg_passes_haproxy_check_and_follows_corrections(tmp_path: Path) -> None:
    """`haproxy -c` accepts the shipped inventory's config; runbook corrections C12-C14b
    (docs/runbook-corrections.md) are in it.

    haproxy.cfg has no OS-family input (haproxy_context takes none): Debian and RHEL get the
    same file, so there is one rendering to check, not two.
    """
    inv = shipped()
    text = render_haproxy(inv, tmp_path)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    res = run([str(HAPROXY_BIN), "-c", "-f", str(cfg)])
    assert res.returncode == 0, output(res)
    assert "Configuration file is valid" in output(res)
    # The only warning allowed: the state file does not exist yet (first start, before any reload).
    warnings = [line for line in output(res).splitlines() if "[WARNING]" in line]
    assert all("server state file" in w and inv.haproxy.state_file in w for w in warnings), warnings

    lines = [line.strip() for line in text.splitlines()]
    assert not any(line.startswith("http-check port") for line in lines)  # C12
    servers = [line for line in lines if line.startswith("server ")]
    assert len(servers) == 2 * len(inv.database_nodes)
    # C12; and the checks speak HTTPS, verifying Patroni's certificate against the cluster CA
    assert all(line.endswith(f"check port {inv.patroni.rest_port} check-ssl verify required "
                             f"ca-file {tmp_path}/tls/ca.crt") for line in servers)
    defaults = [line for line in lines if line.startswith("default-server ")]
    assert len(defaults) == 2 and all("on-marked-down shutdown-sessions" in d for d in defaults)  # C13
    assert any(re.fullmatch(rf"stats socket {re.escape(inv.haproxy.stats_socket)} .*level admin.*", line)
               for line in lines)  # C14
    assert "http-check send meth GET uri /primary" in lines
    assert "http-check send meth GET uri /replica" in lines
    assert f"server-state-file {inv.haproxy.state_file}" in lines  # C14b
    assert "load-server-state-from-file global" in lines


def test_haproxy_cfg_has_no_warning_once_the_state_file_exists(tmp_path: Path) -> None:
    """With the state file present (as after the first reload) `haproxy -c` prints no warning at all."""
    raw = shipped_inventory()
    raw["haproxy"]["state_file"] = str(write_state_file(tmp_path / "server-state"))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy(parse_inventory(raw), tmp_path))
    res = run([str(HAPROXY_BIN), "-c", "-f", str(cfg)])
    assert res.returncode == 0 and "WARNING" not in output(res) and "ALERT" not in output(res), output(res)


def test_neighbour_sysctl_file_is_accepted_by_sysctl(tmp_path: Path) -> None:
    """Every line of the fast-peer-failure file is `key = value` for a key this kernel has (rendered for
    loopback, which has neigh settings); applying it needs root, so `sysctl -p` is left to the lab."""
    conf = tmp_path / "neighbour.conf"
    conf.write_text(render("neighbour-sysctl.conf.j2", interface="lo", settings=NEIGHBOUR_SETTINGS))
    lines = [line for line in conf.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(NEIGHBOUR_SETTINGS)
    for line in lines:
        key = line.split(" = ")[0]
        assert Path("/proc/sys", *key.split(".")).exists(), key


def test_haproxy_cfg_takes_fastinter_and_downinter(tmp_path: Path) -> None:
    """The failover tuning's check intervals reach every server line, and `haproxy -c` accepts them."""
    raw = shipped_inventory()
    raw["haproxy"].update(inter="1s", fastinter="250ms", downinter="250ms", fall=2, rise=1,
                          state_file=str(write_state_file(tmp_path / "server-state")))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy(parse_inventory(raw), tmp_path))
    res = run([str(HAPROXY_BIN), "-c", "-f", str(cfg)])
    assert res.returncode == 0 and "WARNING" not in output(res), output(res)
    defaults = [line.strip() for line in cfg.read_text().splitlines() if "default-server" in line]
    assert defaults == ["default-server inter 1s fastinter 250ms downinter 250ms fall 2 rise 1 "
                        "on-marked-down shutdown-sessions"] * 2


def test_haproxy_cfg_takes_connect_timeout_and_retries(tmp_path: Path) -> None:
    """haproxy.connect_timeout (HAProxy's retry step) and retries reach `defaults`; `haproxy -c` agrees."""
    raw = shipped_inventory()
    raw["haproxy"].update(connect_timeout="250ms", retries=8)
    raw["haproxy"]["state_file"] = str(write_state_file(tmp_path / "server-state"))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy(parse_inventory(raw), tmp_path))
    res = run([str(HAPROXY_BIN), "-c", "-f", str(cfg)])
    assert res.returncode == 0 and "WARNING" not in output(res), output(res)
    lines = [line.strip() for line in cfg.read_text().splitlines()]
    assert "timeout connect 250ms" in lines and "retries 8" in lines
    del raw["haproxy"]["connect_timeout"], raw["haproxy"]["retries"]
    cfg.write_text(render_haproxy(parse_inventory(raw), tmp_path))
    lines = [line.strip() for line in cfg.read_text().splitlines()]
    assert "timeout connect 4s" in lines and "retries 2" in lines  # the runbook's, when the inventory is silent


def test_haproxy_routes_writes_to_the_patroni_leader(
    patroni: PatroniService, haproxy_factory: Any, short_tmp: Path
) -> None:
    """A live HAProxy from the template: leader UP and the two absent members DOWN in postgres_write."""
    rest_port = int(patroni.rest_url.rsplit(":", 1)[1])
    write_port, read_port, stats_port = (free_port("0.0.0.0") for _ in range(3))
    # node1 is the real single-node Patroni on 127.0.0.1; nothing listens on node2/node3.
    raw = loopback_inventory(
        [("node1", patroni.pg_host), ("node2", "127.0.0.12"), ("node3", "127.0.0.13")],
        postgres={"port": patroni.pg_port},
        patroni={"rest_port": rest_port},
        haproxy={"write_port": write_port, "read_port": read_port, "stats_port": stats_port,
                 "stats_socket": str(short_tmp / "admin.sock"),
                 "state_file": str(write_state_file(short_tmp / "server-state")),
                 "inter": "200ms"},
    )
    raw["hosts"][0]["address"] = "127.0.0.10"  # the HAProxy host must differ from node1's 127.0.0.1
    inv = parse_inventory(raw)
    svc: HAProxyService = haproxy_factory(render("haproxy.cfg.j2", **haproxy_context(inv)))
    socket_path = Path(inv.haproxy.stats_socket)
    wanted = {"node1": "UP", "node2": "DOWN", "node3": "DOWN"}
    seen: dict[str, dict[str, str]] = {}

    def settled() -> bool:
        seen["write"] = server_status(socket_path, "postgres_write")
        seen["read"] = server_status(socket_path, "postgres_read")
        # The leader answers 503 on /replica, so the read proxy has no server UP.
        return seen["write"] == wanted and set(seen["read"].values()) == {"DOWN"}

    try:
        wait_until(settled, 15, "HAProxy checks to settle")
    except Exception as exc:
        raise AssertionError(f"{seen}\n{log_tail(svc.log_file)}") from exc
    assert seen["write"] == wanted
    # And a client on the write port reaches the primary.
    conn = psycopg2.connect(host="127.0.0.1", port=write_port, user="postgres",
                            password=patroni.superuser_password, dbname="postgres", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_is_in_recovery()")
            assert cur.fetchone() == (False,)
    finally:
        conn.close()


# --------------------------------------------------------------------------- patroni.yml

def patroni_yml(inv: Inventory, family: OsFamily, secrets: dict[str, str] = SECRETS,
                bin_dir: str | None = None) -> str:
    """patroni.yml for the first database node; ``bin_dir`` overrides only that one value."""
    ctx = node_context(inv, inv.db_hosts[0], family)
    if bin_dir is not None:
        ctx["bin_dir"] = bin_dir
    return render("patroni.yml.j2", secrets=secrets, **ctx)


def validate_patroni(path: Path) -> subprocess.CompletedProcess[str]:
    return run([str(ensure_patroni_venv()), "--validate-config", "--ignore-listen-port", str(path)])


@pytest.mark.parametrize("family", FAMILIES)
def test_patroni_yml_passes_validate_config(family: OsFamily, tmp_path: Path) -> None:
    """`patroni --validate-config` (Patroni 4.1.5) accepts the shipped inventory's patroni.yml."""
    inv = shipped()
    bin_dir = None
    if family.postgres_bin(inv.postgres.major) != str(PG_BIN_DIR):
        # RHEL keeps PostgreSQL in /usr/pgsql-<major>/bin, which this Debian test machine
        # lacks, and validate-config checks bin_dir's content. Test-only override of
        # bin_dir (and nothing else): a directory of symlinks to the real PostgreSQL 15.
        links = tmp_path / "usr-bin"
        links.mkdir()
        for tool in PG_BIN_DIR.iterdir():
            (links / tool.name).symlink_to(tool)
        bin_dir = str(links)
        if not Path(family.postgres_bin(inv.postgres.major), "postgres").exists():
            unchanged = tmp_path / "unchanged.yml"
            unchanged.write_text(patroni_yml(inv, family))
            res = validate_patroni(unchanged)
            assert res.returncode != 0 and re.search(r"does not contain 'postgres'|Directory '\S+' does not exist",
                                                     output(res)), output(res)
    path = tmp_path / "patroni.yml"
    path.write_text(patroni_yml(inv, family, bin_dir=bin_dir))
    res = validate_patroni(path)
    assert res.returncode == 0 and output(res).strip() == "", output(res)


def test_patroni_yml_sets_a_short_wal_retrieve_retry_interval_unless_told_otherwise() -> None:
    """A standby retries its lost primary every 500 ms (PostgreSQL's 5 s kept a restarted primary without a sync
    standby); the inventory's own value wins."""
    params = yaml.safe_load(patroni_yml(shipped(), DEBIAN))["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert params["wal_retrieve_retry_interval"] == "500ms"
    raw = shipped_inventory()
    raw["postgres"]["parameters"]["wal_retrieve_retry_interval"] = "2s"
    params = yaml.safe_load(patroni_yml(parse_inventory(raw), DEBIAN))["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert params["wal_retrieve_retry_interval"] == "2s"


@pytest.mark.parametrize("family", FAMILIES)
def test_patroni_yml_follows_corrections(family: OsFamily) -> None:
    """etcd3, scram, a local pg_hba line, wal_keep_size, no bootstrap.users/pg_hba, the ttl rule, REST auth.

    Cn: the runbook corrections in docs/runbook-corrections.md.
    """
    inv = shipped()
    text = patroni_yml(inv, family)
    cfg = yaml.safe_load(text)
    assert "etcd3" in cfg and "etcd" not in cfg  # C1
    assert cfg["etcd3"]["hosts"] == [f"{h.address}:{inv.etcd.client_port}" for h in inv.db_hosts]
    assert "md5" not in text  # C4
    assert cfg["postgresql"]["parameters"]["password_encryption"] == "scram-sha-256"
    hba = cfg["postgresql"]["pg_hba"]
    assert any(rule.split()[0] == "local" for rule in hba)
    assert all(rule.split()[-1] in ("scram-sha-256", "peer", "reject") or rule.endswith(
        " scram-sha-256 clientcert=verify-ca") for rule in hba)
    dcs = cfg["bootstrap"]["dcs"]
    params = dcs["postgresql"]["parameters"]
    assert "wal_keep_segments" not in text and params["wal_keep_size"] == "1600MB"  # C5
    assert "synchronous_standby_names" not in text  # C6
    assert "users" not in cfg["bootstrap"] and "pg_hba" not in cfg["bootstrap"]  # C3, C4
    assert "pg_hba" not in dcs["postgresql"]
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]  # C7
    assert dcs["ttl"] >= 20
    assert cfg["restapi"]["authentication"] == {"username": SECRETS["rest_user"],
                                                "password": SECRETS["rest_password"]}
    assert cfg["postgresql"]["bin_dir"] == family.postgres_bin(inv.postgres.major)
    assert cfg["postgresql"]["data_dir"] == family.postgres_data(inv.postgres.major)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("password", [
    'a "quoted": #not-a-comment  two  spaces ',
    "'single' \\backslash\\ {{ jinja }} {% raw %} %s",
    "- leading dash", "*alias", "&anchor", "!tag", "? q", "|", ">", "@at", "`tick`",
    "null", "~", "true", "no", "0x1F", "1e3", "", " ", "\ttab\nnewline\r",
    "caf\u00e9 \u2028sep\u0085nel \x7f del", "\U0001F418 outside the BMP",
])
def test_secrets_survive_the_yaml_round_trip(family: OsFamily, password: str) -> None:
    """Whatever the Connection holds, parsing the rendered YAML gives back exactly the secrets."""
    secrets = {key: password if key.endswith("password") else value for key, value in SECRETS.items()}
    cfg = yaml.safe_load(patroni_yml(shipped(), family, secrets=secrets))
    auth = cfg["postgresql"]["authentication"]
    assert cfg["restapi"]["authentication"] == {"username": secrets["rest_user"], "password": password}
    verify = {"sslmode": "verify-full", "sslrootcert": "/etc/pgha/tls/ca.crt"}
    assert auth["superuser"] == {"username": secrets["superuser"], "password": password, **verify}
    assert auth["replication"] == {"username": secrets["replication_user"], "password": password, **verify}
    assert auth["rewind"] == auth["superuser"]


def test_a_replication_user_of_any_name_gets_its_own_pg_hba_rules() -> None:
    """The name is quoted for pg_hba (secret_formats.hba_word) and the rule for YAML."""
    inv = shipped()
    name = 'repl "x": #y'
    cfg = yaml.safe_load(patroni_yml(inv, DEBIAN, secrets={**SECRETS, "replication_user": name}))
    rules = [r for r in cfg["postgresql"]["pg_hba"] if r.split()[:2] in (["host", "replication"],
                                                                            ["hostssl", "replication"])]
    assert rules[0] == 'host replication "repl ""x"": #y" 127.0.0.1/32 scram-sha-256'
    assert len(rules) == 1 + len(inv.db_hosts)  # loopback and each member, never the whole network
    assert all(rule.startswith("hostssl replication ") for rule in rules[1:])  # the network: TLS only
    assert cfg["postgresql"]["authentication"]["replication"]["username"] == name
    plain = yaml.safe_load(patroni_yml(inv, DEBIAN))["postgresql"]["pg_hba"]
    assert "host replication replicator 127.0.0.1/32 scram-sha-256" in plain


def test_the_superuser_logs_in_only_locally_and_from_the_hosts_pgha_manages() -> None:
    """Its rules come before the network's catch-all, then a reject: nobody else on cluster.network gets in as it.
    From a host that is no member (HAProxy's, whose address every session through HAProxy has; an Airflow
    host; the source) the password is not enough: a certificate of the cluster CA too (only pgha mints them)."""
    inv = shipped()
    hba = yaml.safe_load(patroni_yml(inv, DEBIAN))["postgresql"]["pg_hba"]
    managed = [inv.host(name).address for name in inv.managed_host_names]
    members = {h.address for h in inv.db_hosts}
    superuser = [rule for rule in hba if rule.split()[:3] in (["host", "all", "postgres"], ["hostssl", "all", "postgres"])]
    assert superuser == [f"hostssl all postgres {address}/32 scram-sha-256" + (
        "" if address in members else " clientcert=verify-ca") for address in managed] + [
        "host all postgres all reject"]  # `host` matches TLS and plain text: both refused
    assert f"hostssl all postgres {inv.host(inv.haproxy.host).address}/32 scram-sha-256 clientcert=verify-ca" in hba
    assert set(managed) >= {h.address for h in inv.db_hosts} | {inv.host(inv.haproxy.host).address}
    assert hba.index("host all postgres all reject") < hba.index(
        f"hostssl all all {inv.cluster.network} scram-sha-256")
    assert "local all postgres peer" in hba


def test_a_rewind_role_gets_the_members_only_and_the_postgres_database() -> None:
    inv = shipped()
    secrets = {**SECRETS, "rewind_user": 'rew "ind"', "rewind_password": 'r: "w" # \\'}
    cfg = yaml.safe_load(patroni_yml(inv, DEBIAN, secrets=secrets))
    assert cfg["postgresql"]["authentication"]["rewind"] == {
        "username": 'rew "ind"', "password": 'r: "w" # \\', "sslmode": "verify-full",
        "sslrootcert": "/etc/pgha/tls/ca.crt"}
    hba = cfg["postgresql"]["pg_hba"]
    rewind = [rule for rule in hba if '"rew ""ind"""' in rule]
    assert rewind == [f'hostssl postgres "rew ""ind""" {h.address}/32 scram-sha-256' for h in inv.db_hosts] + [
        'host all "rew ""ind""" all reject']
    # without a rewind connection the superuser rewinds, with no rules of its own
    plain = yaml.safe_load(patroni_yml(inv, DEBIAN))
    assert plain["postgresql"]["authentication"]["rewind"] == plain["postgresql"]["authentication"]["superuser"]
    assert not [rule for rule in plain["postgresql"]["pg_hba"] if rule.startswith(("host postgres ", "hostssl postgres "))]


def test_the_pg_hba_rules_are_accepted_by_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered rules, with a rewind role, loaded by a real PostgreSQL 15 with ssl on as patroni.yml sets
    it (pg_hba_file_rules names no error: a hostssl rule is an error where ssl is off). Then the server
    keeps only a hostssl rule for the network: a plain-text client is refused, verify-full with the
    cluster CA logs in, and a client that trusts another CA refuses the server; pgha's NodePostgresHook
    (the drill's and the routing check's sessions) given the CA file does the same."""
    from services import start_postgres, write_postgres_file
    from pgha import pgdata
    from pgha.hooks.postgres import NodePostgresHook
    from pgha_testing import set_connection

    secrets = {**SECRETS, "rewind_user": "rewinder", "rewind_password": "x"}
    cfg = yaml.safe_load(patroni_yml(shipped(), DEBIAN, secrets=secrets))["postgresql"]
    rules = cfg["pg_hba"]
    svc = start_postgres(tmp_path / "hba", password="pw")
    try:
        node = tls.issue(TEST_CA, "node1", dns_names=["localhost"], ip_addresses=[svc.host])
        files = {"ssl_cert_file": node.cert_pem, "ssl_key_file": node.key_pem, "ssl_ca_file": TEST_CA.cert_pem}
        admin = pgdata.Endpoint(host=svc.host, port=svc.port, user=svc.user, dbname="postgres", password="pw")
        with pgdata.session(admin) as conn:
            for setting, text in files.items():
                path = write_postgres_file(svc.data_dir / setting, text)
                pgdata.execute(conn, pgdata.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    pgdata.sql.Identifier(setting), pgdata.sql.Literal(str(path))))
            for setting in ("ssl", "ssl_min_protocol_version"):
                pgdata.execute(conn, pgdata.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    pgdata.sql.Identifier(setting), pgdata.sql.Literal(cfg["parameters"][setting])))
            pgdata.execute(conn, pgdata.sql.SQL("SELECT pg_reload_conf()"))
            wait_until(lambda: pgdata.scalar(conn, pgdata.sql.SQL("SHOW ssl")) == "on", 10, "ssl on")
            hba_file = pgdata.scalar(conn, pgdata.sql.SQL("SHOW hba_file"))
            Path(hba_file).write_text("\n".join(rules) + "\n")
            loaded = pgdata.rows(conn, pgdata.sql.SQL("SELECT line_number, error FROM pg_hba_file_rules"))
            assert len(loaded) == len(rules) and all(error is None for _, error in loaded), loaded
            Path(hba_file).write_text(f"local all all peer\nhostssl all all {svc.host}/32 scram-sha-256\n")
            pgdata.execute(conn, pgdata.sql.SQL("SELECT pg_reload_conf()"))
        ca_file = tmp_path / "ca.crt"
        ca_file.write_text(TEST_CA.cert_pem)
        other_ca = tmp_path / "other-ca.crt"
        other_ca.write_text(tls.make_ca("another CA").cert_pem)

        def connect(**ssl: str) -> Any:
            return psycopg2.connect(host=svc.host, port=svc.port, user=svc.user, password="pw", dbname="postgres",
                                    connect_timeout=5, **ssl)

        with pytest.raises(psycopg2.OperationalError, match="no encryption"):
            connect(sslmode="disable").close()
        with connect(sslmode="verify-full", sslrootcert=str(ca_file)) as conn, conn.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
        conn.close()
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            connect(sslmode="verify-full", sslrootcert=str(other_ca)).close()

        set_connection(monkeypatch, "pgha_tls_check", conn_type="postgres", login=svc.user, password="pw")
        client = tls.ClientTLS.for_ca(TEST_CA).files()  # pgha's client certificate, as the worker shows it
        hook = NodePostgresHook("pgha_tls_check", host=svc.host, port=svc.port, database="postgres",
                                tls_files=tls.TlsFiles(ca=str(ca_file), cert=client.cert, key=client.key))
        assert hook.scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            NodePostgresHook("pgha_tls_check", host=svc.host, port=svc.port, database="postgres",
                             tls_files=tls.TlsFiles(ca=str(other_ca), cert=client.cert, key=client.key)).scalar("SELECT 1")

        # pg_dump | pg_restore (the copy) verify the server the same way: the endpoint's sslmode and
        # sslrootcert travel in the database's connection string
        passfile = tmp_path / "copy.pgpass"
        passfile.write_text(f"{svc.host}:{svc.port}:*:{svc.user}:pw\n")
        passfile.chmod(0o600)
        for ca, ok in ((ca_file, True), (other_ca, False)):
            verified = pgdata.Endpoint(host=svc.host, port=svc.port, user=svc.user, dbname="postgres",
                                       password="pw", sslmode="verify-full", sslrootcert=str(ca))
            dump = subprocess.run([str(svc.bin_dir / "pg_dump"), "--schema-only", *verified.client_args()],
                                  env={"PGPASSFILE": str(passfile), "PATH": "/usr/bin:/bin"},
                                  capture_output=True, text=True, timeout=60)
            assert (dump.returncode == 0) is ok, dump.stderr
            if not ok:
                assert "certificate verify failed" in dump.stderr, dump.stderr
    finally:
        svc.stop()


def test_shipped_secrets_survive_the_yaml_round_trip() -> None:
    """The mixed SECRETS used by the validate-config test come back exactly too."""
    cfg = yaml.safe_load(patroni_yml(shipped(), DEBIAN))
    auth = cfg["postgresql"]["authentication"]
    got = {
        "rest_user": cfg["restapi"]["authentication"]["username"],
        "rest_password": cfg["restapi"]["authentication"]["password"],
        "superuser": auth["superuser"]["username"],
        "superuser_password": auth["superuser"]["password"],
        "replication_user": auth["replication"]["username"],
        "replication_password": auth["replication"]["password"],
    }
    assert got == SECRETS


# --------------------------------------------------------------------------- etcd.service

@pytest.mark.parametrize("family", FAMILIES)
def test_etcd_unit_exec_start_forms_a_three_member_cluster(family: OsFamily, tmp_path: Path) -> None:
    """Run the real etcd with the flags of the rendered units for 127.0.0.11-13; the cluster forms.

    Each member's unit is rendered from the same loopback inventory except etcd.data_dir
    (one directory per member, set through the inventory), because the three members share
    this one machine. The binary is this machine's /usr/bin/etcd (RHEL's unit names
    /usr/local/bin/etcd, which is asserted, not run).

    One deviation, forced by the shared loopback: the unit adds ``http://127.0.0.1:<client>``
    to --listen-client-urls so local tools reach the member; only one process per host can
    bind that, so members 2 and 3 run without that one extra URL. Member 1 runs with every
    flag exactly as rendered, and its 127.0.0.1 listener is checked.
    """
    client_port = port_free_everywhere(["127.0.0.1", *DB_LOOPBACK])
    peer_port = port_free_everywhere(["127.0.0.1", *DB_LOOPBACK])
    names = ["node1", "node2", "node3"]
    argvs: list[list[str]] = []
    for name, address in zip(names, DB_LOOPBACK):
        raw = loopback_inventory(list(zip(names, DB_LOOPBACK)),
                                 etcd={"client_port": client_port, "peer_port": peer_port,
                                       "token": "pgha-test-tpl", "data_dir": str(tmp_path / f"data-{name}")},
                                 tls={"enabled": True})
        inv = parse_inventory(raw)
        directory = write_tls_dir(tmp_path / f"tls-{name}", TEST_CA, common_name=name, dns_names=[name],
                                  ip_addresses=[address, "127.0.0.1"])
        ctx = {**node_context(inv, inv.host(name), family), "tls": tls_context(inv, str(directory))}
        argv = unit_exec_start(render("etcd.service.j2", **ctx))
        assert argv[0] == family.etcd_binary
        argvs.append(argv)
    local_url = f"https://127.0.0.1:{client_port}"
    client_dir = write_tls_dir(tmp_path / "tls-client", TEST_CA, common_name="pgha-client")
    client = {"verify": str(client_dir / "ca.crt"),
              "cert": (str(client_dir / "postgres.crt"), str(client_dir / "postgres.key"))}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index, (name, argv) in enumerate(zip(names, argvs)):
            flags = flag_values(argv)
            assert flags["--name"] == name and flags["--data-dir"] == str(tmp_path / f"data-{name}")
            assert flags["--listen-client-urls"].split(",")[-1] == local_url
            assert flags["--client-cert-auth"] == flags["--peer-client-cert-auth"] == "true"
            if index > 0:
                urls = flags["--listen-client-urls"].split(",")
                argv = [*argv]
                argv[argv.index("--listen-client-urls") + 1] = ",".join(u for u in urls if u != local_url)
            procs.append(spawn([str(ETCD_BIN), *argv[1:]], tmp_path / f"{name}.log", cwd=tmp_path))

        def check() -> None:
            for name, proc in zip(names, procs):
                if proc.poll() is not None:
                    raise AssertionError(f"etcd {name} exited {proc.returncode}:\n"
                                         f"{log_tail(tmp_path / f'{name}.log')}")

        client_urls = [flag_values(argv)["--advertise-client-urls"] for argv in argvs]
        assert all(url.startswith("https://") for url in client_urls)

        def healthy() -> bool:
            for url in [*client_urls, local_url]:
                try:
                    response = requests.get(f"{url}/health", timeout=1.0, **client)  # type: ignore[arg-type]
                except requests.RequestException:
                    return False
                if response.status_code != 200 or response.json().get("health") != "true":
                    return False
            return True

        wait_until(healthy, 30, "the rendered etcd members to be healthy", check=check)
        for url in client_urls:
            response = requests.post(f"{url}/v3/cluster/member/list", json={}, timeout=5, **client)  # type: ignore[arg-type]
            assert response.status_code == 200, response.text
            body = response.json()
            assert sorted(m["name"] for m in body["members"]) == names
            assert sorted(u for m in body["members"] for u in m["clientURLs"]) == sorted(client_urls)
        # No way in without the cluster CA's certificate: plain text, TLS without a client
        # certificate, a certificate of another CA, or a client that trusts another CA.
        put = {"key": "L2FpcmZsb3cvbGVhZGVy", "value": "eA=="}  # /airflow/leader = x
        url = client_urls[0]
        try:
            plain = requests.post(f"{url.replace('https://', 'http://')}/v3/kv/put", json=put, timeout=2.0)
        except requests.RequestException:
            pass
        else:
            assert plain.status_code == 400, plain.text  # "Client sent an HTTP request to an HTTPS server"
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"{url}/v3/kv/put", json=put, timeout=5, verify=client["verify"])
        other = write_tls_dir(tmp_path / "tls-other", tls.make_ca("another CA"), common_name="intruder")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"{url}/v3/kv/put", json=put, timeout=5, verify=client["verify"],
                          cert=(str(other / "etcd.crt"), str(other / "etcd.key")))
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"{url}/v3/kv/put", json=put, timeout=5, verify=str(other / "ca.crt"), cert=client["cert"])
        response = requests.post(f"{url}/v3/kv/range", json={"key": put["key"]}, timeout=5, **client)  # type: ignore[arg-type]
        assert response.status_code == 200 and "kvs" not in response.json()  # nothing was written
    finally:
        for proc in procs:
            terminate(proc.pid, proc)


# --------------------------------------------------------------------------- systemd units

def verify_root(tmp_path: Path, family: OsFamily, inv: Inventory, *, with_binaries: bool = True) -> Path:
    """A root for `systemd-analyze verify --root`: this machine's unit search path, the rendered
    units in etc/systemd/system, and (copies of) the real binaries at the paths the units name."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as on Debian 12 and Rocky 9
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    ctx = node_context(inv, inv.db_hosts[0], family)
    for name in ("etcd.service", "patroni.service"):
        (units / name).write_text(render(f"{name}.j2", **ctx))
    (units / "pgha-neighbour.service").write_text(render("pgha-neighbour.service.j2", conf=NEIGHBOUR_SYSCTL))
    if with_binaries:
        # Absolute symlinks would resolve inside the root, so copy the real executables.
        for unit_path, real in ((family.etcd_binary, ETCD_BIN), (ctx["patroni_bin"], ensure_patroni_venv()),
                                ("/usr/bin/kill", Path("/usr/bin/kill")), ("/usr/sbin/sysctl", Path("/usr/sbin/sysctl"))):
            target = root / unit_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, target)
    return root


def systemd_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return run([SYSTEMD_ANALYZE, "verify", f"--root={root}", "/etc/systemd/system/etcd.service",
                "/etc/systemd/system/patroni.service", "/etc/systemd/system/pgha-neighbour.service"])


@pytest.mark.parametrize("family", FAMILIES)
def test_systemd_units_pass_systemd_analyze_verify(family: OsFamily, tmp_path: Path) -> None:
    """`systemd-analyze verify --root` accepts etcd.service and patroni.service with no message at all.

    verify exits 0 even for unknown keys or bad values (it only logs them), so the test
    requires empty output as well.
    """
    inv = shipped()
    res = systemd_verify(verify_root(tmp_path, family, inv))
    assert res.returncode == 0 and output(res) == "", output(res)


def test_systemd_verify_root_really_checks_the_units(tmp_path: Path) -> None:
    """Control: the same root without the binaries makes verify fail on every ExecStart/ExecReload."""
    inv = shipped()
    res = systemd_verify(verify_root(tmp_path, RHEL, inv, with_binaries=False))
    assert res.returncode != 0
    for command in (RHEL.etcd_binary, inv.patroni.install.venv + "/bin/patroni", "/bin/kill"):
        assert f"Command {command} is not executable" in output(res), output(res)


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_files_follow_corrections(family: OsFamily) -> None:
    """patroni.service: Type=simple, KillMode=process, TimeoutSec=30, Wants= (no Requires=) etcd.

    Cn: the runbook corrections in docs/runbook-corrections.md.
    """
    inv = shipped()
    ctx = node_context(inv, inv.db_hosts[0], family)
    patroni_unit = render("patroni.service.j2", **ctx).splitlines()
    assert "Type=simple" in patroni_unit and "KillMode=process" in patroni_unit  # C8, C10
    assert "TimeoutSec=30" in patroni_unit
    assert not any(line.startswith("Requires=") for line in patroni_unit)  # C9
    assert any(line.startswith("Wants=") and "etcd.service" in line for line in patroni_unit)
    assert f"ExecStart={inv.patroni.install.venv}/bin/patroni /etc/patroni/patroni.yml" in patroni_unit
    etcd_argv = unit_exec_start(render("etcd.service.j2", **ctx))
    assert etcd_argv[0] == family.etcd_binary
    assert flag_values(etcd_argv)["--data-dir"] == inv.etcd.data_dir


# --------------------------------------------------------------------------- apt, pip, hosts

def packages_render(template: str, family: OsFamily, **packages: str | None) -> str:
    """Render ``template`` as HostPrepareOperator does (packages only, plus plain_http_hosts for
    pip.conf) and check the full node context of ``family`` gives the very same text: these
    templates have no OS-family input."""
    inv = shipped()
    inv = replace(inv, packages=replace(inv.packages, **packages))
    extra = {"plain_http_hosts": plain_http_hosts(inv.packages)} if template == "pip.conf.j2" else {}
    text = render(template, packages=inv.packages, **extra)
    assert render(template, **node_context(inv, inv.db_hosts[0], family), **extra) == text
    return text


def apt_config_added(path: Path) -> list[str]:
    """The lines `apt-config dump -c <path>` shows beyond this machine's own apt configuration."""
    base = run(["apt-config", "dump"])
    with_file = run(["apt-config", "dump", "-c", str(path)])
    assert base.returncode == 0 and with_file.returncode == 0, output(with_file)
    before = set(base.stdout.splitlines())
    # Skip apt's record of its own command line and the empty parent nodes (`Acquire::http "";`).
    return [line for line in with_file.stdout.splitlines()
            if line not in before and not line.startswith("CommandLine::") and not line.endswith(' "";')]


@pytest.mark.parametrize("family", FAMILIES)
def test_apt_proxy_conf_is_read_by_apt_config(family: OsFamily, tmp_path: Path) -> None:
    """With a proxy apt gets exactly it (https direct); without one apt gets no proxy setting.

    (The operator installs this file on Debian only; RHEL gets a dnf.conf proxy= line.)
    """
    path = tmp_path / "90pgha-proxy"
    path.write_text(packages_render("apt-proxy.conf.j2", family, apt_proxy="http://proxy.example:3142"))
    assert apt_config_added(path) == ['Acquire::http::Proxy "http://proxy.example:3142";',
                                      'Acquire::https::Proxy "DIRECT";']
    path.write_text(packages_render("apt-proxy.conf.j2", family, apt_proxy=None))
    assert "None" not in path.read_text()
    assert apt_config_added(path) == []


def pip_sees(path: Path) -> dict[str, str]:
    """What pip itself reads from ``path`` (`pip config debug`, the PIP_CONFIG_FILE section)."""
    res = run([sys.executable, "-m", "pip", "config", "debug"],  # the pip of the Python running the tests
              env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent), "PIP_CONFIG_FILE": str(path)})
    assert res.returncode == 0, output(res)
    section = res.stdout.split(f"  {path}, exists: True\n", 1)[1]
    values: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("    "):
            break
        key, _, value = line.strip().partition(": ")
        values[key] = value
    return values


INDEX = "https://pypi.example/simple"
WHEELS = "http://wheels.example:8080/wheels/"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("index", "links", "expected"), [
    (INDEX, None, {"global.index-url": INDEX}),
    (None, WHEELS, {"global.no-index": "true", "global.find-links": WHEELS,
                    "global.trusted-host": "wheels.example"}),
    (INDEX, WHEELS, {"global.index-url": INDEX, "global.find-links": WHEELS,
                     "global.trusted-host": "wheels.example"}),
    ("http://mirror.example/simple", WHEELS,
     {"global.index-url": "http://mirror.example/simple", "global.find-links": WHEELS,
      "global.trusted-host": "mirror.example wheels.example"}),
], ids=["index", "wheelhouse", "both", "both-plain-http"])
def test_pip_conf_is_read_by_configparser_and_pip(
    family: OsFamily, index: str | None, links: str | None, expected: dict[str, str], tmp_path: Path
) -> None:
    """pip.conf parses with configparser and pip reads exactly the index/wheelhouse settings."""
    text = packages_render("pip.conf.j2", family, pip_index_url=index, pip_find_links=links)
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert {f"{s}.{k}": v for s in parser.sections() for k, v in parser[s].items()} == expected
    path = tmp_path / "pip.conf"
    path.write_text(text)
    assert pip_sees(path) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_hosts_block_resolves_through_glibc(family: OsFamily, tmp_path: Path) -> None:
    """Every inventory host resolves to its address via getent with the rendered block as /etc/hosts."""
    inv = shipped()
    text = render("hosts.j2", **node_context(inv, inv.db_hosts[0], family))
    assert text.splitlines() == [f"{h.address} {h.name}" for h in inv.hosts]
    # The operator's own call passes only the hosts.
    assert render("hosts.j2", hosts=[{"name": h.name, "address": h.address} for h in inv.hosts]) == text
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(text)
    names = [h.name for h in inv.hosts]
    # A private mount namespace: /etc/hosts is replaced for getent only, never on the machine.
    res = run(["unshare", "--mount", "sh", "-c", 'f=$1; shift; mount --bind "$f" /etc/hosts && exec getent hosts "$@"',
               "sh", str(hosts_file), *names])
    if res.returncode != 0 and "mount" in output(res):
        pytest.skip(f"no private mount namespace here: {output(res).strip()}")
    assert res.returncode == 0, output(res)
    assert [line.split() for line in res.stdout.splitlines()] == [[h.address, h.name] for h in inv.hosts]


def test_patroni_yml_logs_into_etcd_as_its_own_user_when_etcd_rbac_is_on() -> None:
    """With etcd RBAC (ConfigurePatroniOperator passes etcd_user): username/password in etcd3, quoted for YAML;
    without it, no login at all."""
    password = "p'w\"d: #x"
    etcd3 = yaml.safe_load(patroni_yml(shipped(), DEBIAN, {**SECRETS, "etcd_user": "patroni",
                                                           "etcd_password": password}))["etcd3"]
    assert (etcd3["username"], etcd3["password"], etcd3["protocol"]) == ("patroni", password, "https")
    assert "username" not in yaml.safe_load(patroni_yml(shipped(), DEBIAN))["etcd3"]
    assert shipped().patroni_key_prefix == "/airflow/airflow-cluster/"
