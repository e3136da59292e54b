"""TLS: the certificate model (pgha.tls), phase 3's IssueCertificatesOperator and the preflight check on
recorded hosts, and pgha's etcd/Patroni clients against a real local HTTPS server (a wrong CA is refused)."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pgha import tls
from pgha.compat import AirflowException
from pgha.hooks.etcd import EtcdHook
from pgha.hooks.patroni import PatroniHook
from pgha.inventory import parse_inventory
from pgha.operators.drill import DrillPrecheckOperator
from pgha.operators.tls import CheckCertificatesOperator, IssueCertificatesOperator
from pgha_testing import shipped_inventory, write_tls_dir
from recording_host import DEBIAN_12, ROCKY_9, Fleet, Unit, fleet_inventory

CA = tls.make_ca("model test CA")
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- the model


def test_a_ca_signs_certificates_that_name_their_host_and_serve_both_ends() -> None:
    issued = tls.issue(CA, "psg1", dns_names=["psg1", "vm1"], ip_addresses=["10.0.0.1", "127.0.0.1"], days=30)
    cert = tls.load(issued.cert_pem)
    assert tls.subject_alt_names(issued.cert_pem) == (["psg1", "vm1"], ["10.0.0.1", "127.0.0.1"])
    assert tls.signed_by(issued.cert_pem, CA.cert_pem)
    assert not tls.signed_by(issued.cert_pem, tls.make_ca("model test CA").cert_pem)  # same name, other key
    usages = cert.extensions.get_extension_for_class(tls.x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"serverAuth", "clientAuth"}
    assert not cert.extensions.get_extension_for_class(tls.x509.BasicConstraints).value.ca
    assert 29.9 < tls.days_left(issued.cert_pem) <= 30
    ca = tls.load(CA.cert_pem).extensions.get_extension_for_class(tls.x509.BasicConstraints).value
    assert ca.ca and ca.path_length == 0  # the CA signs hosts only, never another CA
    assert "PRIVATE KEY" in issued.key_pem
    assert issued.key_pem not in repr(issued) and CA.key_pem not in repr(CA)


def test_reissue_reasons_cover_missing_foreign_expiring_and_renamed() -> None:
    names = {"dns_names": ["psg1"], "ip_addresses": ["10.0.0.1"], "renew_before_days": 30}
    good = tls.issue(CA, "psg1", dns_names=["psg1"], ip_addresses=["10.0.0.1"], days=365, now=NOW).cert_pem
    assert tls.reissue_reason(good, CA.cert_pem, now=NOW, **names) is None
    assert tls.reissue_reason(None, CA.cert_pem, now=NOW, **names) == "no certificate installed"
    assert tls.reissue_reason("junk", CA.cert_pem, now=NOW, **names) == \
        "the installed certificate is not a PEM certificate"
    foreign = tls.issue(tls.make_ca("other"), "psg1", dns_names=["psg1"], ip_addresses=["10.0.0.1"], now=NOW)
    assert tls.reissue_reason(foreign.cert_pem, CA.cert_pem, now=NOW, **names) == "not signed by the current CA"
    later = NOW + dt.timedelta(days=340)
    assert tls.reissue_reason(good, CA.cert_pem, now=later, **names).startswith("expires ")
    assert tls.reissue_reason(good, CA.cert_pem, now=NOW + dt.timedelta(days=334), **names) is None
    moved = {**names, "ip_addresses": ["10.0.0.9"]}
    assert tls.reissue_reason(good, CA.cert_pem, now=NOW, **moved) == "does not name 10.0.0.9"


def test_expiry_problems_for_a_precheck() -> None:
    cert = tls.issue(CA, "psg1", days=10, now=NOW).cert_pem
    assert tls.expiry_problem("psg1", cert, CA.cert_pem, warn_days=5, now=NOW) is None
    assert "in 10 days" in tls.expiry_problem("psg1", cert, CA.cert_pem, warn_days=30, now=NOW)
    assert "expired on" in tls.expiry_problem("psg1", cert, CA.cert_pem, warn_days=30,
                                              now=NOW + dt.timedelta(days=11))
    assert "no certificate" in tls.expiry_problem("psg1", None, CA.cert_pem, warn_days=30)
    assert "not signed" in tls.expiry_problem("psg1", cert, tls.make_ca("x").cert_pem, warn_days=30)


def test_haproxy_on_a_database_node_is_refused_with_tls() -> None:
    """Sessions through such a HAProxy come from a member's address, where the superuser needs no client
    certificate: the inventory is refused, naming the field, before anything runs."""
    raw = shipped_inventory()
    raw["haproxy"]["host"] = raw["database_nodes"][0]
    with pytest.raises(ValueError, match=r"haproxy.host: '\w+' is a database node"):
        parse_inventory(raw)
    raw["tls"] = {**raw.get("tls", {}), "enabled": False}
    assert parse_inventory(raw).haproxy.host == raw["database_nodes"][0]


def test_node_names_include_haproxy_for_verify_full_through_it() -> None:
    raw = shipped_inventory()
    raw["tls"] = {"haproxy_names": ["db.example.org"]}
    inv = parse_inventory(raw)
    node = inv.db_hosts[0]
    lb = inv.host(inv.haproxy.host)
    dns, ips = tls.node_names(inv, node.name)
    assert dns == [node.name, "localhost", lb.name, "db.example.org"]
    assert ips == [node.address, "127.0.0.1", lb.address]
    assert tls.haproxy_names(inv) == ([lb.name, "localhost", "db.example.org"], [lb.address, "127.0.0.1"])


def test_the_ca_connection_round_trips_and_a_mismatched_key_is_refused() -> None:
    values = tls.connection_json(CA)
    ca = tls.ca_from_connection(values["extra"], values["password"], "pgha_ca")
    assert ca == CA
    with pytest.raises(ValueError, match="does not belong"):
        tls.ca_from_connection(values["extra"], tls.make_ca("other").key_pem, "pgha_ca")
    with pytest.raises(ValueError, match="extra 'certificate'"):
        tls.ca_from_connection("{}", values["password"], "pgha_ca")


def test_create_ca_prints_a_connection_for_a_secrets_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert tls.main(["create-ca", "--conn-id", "my_ca", "--days", "30", "--print-json"]) == 0
    conn = json.loads(capsys.readouterr().out)["my_ca"]
    ca = tls.ca_from_connection(conn["extra"], conn["password"], "my_ca")
    assert 29 < tls.days_left(ca.cert_pem) <= 30


def test_issue_writes_a_server_certificate_of_the_ca_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from pgha_testing import set_connection

    values = tls.connection_json(CA)
    set_connection(monkeypatch, "pgha_ca", conn_type="generic", password=values["password"], extra=values["extra"])
    out = tmp_path / "source"
    assert tls.main(["issue", "--name", "source", "--dns", "db1", "--ip", "10.0.0.7", "--out", str(out)]) == 0
    cert = Path(f"{out}.crt").read_text()
    assert tls.signed_by(cert, CA.cert_pem) and tls.subject_alt_names(cert) == (["db1"], ["10.0.0.7"])
    usage = tls.load(cert).extensions.get_extension_for_class(tls.x509.ExtendedKeyUsage).value
    assert list(usage) == [tls.ExtendedKeyUsageOID.SERVER_AUTH]  # a server's: no way into the cluster with it
    assert all(Path(f"{out}{suffix}").stat().st_mode & 0o777 == 0o600 for suffix in (".crt", ".key"))
    assert "valid until" in capsys.readouterr().out
    with pytest.raises(FileExistsError):  # never over an existing file (nor through a link)
        tls.main(["issue", "--name", "source", "--ip", "10.0.0.7", "--out", str(out)])


def test_client_files_are_private(tmp_path: Path) -> None:
    files = tls.ClientTLS.for_ca(CA).files()
    for path in (files.ca, files.cert, files.key):
        assert Path(path).stat().st_mode & 0o777 == 0o600
    assert Path(files.key).parent.stat().st_mode & 0o777 == 0o700


def test_inventory_tls_is_on_by_default_and_checked() -> None:
    inv = parse_inventory(shipped_inventory())
    assert inv.tls.enabled and inv.tls.ca_conn_id == "pgha_ca" and inv.tls.renew_before_days < inv.tls.days
    raw = shipped_inventory()
    raw["tls"] = {"days": 30, "renew_before_days": 30, "haproxy_names": ["bad name"]}
    raw["postgres"]["parameters"] = {"ssl": "off"}
    with pytest.raises(ValueError) as err:
        parse_inventory(raw)
    assert "tls.haproxy_names[0]" in str(err.value)
    raw["tls"]["haproxy_names"] = []
    with pytest.raises(ValueError) as err:
        parse_inventory(raw)
    assert "tls.renew_before_days" in str(err.value) and "postgres.parameters.ssl" in str(err.value)


# ---------------------------------------------------------------- the operators, on recorded hosts


def issue_on(inventory: str, host: str) -> dict[str, Any]:
    return IssueCertificatesOperator(task_id="issue_certificates", host=host, inventory_path=inventory).execute({})


@pytest.mark.parametrize("os", [DEBIAN_12, ROCKY_9])
def test_certificates_are_installed_0600_per_service_user_and_a_rerun_changes_nothing(
    fleet: Fleet, tmp_path: Path, os: str
) -> None:
    from fixture_secrets import TEST_CA

    inventory = fleet_inventory(fleet, tmp_path, os, tls={"enabled": True})
    psg1, vm1 = fleet["psg1"], fleet["vm1"]
    first = issue_on(inventory, "psg1")
    assert first["changed"]
    assert psg1.files[tls.CA_FILE].content == TEST_CA.cert_pem and psg1.files[tls.CA_FILE].mode == "644"
    cert = psg1.files[tls.POSTGRES_FILES.cert].content
    assert tls.signed_by(cert, TEST_CA.cert_pem)
    assert tls.subject_alt_names(cert) == (["psg1", "localhost", "vm1"], ["127.0.0.41", "127.0.0.1", "127.0.0.40"])
    for files in (tls.POSTGRES_FILES, tls.ETCD_FILES):
        for path in (files.cert, files.key):
            entry = psg1.files[path]
            assert (entry.owner, entry.group, entry.mode) == (files.owner, files.owner, "600"), path
        assert psg1.files[files.cert].content == cert
        assert "PRIVATE KEY" in psg1.files[files.key].content
    key = psg1.files[tls.POSTGRES_FILES.key].content
    assert not any(key in c.command for c in psg1.commands)  # the key never on a command line
    assert psg1.dirs[tls.TLS_DIR] == ("root", "root", "755")

    psg1.forget()
    again = issue_on(inventory, "psg1")
    assert not again["changed"] and psg1.mutations() == []
    assert psg1.files[tls.POSTGRES_FILES.key].content == key

    # the HAProxy host (vm1, an Airflow host) gets the CA and HAProxy's own certificate, not a node's
    assert issue_on(inventory, "vm1")["changed"]
    assert tls.CA_FILE in vm1.files and tls.POSTGRES_FILES.key not in vm1.files
    haproxy_cert = vm1.files[tls.HAPROXY_FILES.cert].content
    assert tls.signed_by(haproxy_cert, TEST_CA.cert_pem)
    assert tls.subject_alt_names(haproxy_cert) == (["vm1", "localhost"], ["127.0.0.40", "127.0.0.1"])
    entry = vm1.files[tls.HAPROXY_FILES.cert]
    assert (entry.owner, entry.group, entry.mode) == ("root", "root", "600")
    assert "PRIVATE KEY" in entry.content  # the key in the same file: every HAProxy release reads that
    haproxy_key = entry.content[entry.content.index("-----BEGIN PRIVATE KEY"):]
    assert not any(haproxy_key.strip() in c.command for c in vm1.commands)
    usage = tls.load(haproxy_cert).extensions.get_extension_for_class(tls.x509.ExtendedKeyUsage).value
    assert list(usage) == [tls.ExtendedKeyUsageOID.SERVER_AUTH]  # its key opens nothing asking a client cert
    vm1.forget()
    assert not issue_on(inventory, "vm1")["changed"] and vm1.mutations() == []


def test_a_renewal_reissues_a_foreign_or_broken_certificate_and_reloads_patroni(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, tls={"enabled": True})
    psg1 = fleet["psg1"]
    issue_on(inventory, "psg1")
    psg1.units["patroni.service"] = Unit(enabled=True, active=True)
    foreign = tls.issue(tls.make_ca("another CA"), "psg1", dns_names=["psg1"])
    psg1.files[tls.POSTGRES_FILES.cert].content = foreign.cert_pem
    psg1.forget()
    renewed = issue_on(inventory, "psg1")
    assert any("not signed by the current CA" in c for c in renewed["changes"])
    assert psg1.ran(r"^systemctl reload patroni.service$")
    assert psg1.files[tls.POSTGRES_FILES.cert].content != foreign.cert_pem
    psg1.files[tls.ETCD_FILES.key].mode = "644"  # a key someone opened up
    psg1.forget()
    fixed = issue_on(inventory, "psg1")
    assert any("not a 0600 file of etcd" in c for c in fixed["changes"])
    assert psg1.files[tls.ETCD_FILES.key].mode == "600"


def test_without_tls_nothing_is_installed(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)  # the loopback inventories turn TLS off
    assert issue_on(inventory, "psg1")["result"] == {"tls": False}
    assert fleet["psg1"].mutations() == []


def test_preflight_fails_on_missing_certificates_unless_phase_3_runs(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, tls={"enabled": True})
    check = CheckCertificatesOperator(task_id="check_certificates", inventory_path=inventory)
    result = check.execute({"params": {"phases": ["3_etcd_cluster"]}})["result"]
    assert len(result["problems"]) == 4 and all("no certificate installed" in p for p in result["problems"])
    assert any(p.startswith(f"vm1 {tls.HAPROXY_FILES.cert}:") for p in result["problems"])  # HAProxy's own
    with pytest.raises(AirflowException, match="certificates need phase 3"):
        check.execute({"params": {"phases": ["9_validate"]}})
    hosts = ("psg1", "psg2", "psg3", "vm1")
    for host in hosts:
        issue_on(inventory, host)
    for host in hosts:
        fleet[host].forget()
    assert check.execute({"params": {"phases": ["9_validate"]}})["result"]["problems"] == []
    assert all(fleet[h].mutations() == [] for h in hosts)  # a check changes nothing


def test_the_drill_precheck_names_a_foreign_or_missing_certificate(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, tls={"enabled": True})
    for host in ("psg1", "psg2", "psg3", "vm1"):
        issue_on(inventory, host)
    precheck = DrillPrecheckOperator(task_id="precheck", inventory_path=inventory)
    assert precheck._certificate_reasons() == []
    fleet["psg2"].files[tls.POSTGRES_FILES.cert].content = tls.issue(tls.make_ca("x"), "psg2").cert_pem
    del fleet["vm1"].files[tls.HAPROXY_FILES.cert]
    reasons = precheck._certificate_reasons()
    assert reasons == [f"TLS: psg2 {tls.POSTGRES_FILES.cert}: not signed by the current CA (re-run phase 3)",
                       f"TLS: vm1 {tls.HAPROXY_FILES.cert}: no certificate installed (phase 3 issues it)"]


# ---------------------------------------------------------------- the clients, against a real HTTPS server


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"members": [{"name": "psg1", "role": "leader", "state": "running"}],
                           "health": "true"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def https_server(tmp_path: Path, ca: tls.CertificateAuthority, *, require_client_cert: bool = False) -> Iterator[str]:
    directory = write_tls_dir(tmp_path / f"srv-{id(ca)}", ca, common_name="psg1", ip_addresses=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "postgres.crt", directory / "postgres.key")
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(directory / "ca.crt")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server with a certificate of CA that wants a client certificate of CA (etcd --client-cert-auth)."""
    yield from https_server(tmp_path, CA, require_client_cert=True)


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server whose certificate another CA signed."""
    yield from https_server(tmp_path, tls.make_ca("model test CA"))


def test_patroni_and_etcd_clients_verify_the_ca_and_present_a_client_certificate(cluster_server: str) -> None:
    client = tls.ClientTLS.for_ca(CA)
    assert PatroniHook([cluster_server], tls=client).cluster().leaders == ["psg1"]
    assert asyncio.run(PatroniHook([cluster_server], tls=client).acluster()).leaders == ["psg1"]
    assert EtcdHook([cluster_server], tls=client).health(cluster_server)
    with pytest.raises(requests.exceptions.SSLError):  # without a client certificate: refused
        requests.get(f"{cluster_server}/cluster", verify=client.files().ca, timeout=5)


def test_a_server_of_another_ca_is_refused(impostor: str) -> None:
    client = tls.ClientTLS.for_ca(CA)
    with pytest.raises(AirflowException, match="CERTIFICATE_VERIFY_FAILED"):
        PatroniHook([impostor], tls=client).cluster()
    with pytest.raises(AirflowException, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(PatroniHook([impostor], tls=client).acluster())
    report = EtcdHook([impostor], tls=client).report()
    assert "CERTIFICATE_VERIFY_FAILED" in report.errors[impostor]
    assert PatroniHook([impostor], tls=client).status_code(impostor, "/primary") is None


# ---------------------------------------------------------------- the superuser from a host that is no member


def test_the_superuser_from_a_host_that_is_no_member_needs_a_certificate_of_the_cluster_ca(tmp_path: Path) -> None:
    """A real PostgreSQL with the superuser rules patroni.yml renders for the HAProxy host (127.0.0.1 here,
    the address every session through HAProxy comes from): the right password with a verified server is
    refused without a client certificate and with one of another CA; pgha's own certificate gets in."""
    import psycopg2
    import yaml
    from fixture_secrets import TEST_CA
    from pgha.osfamily import FAMILIES
    from pgha.render import node_context, render
    from pgha_testing import loopback_inventory
    from services import start_postgres, write_postgres_file

    raw = loopback_inventory([("node1", "127.0.0.11"), ("node2", "127.0.0.12"), ("node3", "127.0.0.13")],
                             tls={"enabled": True})
    raw["hosts"][0]["address"] = "127.0.0.1"  # the HAProxy host (an Airflow host, no member)
    inv = parse_inventory(raw)
    assert inv.haproxy.host == raw["hosts"][0]["name"] and inv.host(inv.haproxy.host).address not in {
        h.address for h in inv.db_hosts}
    secrets = {"rest_user": "patroni", "rest_password": "p", "superuser": "postgres",
               "superuser_password": "s3cret: 'x' \\", "replication_user": "replicator", "replication_password": "r"}
    rendered = yaml.safe_load(render("patroni.yml.j2", secrets=secrets,
                                     **node_context(inv, inv.db_hosts[0], FAMILIES["debian"])))
    # a member's own loopback rules go: on this one machine 127.0.0.1 stands for the HAProxy host instead
    hba = [rule for rule in rendered["postgresql"]["pg_hba"]
           if not rule.startswith("local") and not (" 127.0.0.1/32 " in rule and " postgres " not in rule)]
    assert "hostssl all postgres 127.0.0.1/32 scram-sha-256 clientcert=verify-ca" in hba
    server = tls.issue(TEST_CA, "node", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    pg = start_postgres(tmp_path / "pg", secrets["superuser_password"])
    try:
        files = {"server.crt": server.cert_pem, "server.key": server.key_pem, "ca.crt": TEST_CA.cert_pem}
        for name, text in files.items():
            write_postgres_file(pg.data_dir / name, text)
        write_postgres_file(pg.data_dir / "pg_hba.conf", "local all all trust\n" + "\n".join(hba) + "\n")
        with open(pg.data_dir / "postgresql.conf", "a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n")
        with psycopg2.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", dbname="postgres") as local:
            local.cursor().execute("SELECT pg_reload_conf()")
        client = tls.ClientTLS.for_ca(TEST_CA).files()
        other = tls.ClientTLS.for_ca(tls.make_ca("another CA")).files()

        def login(**ssl: str) -> str:
            try:
                psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres",
                                 password=secrets["superuser_password"], connect_timeout=5, sslmode="verify-full",
                                 sslrootcert=client.ca, **ssl).close()
            except psycopg2.Error as exc:
                return f"refused: {str(exc).strip()}"
            return "in"

        import time
        deadline = time.monotonic() + 10
        while login(sslcert=client.cert, sslkey=client.key) != "in" and time.monotonic() < deadline:
            time.sleep(0.2)  # the reload takes a moment
        assert login(sslcert=client.cert, sslkey=client.key) == "in"
        assert "certificate" in login(), login()  # the password alone: "connection requires a valid client certificate"
        refused = login(sslcert=other.cert, sslkey=other.key)
        assert refused.startswith("refused"), refused
    finally:
        pg.stop()


