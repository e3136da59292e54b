"""The cluster's certificates: a CA, node certificates issued by it, and when to renew them.

Pure model (no hook, no Airflow): PEM text in, PEM text out, built with ``cryptography``.
Keys are ECDSA P-256 (etcd, PostgreSQL, Patroni, HAProxy and libpq all take them).

The CA lives where the operator keeps secrets: an Airflow Connection (default ``pgha_ca``),
the CA certificate's PEM in ``extra`` as ``{"certificate": "..."}`` and its private key's PEM
in ``password``. Only certificates and node keys reach hosts, never the CA key.
``python -m pgha.tls create-ca`` makes a CA and stores it as that Connection (or prints it as
JSON for a secrets backend); pgha never writes the Connection from a task.

On every host (``TLS_DIR``): ``ca.crt`` (0644), and on the database nodes the node's certificate
and key twice, one copy per service user (0600 postgres for PostgreSQL and Patroni, 0600 etcd for
etcd), so that neither service can read the other's files.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "/etc/pgha/tls"
CA_FILE = f"{TLS_DIR}/ca.crt"
DEFAULT_CA_CONN_ID = "pgha_ca"
CA_DAYS = 3650
CLIENT_DAYS = 1  # pgha's own client certificate, minted per worker process
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before "now"


@dataclass(frozen=True)
class ServiceFiles:
    """Where one service user's copy of the node certificate and key lives (one file when ``cert == key``)."""

    owner: str
    cert: str
    key: str

    @property
    def combined(self) -> bool:
        return self.cert == self.key


def service_files(owner: str, directory: str = TLS_DIR) -> ServiceFiles:
    return ServiceFiles(owner, f"{directory}/{owner}.crt", f"{directory}/{owner}.key")


POSTGRES_FILES = service_files("postgres")
ETCD_FILES = service_files("etcd")


def haproxy_files(directory: str = TLS_DIR) -> ServiceFiles:
    """HAProxy's certificate for its stats page and its key in one PEM file (``cert == key``: every HAProxy
    release reads that; a separate ``<crt>.key`` only 2.2 and later), root's: HAProxy reads it before it
    drops root."""
    return ServiceFiles("root", f"{directory}/haproxy.pem", f"{directory}/haproxy.pem")


HAPROXY_FILES = haproxy_files()


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster CA: its certificate and (for issuing) its private key, both PEM."""

    cert_pem: str
    key_pem: str = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    def private_key(self) -> Any:
        """The CA's key (EC or RSA: an operator's own CA may be either)."""
        key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the CA key is neither an EC nor an RSA private key")
        return key


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: str
    key_pem: str = field(repr=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_ca(common_name: str, days: int = CA_DAYS, now: dt.datetime | None = None) -> CertificateAuthority:
    """A new self-signed CA that may sign only end-entity certificates (path length 0)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(_cert_pem(cert), _key_pem(key))


