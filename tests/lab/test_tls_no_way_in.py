"""From vm4, a lab host that is no cluster member: no way into etcd, Patroni's REST API or PostgreSQL
without TLS and the cluster CA's credentials (issue 12, item 1).

vm4 holds the cluster CA's certificate (/etc/pgha/tls/ca.crt, phase 3 installs it on every Airflow host)
but no client certificate. Every attempt runs there in one Python program (Airflow's venv: requests,
psycopg2 and cryptography), and must be refused: plain text, TLS without a client certificate, a client
that trusts another CA, and PostgreSQL without TLS (hostssl only) on every member. HAProxy's stats page
on vm1 refuses plain text and another CA, and asks the cluster CA's client for a login. etcd's RBAC is on:
the check that nothing was written reads as etcd's root, which alone sees every key.
"""

from __future__ import annotations

import json
import shlex

import pytest
from lab_fixtures import ETCD_PORT, NODES, PATRONI_PORT, POSTGRES_PORT, STATS_PORT, VM1, WRITE_PORT, Lab

pytestmark = pytest.mark.lab

PYTHON = "/opt/airflow/venv/bin/python"

ATTEMPTS = r'''
import datetime, json, sys, tempfile
import psycopg2, requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

nodes, etcd_port, patroni_port, pg_port, password, haproxy, stats_port, write_port = json.load(open(sys.argv[1]))
CA = "/etc/pgha/tls/ca.crt"
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgha lab CA")])  # the same name, another key
now = datetime.datetime.now(datetime.timezone.utc)
other = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
other_ca = tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False)
other_ca.write(other.public_bytes(serialization.Encoding.PEM)); other_ca.close()

def outcome(call):
    try:
        response = call()
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {str(exc)[:300]}"
    status = getattr(response, "status_code", None)
    return f"answered HTTP {status}: {response.text[:200]}" if status is not None else "answered"

def pg(address, port=pg_port, **ssl):
    try:
        psycopg2.connect(host=address, port=port, user="postgres", password=password, dbname="postgres",
                         connect_timeout=5, **ssl).close()
    except psycopg2.Error as exc:
        return f"refused: {str(exc).strip()[:300]}"
    return "answered"

put = {"key": "L2FpcmZsb3cvcGdoYS1sYWItaW50cnVkZXI=", "value": "eA=="}  # /airflow/pgha-lab-intruder
results = {}
for node, address in nodes.items():
    etcd, patroni = f"{address}:{etcd_port}", f"{address}:{patroni_port}"
    results[node] = {
        "etcd plain text": outcome(lambda: requests.post(f"http://{etcd}/v3/kv/put", json=put, timeout=5)),
        "etcd without a client certificate": outcome(
            lambda: requests.post(f"https://{etcd}/v3/kv/put", json=put, timeout=5, verify=CA)),
        "etcd trusting another CA": outcome(
            lambda: requests.post(f"https://{etcd}/v3/kv/range", json={"key": put["key"]}, timeout=5,
                                  verify=other_ca.name)),
        "patroni plain text": outcome(
            lambda: requests.post(f"http://{patroni}/restart", json={}, timeout=5)),
        "patroni write without a client certificate": outcome(
            lambda: requests.patch(f"https://{patroni}/config", json={"ttl": 99}, timeout=5, verify=CA,
                                   auth=("patroni", "not-the-password"))),
        "patroni trusting another CA": outcome(
            lambda: requests.get(f"https://{patroni}/cluster", timeout=5, verify=other_ca.name)),
        "patroni read with the CA (control)": outcome(
            lambda: requests.get(f"https://{patroni}/cluster", timeout=5, verify=CA)),
        "postgres plain text": pg(address, sslmode="disable"),
        "postgres trusting another CA": pg(address, sslmode="verify-full", sslrootcert=other_ca.name),
        # vm4 is an Airflow host, so a superuser source: the right password and the CA, but no client certificate
        "postgres superuser without a client certificate": pg(address, sslmode="verify-full", sslrootcert=CA),
    }
results["through haproxy"] = {  # every session through HAProxy comes from vm1's address, a superuser source
    "postgres superuser without a client certificate": pg(haproxy, write_port, sslmode="verify-full",
                                                          sslrootcert=CA),
}
stats = f"{haproxy}:{stats_port}"
results["haproxy stats page"] = {
    "plain text": outcome(lambda: requests.get(f"http://{stats}/", timeout=5)),
    "trusting another CA": outcome(lambda: requests.get(f"https://{stats}/", timeout=5, verify=other_ca.name)),
    "the cluster CA, no login": outcome(lambda: requests.get(f"https://{stats}/", timeout=5, verify=CA)),
}
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def migrated(lab: Lab) -> None:
    lab.ensure_migrated()


def test_vm4_cannot_reach_etcd_patroni_or_postgres_without_the_cluster_credentials(lab: Lab, migrated: None) -> None:
    # the password goes in a file under /root (0700), never on a command line (the secret scan reads them)
    args = json.dumps([NODES, ETCD_PORT, PATRONI_PORT, POSTGRES_PORT, lab.secrets["pg_superuser_password"], VM1,
                       STATS_PORT, WRITE_PORT])
    lab.put("vm4", "/root/pgha-tls-attempts.py", ATTEMPTS)
    lab.put("vm4", "/root/pgha-tls-attempts.json", args)
    try:
        out = lab.ssh("vm4", f"{PYTHON} /root/pgha-tls-attempts.py /root/pgha-tls-attempts.json")
    finally:
        lab.ssh("vm4", "rm -f /root/pgha-tls-attempts.py /root/pgha-tls-attempts.json")
    results = json.loads(out.strip().splitlines()[-1])
    stats = results.pop("haproxy stats page")  # HTTPS with a certificate of the cluster CA, and a login
    through_haproxy = results.pop("through haproxy")["postgres superuser without a client certificate"]
    assert through_haproxy.startswith("refused") and "certificate" in through_haproxy, through_haproxy
    assert stats["plain text"].startswith("refused"), stats
    assert "CERTIFICATE_VERIFY_FAILED" in stats["trusting another CA"], stats
    assert stats["the cluster CA, no login"].startswith("answered HTTP 401"), stats
    assert sorted(results) == sorted(NODES)
    for node, attempts in results.items():
        control = attempts.pop("patroni read with the CA (control)")
        assert control.startswith("answered HTTP 200"), (node, control)  # the CA on vm4 is the cluster's
        # etcd answers a plain-text request on its TLS port with 400 ("Client sent an HTTP request to an
        # HTTPS server"), Patroni's unsafe endpoints without a client certificate with 403.
        for what, result in attempts.items():
            refused = result.startswith("refused") or result.startswith(("answered HTTP 400", "answered HTTP 403",
                                                                         "answered HTTP 401"))
            assert refused, (node, what, result)
        assert "no encryption" in attempts["postgres plain text"], (node, attempts["postgres plain text"])
        no_certificate = attempts["postgres superuser without a client certificate"]
        assert "certificate" in no_certificate, (node, no_certificate)  # the password alone is not enough
        # libpq names the failure by how OpenSSL met it: no issuer, or (another CA of the same name) its signature
        wrong_ca = attempts["postgres trusting another CA"]
        assert "certificate verify failed" in wrong_ca or "signature failure" in wrong_ca, node
        assert "CERTIFICATE_VERIFY_FAILED" in attempts["etcd trusting another CA"], node
        assert "CERTIFICATE_VERIFY_FAILED" in attempts["patroni trusting another CA"], node
    # and nothing was written: etcd has no intruder key. Read on psg1 with the cluster's own client as etcd's
    # root (etcd RBAC is on: a CA certificate alone reads nothing); the login goes in a 0600 file, not argv.
    login = "ETCDCTL_USER=%s\n" % shlex.quote("root:" + lab.secrets["etcd_root_password"])
    lab.put("psg1", "/root/pgha-etcd-root.env", login)
    try:
        leftover = lab.ssh("psg1", "set -a && . /root/pgha-etcd-root.env && set +a && ETCDCTL_API=3 etcdctl "
                                   "--endpoints=https://127.0.0.1:%d --cacert=/etc/pgha/tls/ca.crt "
                                   "--cert=/etc/pgha/tls/etcd.crt --key=/etc/pgha/tls/etcd.key "
                                   "get --prefix /airflow/pgha-lab-intruder" % ETCD_PORT)
        patroni_keys = lab.ssh("psg1", "set -a && . /root/pgha-etcd-root.env && set +a && ETCDCTL_API=3 etcdctl "
                                       "--endpoints=https://127.0.0.1:%d --cacert=/etc/pgha/tls/ca.crt "
                                       "--cert=/etc/pgha/tls/etcd.crt --key=/etc/pgha/tls/etcd.key "
                                       "get --prefix --keys-only /" % ETCD_PORT)
    finally:
        lab.ssh("psg1", "rm -f /root/pgha-etcd-root.env")
    assert leftover.strip() == ""
    assert "/leader" in patroni_keys  # the control: root's read does see Patroni's keys
