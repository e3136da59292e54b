"""etcd RBAC against a REAL etcd 3.4 member with TLS and --client-cert-auth (as the nodes run it).

Each test starts its own single-member etcd: enabling auth is for good, so it must not touch the
session's shared cluster. Certificates come from the test run's CA (connection pgha_ca).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fixture_secrets import TEST_CA
from pgha import tls
from pgha.compat import AirflowException
from pgha.hooks.etcd import EtcdError, EtcdHook, EtcdRbac, EtcdUser, Permission, _b64
from pgha.operators.etcd import PGHA_ROLE, PATRONI_ROLE, EtcdAuthOperator
from pgha.runtime import Credentials
from pgha_testing import set_connection
from recording_host import DEBIAN_12, Fleet, Unit, fleet_inventory
from services import free_port

PREFIX = "/airflow/airflow-cluster/"
ROOT = Credentials("root", "root pw '\"$;")
PATRONI = Credentials("patroni", "patroni pw %@:")
PGHA = Credentials("pgha", "pgha pw \\ #")
CLIENT = tls.ClientTLS.for_ca(TEST_CA)  # pgha's own client certificate: no common name


def start_tls_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    directory.mkdir(mode=0o700)
    node = tls.issue(TEST_CA, "etcd1", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    for name, text in (("ca.crt", TEST_CA.cert_pem), ("etcd.crt", node.cert_pem), ("etcd.key", node.key_pem)):
        (directory / name).write_text(text)
    client, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["/usr/bin/etcd", "--name", "etcd1", "--data-dir", str(directory / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"etcd1=http://127.0.0.1:{peer}",
         "--cert-file", str(directory / "etcd.crt"), "--key-file", str(directory / "etcd.key"),
         "--trusted-ca-file", str(directory / "ca.crt"), "--client-cert-auth"],
        stdout=(directory / "etcd.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if EtcdHook([url], tls=CLIENT).health(url):
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"etcd did not start:\n{(directory / 'etcd.log').read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[str]:
    proc, url = start_tls_etcd(tmp_path / "etcd")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def rbac(root: Credentials = ROOT) -> EtcdRbac:
    return EtcdRbac(root=root, users=(EtcdUser(PATRONI, PATRONI_ROLE), EtcdUser(PGHA, PGHA_ROLE)),
                    roles={PATRONI_ROLE: (Permission.prefix("READWRITE", PREFIX),),
                           PGHA_ROLE: (Permission.prefix("READ", PREFIX),)})


def put(hook: EtcdHook, url: str, key: str) -> dict:
    return hook._post(url, "/v3/kv/put", {"key": _b64(key), "value": _b64("x")})


def get(hook: EtcdHook, url: str, key: str) -> dict:
    return hook._post(url, "/v3/kv/range", {"key": _b64(key)})


def test_rbac_on_then_a_rerun_changes_nothing(tls_etcd: str) -> None:
    admin = EtcdHook([tls_etcd], tls=CLIENT, credentials=ROOT)
    assert not admin.auth_enabled(tls_etcd)
    anyone = EtcdHook([tls_etcd], tls=CLIENT)
    put(anyone, tls_etcd, "/elsewhere")  # before: any cluster-CA certificate may write anything

    changes = admin.apply_rbac(rbac())
    assert changes[-1].startswith("auth enabled")
    assert "user patroni added" in changes and f"role {PATRONI_ROLE}: READWRITE on keys {PREFIX}* granted" in changes
    assert admin.auth_enabled(tls_etcd)
    assert admin.apply_rbac(rbac()) == []  # a re-run: users, roles and auth as they should be

    with pytest.raises(EtcdError, match="user name is empty"):  # a certificate alone grants nothing now
        get(anyone, tls_etcd, "/elsewhere")
    patroni = EtcdHook([tls_etcd], tls=CLIENT, credentials=PATRONI)
    put(patroni, tls_etcd, f"{PREFIX}leader")
    for outside in ("/elsewhere", "/airflow/airflow-cluster2/leader", "/airflow/other/leader"):
        with pytest.raises(EtcdError, match="permission denied"):
            put(patroni, tls_etcd, outside)
    pgha = EtcdHook([tls_etcd], tls=CLIENT, credentials=PGHA)
    assert get(pgha, tls_etcd, f"{PREFIX}leader")["count"] == "1"
    with pytest.raises(EtcdError, match="permission denied"):
        put(pgha, tls_etcd, f"{PREFIX}leader")
    report = pgha.report()  # what pgha's tasks ask: health, status, members
    assert report.problems(["etcd1"]) == [] and report.leader_name == "etcd1"


def test_a_rerun_puts_back_what_was_changed_by_hand(tls_etcd: str) -> None:
    admin = EtcdHook([tls_etcd], tls=CLIENT, credentials=ROOT)
    admin.apply_rbac(rbac())
    token = admin.authenticate(tls_etcd, ROOT)
    for path, body in (("/v3/auth/user/changepw", {"name": "patroni", "password": "other"}),
                       ("/v3/auth/role/grant", {"name": PGHA_ROLE, "perm": {"permType": "READWRITE",
                                                                          "key": _b64("/"), "range_end": _b64("0")}}),
                       ("/v3/auth/user/grant", {"user": "pgha", "role": PATRONI_ROLE})):
        admin._request(tls_etcd, path, body, token)
    changes = admin.apply_rbac(rbac())
    assert sorted(changes) == sorted([
        "user patroni: password set from its Connection",
        f"role {PGHA_ROLE}: READWRITE on keys /* revoked (not pgha's grant)",
        f"user pgha: role {PATRONI_ROLE} revoked (pgha grants only {PGHA_ROLE})",
    ])
    assert admin.apply_rbac(rbac()) == []


def test_a_wrong_root_password_is_refused_and_changes_nothing(tls_etcd: str) -> None:
    EtcdHook([tls_etcd], tls=CLIENT, credentials=ROOT).apply_rbac(rbac())
    with pytest.raises(EtcdError, match="etcd user 'root' cannot log in"):
        EtcdHook([tls_etcd], tls=CLIENT, credentials=ROOT).apply_rbac(rbac(Credentials("root", "guess")))


def test_a_certificate_with_a_common_name_is_refused_by_the_gateway_once_auth_is_on(tls_etcd: str,
                                                                                       tmp_path: Path) -> None:
    """Why pgha's certificates carry no CN (pgha.tls.subject): etcd 3.4's gateway refuses such a client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    EtcdHook([tls_etcd], tls=CLIENT, credentials=ROOT).apply_rbac(rbac())
    cert = tls.load(CLIENT.cert_pem)
    with_cn = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
               .issuer_name(cert.issuer).public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
               .sign(TEST_CA.private_key(), hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization

    named = tls.ClientTLS(CLIENT.ca_pem, with_cn.public_bytes(serialization.Encoding.PEM).decode(), CLIENT.key_pem)
    with pytest.raises(EtcdError, match="CommonName"):
        EtcdHook([tls_etcd], tls=named, credentials=PGHA).report() and get(
            EtcdHook([tls_etcd], tls=named, credentials=PGHA), tls_etcd, f"{PREFIX}x")
    assert tls.common_name(CLIENT.cert_pem) is None


def test_operator_turns_rbac_on_once(tls_etcd: str, fleet: Fleet, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for conn_id, who in (("pgha_etcd_root", ROOT), ("pgha_etcd_patroni", PATRONI), ("pgha_etcd_pgha", PGHA)):
        set_connection(monkeypatch, conn_id, conn_type="generic", login=who.login, password=who.password)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, tls={"enabled": True}, etcd={"auth": {"enabled": True}})
    monkeypatch.setattr(EtcdAuthOperator, "etcd_endpoints", lambda self: [tls_etcd])

    def run() -> dict:
        return EtcdAuthOperator(task_id="etcd_auth", inventory_path=inventory).execute({})

    first = run()
    assert first["changed"] and first["result"] == {"auth": True, "prefix": "/pgha-test/pgha-test/", "changes": 11}
    second = run()
    assert not second["changed"] and second["result"]["changes"] == 0
    assert EtcdHook([tls_etcd], tls=CLIENT, credentials=PATRONI).authenticate(tls_etcd, PATRONI)


def test_operator_refuses_while_patroni_runs_without_its_etcd_user(tls_etcd: str, fleet: Fleet, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth on under a running Patroni that has no etcd user yet would cut it off its DCS: refused, nothing done."""
    for conn_id, who in (("pgha_etcd_root", ROOT), ("pgha_etcd_patroni", PATRONI), ("pgha_etcd_pgha", PGHA)):
        set_connection(monkeypatch, conn_id, conn_type="generic", login=who.login, password=who.password)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, tls={"enabled": True}, etcd={"auth": {"enabled": True}})
    monkeypatch.setattr(EtcdAuthOperator, "etcd_endpoints", lambda self: [tls_etcd])
    fleet["psg2"].units["patroni.service"] = Unit(enabled=True, active=True)
    with pytest.raises(AirflowException, match="Patroni runs on psg2 while etcd's auth is off"):
        EtcdAuthOperator(task_id="etcd_auth", inventory_path=inventory).execute({})
    assert not EtcdHook([tls_etcd], tls=CLIENT).auth_enabled(tls_etcd)