def subject(name: str) -> x509.Name:
    """An end-entity certificate's subject: ``O=pgha, OU=<name>``, deliberately without a common name.

    etcd takes a client certificate's CN as an etcd user; with RBAC on, its JSON gateway (which Patroni
    and pgha speak) refuses every request whose certificate has a CN, and over gRPC a CN would log in
    without a password. Without one, a cluster-CA certificate only opens the TLS link and grants no
    etcd rights: every etcd client authenticates with a user and password (README, etcd RBAC).
    Clients find a server's names in the subject alternative names, never in the CN."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgha"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, name)])


def common_name(cert_pem: str) -> str | None:
    names = load(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def issue(ca: CertificateAuthority, name: str, *, dns_names: Sequence[str] = (),
          ip_addresses: Sequence[str] = (), days: int = 365, now: dt.datetime | None = None,
          client_auth: bool = True) -> IssuedCertificate:
    """
    A certificate for ``name`` (``subject(name)``, no common name) with these subject alternative
    names, signed by ``ca``, good for both ends of a TLS link (server and client auth: etcd peers
    and Patroni use one certificate for both). ``client_auth=False``: a server's only (HAProxy's stats
    page, a source PostgreSQL): its key, kept where pgha is not the only one who can read it, opens
    nothing that asks for a client certificate of the CA.
    """
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = ca.certificate
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                     content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]
                                             + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key(), hashes.SHA256())
    return IssuedCertificate(_cert_pem(cert), _key_pem(key))


def load(cert_pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_pem.encode())


def subject_alt_names(cert_pem: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a certificate names."""
    try:
        ext = load(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(ext.get_values_for_type(x509.DNSName)), [str(a) for a in ext.get_values_for_type(x509.IPAddress)]


def signed_by(cert_pem: str, ca_cert_pem: str) -> bool:
    """True when ``ca_cert_pem``'s key signed ``cert_pem`` (and the issuer names match)."""
    cert, ca = load(cert_pem), load(ca_cert_pem)
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def expires(cert_pem: str) -> dt.datetime:
    return load(cert_pem).not_valid_after_utc


def days_left(cert_pem: str, now: dt.datetime | None = None) -> float:
    return (expires(cert_pem) - (now or _now())).total_seconds() / 86400


def reissue_reason(cert_pem: str | None, ca_cert_pem: str, *, dns_names: Sequence[str], ip_addresses: Sequence[str],
                   renew_before_days: int, now: dt.datetime | None = None) -> str | None:
    """Why a host's certificate must be issued again, or None when it may stay."""
    if not cert_pem:
        return "no certificate installed"
    try:
        cert = load(cert_pem)
    except ValueError:
        return "the installed certificate is not a PEM certificate"
    if not signed_by(cert_pem, ca_cert_pem):
        return "not signed by the current CA"
    if common_name(cert_pem) is not None:
        return "it has a common name (etcd's JSON gateway refuses such a client once etcd RBAC is on)"
    left = days_left(cert_pem, now)
    if left < renew_before_days:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d} ({left:.0f} days left, renewed within {renew_before_days})"
    names, addresses = subject_alt_names(cert_pem)
    missing = sorted(set(dns_names) - set(names)) + sorted(set(ip_addresses) - set(addresses))
    if missing:
        return f"does not name {', '.join(missing)}"
    return None


def expiry_problem(what: str, cert_pem: str | None, ca_cert_pem: str, *, warn_days: int,
                   now: dt.datetime | None = None) -> str | None:
    """A problem a precheck reports for an installed certificate: missing, foreign, expired or expiring soon."""
    if not cert_pem:
        return f"{what}: no certificate installed (phase 3 issues it)"
    if not signed_by(cert_pem, ca_cert_pem):
        return f"{what}: not signed by the current CA (re-run phase 3)"
    left = days_left(cert_pem, now)
    if left <= 0:
        return f"{what}: expired on {expires(cert_pem):%Y-%m-%d} (re-run phase 3)"
    if left < warn_days:
        return f"{what}: expires on {expires(cert_pem):%Y-%m-%d}, in {left:.0f} days (re-run phase 3 to renew)"
    return None


def node_names(inventory: Any, host_name: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a database node's certificate names: the node (its own clients, peers and
    local tools) and HAProxy, which passes PostgreSQL's TLS through: a client of HAProxy that verifies
    the server's name (sslmode=verify-full) sees a member's certificate and must find HAProxy's name in it."""
    node, lb = inventory.host(host_name), inventory.host(inventory.haproxy.host)
    dns = [node.name, "localhost", lb.name, *inventory.tls.haproxy_names]
    return list(dict.fromkeys(dns)), list(dict.fromkeys([node.address, "127.0.0.1", lb.address]))