def test_the_subscription_verifies_a_source_whose_certificate_is_the_cluster_cas(tmp_path: Path) -> None:
    """pgdata.certificate_problem, against a real PostgreSQL: what the logical method's subscription would
    meet with sslmode=verify-full and the cluster CA (the TLS handshake only, no login)."""
    from fixture_secrets import TEST_CA
    from pgha import pgdata
    from services import start_postgres, wait_until, write_postgres_file

    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(TEST_CA.cert_pem)
    other_ca = tmp_path / "other.crt"
    other_ca.write_text(tls.make_ca("another CA").cert_pem)
    pg = start_postgres(tmp_path / "pg", "pw")
    try:
        assert pgdata.certificate_problem("127.0.0.1", pg.port, str(ca_file)) == \
            "the server does not offer TLS (ssl = off)"
        source = tls.issue(TEST_CA, "source", ip_addresses=["127.0.0.1"])
        write_postgres_file(pg.data_dir / "server.crt", source.cert_pem)
        write_postgres_file(pg.data_dir / "server.key", source.key_pem)
        with open(pg.data_dir / "postgresql.conf", "a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        import psycopg2
        with psycopg2.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", dbname="postgres") as local:
            local.cursor().execute("SELECT pg_reload_conf()")
        wait_until(lambda: pgdata.certificate_problem("127.0.0.1", pg.port, str(ca_file)) is None, 10,
                   "the source to serve its certificate")
        assert "unable to get local issuer certificate" in pgdata.certificate_problem("127.0.0.1", pg.port,
                                                                                     str(other_ca))
        misnamed = tls.issue(TEST_CA, "source", ip_addresses=["127.0.0.9"])
        write_postgres_file(pg.data_dir / "server.crt", misnamed.cert_pem)
        write_postgres_file(pg.data_dir / "server.key", misnamed.key_pem)
        with psycopg2.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", dbname="postgres") as local:
            local.cursor().execute("SELECT pg_reload_conf()")
        wait_until(lambda: pgdata.certificate_problem("127.0.0.1", pg.port, str(ca_file)) is not None, 10,
                   "the misnamed certificate")
        assert "IP address mismatch" in pgdata.certificate_problem("127.0.0.1", pg.port, str(ca_file))
    finally:
        pg.stop()