def haproxy_names(inventory: Any) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) HAProxy's own certificate names (its stats page): the HAProxy host, its
    address, localhost and ``tls.haproxy_names``."""
    lb = inventory.host(inventory.haproxy.host)
    return (list(dict.fromkeys([lb.name, "localhost", *inventory.tls.haproxy_names])),
            list(dict.fromkeys([lb.address, "127.0.0.1"])))


def installed_certificates(inventory: Any) -> list[tuple[str, str]]:
    """(host, path) of every certificate pgha installs: each database node's and HAProxy's."""
    return ([(name, POSTGRES_FILES.cert) for name in inventory.database_nodes]
            + [(inventory.haproxy.host, HAPROXY_FILES.cert)])


def certificate_problems(inventory: Any, ca_cert_pem: str, read: Callable[[str, str], str | None], *,
                         warn_days: int, now: dt.datetime | None = None) -> list[str]:
    """Every problem of the CA and of each certificate pgha installs (``read(host, path)`` returns its PEM
    or None): missing, foreign, expired or expiring within ``warn_days``. [] when all is well."""
    problems = [expiry_problem("the cluster CA", ca_cert_pem, ca_cert_pem, warn_days=warn_days, now=now)]
    problems += [expiry_problem(f"{host} {path}", read(host, path), ca_cert_pem, warn_days=warn_days, now=now)
                 for host, path in installed_certificates(inventory)]
    return [p for p in problems if p]


def fingerprint(cert_pem: str) -> str:
    return load(cert_pem).fingerprint(hashes.SHA256()).hex()


# ---------------------------------------------------------------- the CA as an Airflow Connection


def ca_from_connection(extra: str | dict[str, Any] | None, password: str | None, conn_id: str) -> CertificateAuthority:
    """The CA kept in a Connection: certificate PEM in extra ``certificate``, private key PEM in password."""
    values = json.loads(extra) if isinstance(extra, str) and extra else (extra or {})
    cert = values.get("certificate") if isinstance(values, dict) else None
    if not cert or not password:
        raise ValueError(f"connection {conn_id!r} must hold the CA certificate (PEM) in extra 'certificate' "
                         "and its private key (PEM) in password; `python -m pgha.tls create-ca` makes one")
    ca = CertificateAuthority(cert, password)
    try:
        ca.certificate, ca.private_key()
    except ValueError as exc:
        raise ValueError(f"connection {conn_id!r}: {exc}") from None
    if not signed_by(issue(ca, "pgha-self-test", days=1).cert_pem, cert):
        raise ValueError(f"connection {conn_id!r}: the private key does not belong to the CA certificate")
    return ca


def connection_json(ca: CertificateAuthority) -> dict[str, Any]:
    """The Connection that holds ``ca`` (``airflow connections import`` / secrets backend format)."""
    return {"conn_type": "generic", "description": "pgha cluster CA (certificate in extra, key in password)",
            "password": ca.key_pem, "extra": json.dumps({"certificate": ca.cert_pem})}


# ---------------------------------------------------------------- pgha's client side


@dataclass(frozen=True)
class ClientTLS:
    """What pgha's own clients (etcd, Patroni REST, libpq) need: the CA to verify, and a client certificate."""

    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)

    @classmethod
    def for_ca(cls, ca: CertificateAuthority, name: str = "pgha-client") -> ClientTLS:
        client = issue(ca, name, days=CLIENT_DAYS)
        return cls(ca.cert_pem, client.cert_pem, client.key_pem)

    def files(self) -> TlsFiles:
        """The three as files of this process (0600 in a 0700 directory, removed when the process ends)."""
        return _materialise(self)


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


_FILES: dict[str, TlsFiles] = {}


def _materialise(tls: ClientTLS) -> TlsFiles:
    digest = hashlib.sha256((tls.ca_pem + tls.cert_pem).encode()).hexdigest()[:16]
    if digest in _FILES and all(os.path.exists(p) for p in vars(_FILES[digest]).values()):
        return _FILES[digest]
    directory = tempfile.mkdtemp(prefix="pgha-tls-")  # 0700
    atexit.register(shutil.rmtree, directory, True)
    paths = TlsFiles(ca=f"{directory}/ca.crt", cert=f"{directory}/client.crt", key=f"{directory}/client.key")
    for path, text in ((paths.ca, tls.ca_pem), (paths.cert, tls.cert_pem), (paths.key, tls.key_pem)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    _FILES[digest] = paths
    return paths


def ssl_context(tls: ClientTLS) -> Any:
    """An SSLContext that trusts only the cluster CA and presents pgha's client certificate."""
    import ssl

    files = tls.files()
    context = ssl.create_default_context(cadata=tls.ca_pem)
    context.load_cert_chain(files.cert, files.key)
    return context


# ---------------------------------------------------------------- python -m pgha.tls create-ca


def _store_connection(conn_id: str, ca: CertificateAuthority) -> None:
    """Add the Connection to Airflow's metadata DB (run where the Airflow CLI runs; not from a task)."""
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.query(Connection).filter(Connection.conn_id == conn_id).first():
            raise SystemExit(f"connection {conn_id!r} exists already: pgha never replaces a CA (delete it first "
                             "to start a new CA; every node certificate is then issued again by phase 3)")
        values = connection_json(ca)
        session.add(Connection(conn_id=conn_id, conn_type=values["conn_type"], description=values["description"],
                               password=values["password"], extra=values["extra"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgha.tls", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-ca", help="make a cluster CA and store it as an Airflow Connection")
    create.add_argument("--conn-id", default=DEFAULT_CA_CONN_ID)
    create.add_argument("--name", default="pgha cluster CA", help="the CA's common name")
    create.add_argument("--days", type=int, default=CA_DAYS)
    create.add_argument("--print-json", action="store_true",
                        help="print {conn_id: connection} (the key included!) for a secrets backend instead")
    issue_cmd = sub.add_parser("issue", help="issue a server certificate of the cluster CA (e.g. for the source "
                                             "PostgreSQL, so the logical method's subscription verifies it)")
    issue_cmd.add_argument("--conn-id", default=DEFAULT_CA_CONN_ID, help="the CA's Connection")
    issue_cmd.add_argument("--name", required=True, help="the host's name (subject O=pgha, OU=<name>)")
    issue_cmd.add_argument("--dns", action="append", default=[], help="a DNS name it names (repeatable)")
    issue_cmd.add_argument("--ip", action="append", default=[], help="an address it names (repeatable)")
    issue_cmd.add_argument("--days", type=int, default=365)
    issue_cmd.add_argument("--out", required=True, help="writes <out>.crt and <out>.key (0600)")
    args = parser.parse_args(argv)
    if args.command == "issue":
        return _issue_files(args)
    ca = make_ca(args.name, args.days)
    if args.print_json:
        json.dump({args.conn_id: connection_json(ca)}, sys.stdout, indent=2)
        print()
    else:
        _store_connection(args.conn_id, ca)
        print(f"connection {args.conn_id!r}: CA {args.name!r}, valid until {expires(ca.cert_pem):%Y-%m-%d}, "
              f"sha256 {fingerprint(ca.cert_pem)}")
    return 0


def _issue_files(args: argparse.Namespace) -> int:
    from pgha.runtime import cluster_ca

    for address in args.ip:
        ipaddress.ip_address(address)  # a clear error before anything is written
    issued = issue(cluster_ca(args.conn_id), args.name, dns_names=args.dns, ip_addresses=args.ip, days=args.days,
                   client_auth=False)  # a server's: the source's key must open nothing of the cluster
    for suffix, text in ((".crt", issued.cert_pem), (".key", issued.key_pem)):
        fd = os.open(args.out + suffix, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    print(f"{args.out}.crt and {args.out}.key (0600): names {', '.join(args.dns + args.ip)}, "
          f"valid until {expires(issued.cert_pem):%Y-%m-%d}; install them as the server's ssl_cert_file and "
          "ssl_key_file (owned by postgres) and reload it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
