"""Phase 3: the cluster's certificates on every host, before etcd starts."""

from __future__ import annotations

from typing import Any

from pgha import tls
from pgha.compat import AirflowException
from pgha.runtime import cluster_ca

from pgha.operators.base import HostOperator, PghaOperator

SERVICE_FILES = (tls.POSTGRES_FILES, tls.ETCD_FILES)  # PostgreSQL + Patroni, etcd
RELOAD_ON_RENEWAL = {"patroni.service": "Patroni reloads its REST API certificate and PostgreSQL's",
                     "haproxy.service": "HAProxy reloads the CA its checks verify with and its stats page's certificate"}


class IssueCertificatesOperator(HostOperator):
    """
    Installs the cluster CA's certificate (``/etc/pgha/tls/ca.crt``, 0644) on a
    managed host and, on a database node, the node's certificate and key, issued
    here by the CA from connection ``tls.ca_conn_id`` (the CA key never leaves the
    worker): one copy per service user, 0600 postgres (PostgreSQL, Patroni) and
    0600 etcd. The certificate names the node, its address, localhost and
    HAProxy (PostgreSQL's TLS passes through HAProxy). The HAProxy host gets a
    certificate of its own for its HTTPS stats page, a server's only (no client
    auth), with its key in one PEM file (``haproxy.pem``, 0600 root). A
    certificate is issued again when it is missing, not signed by the current CA, expires within
    ``tls.renew_before_days``, lacks a name, or a key file lost its owner or mode;
    otherwise nothing changes. After a renewal a running Patroni and HAProxy are
    reloaded (etcd reads its files at each new connection). Skips when ``tls.enabled`` is false.

    :param host: managed host (mapped).
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        if not inv.tls.enabled:
            self.unchanged("tls.enabled is false: no certificates (every link is plain text)")
            return {"tls": False}
        ca = cluster_ca(inv.tls.ca_conn_id)
        host = self.host_hook(self.host)
        self.note(f"directory {tls.TLS_DIR}", host.ensure_directory(tls.TLS_DIR, owner="root", mode="0755"))
        ca_changed = host.put_file(tls.CA_FILE, ca.cert_pem, mode="0644").changed
        self.note(f"{tls.CA_FILE} (CA sha256 {tls.fingerprint(ca.cert_pem)[:16]})", ca_changed)
        result: dict[str, Any] = {"ca_fingerprint": tls.fingerprint(ca.cert_pem)}
        renewed = False
        if self.host in inv.database_nodes:
            renewed, result["certificate"] = self._certificate(ca, tls.node_names(inv, self.host), SERVICE_FILES)
        if self.host == inv.haproxy.host:
            haproxy_renewed, result["haproxy_certificate"] = self._certificate(ca, tls.haproxy_names(inv),
                                                                               (tls.HAPROXY_FILES,), client_auth=False)
            renewed = renewed or haproxy_renewed
        if ca_changed or renewed:
            self._reload_services()
        return result

    def _certificate(self, ca: tls.CertificateAuthority, names: tuple[list[str], list[str]],
                     copies: tuple[tls.ServiceFiles, ...], client_auth: bool = True) -> tuple[bool, dict[str, Any]]:
        """Issue a certificate with these (DNS names, addresses) into ``copies`` unless the installed one
        may stay; (renewed, its description). ``client_auth=False``: a server's only (HAProxy's)."""
        inv = self.inventory
        host = self.host_hook(self.host)
        dns_names, addresses = names
        installed = host.read_file(copies[0].cert)
        reason = tls.reissue_reason(installed, ca.cert_pem, dns_names=dns_names, ip_addresses=addresses,
                                    renew_before_days=inv.tls.renew_before_days) or self._files_reason(installed,
                                                                                                        copies)
        if reason is None:
            self.unchanged(f"{copies[0].cert} on {self.host} (expires {tls.expires(installed or ''):%Y-%m-%d}, "
                           f"names {', '.join(dns_names + addresses)})")
            return False, self._describe(installed or "")
        issued = tls.issue(ca, self.host, dns_names=dns_names, ip_addresses=addresses, days=inv.tls.days,
                           client_auth=client_auth)
        host.remote.add_secret(issued.key_pem)
        for files in copies:
            if files.combined:
                host.put_file(files.cert, issued.cert_pem + issued.key_pem, owner=files.owner, mode="0600",
                              secret=True)
                continue
            host.put_file(files.cert, issued.cert_pem, owner=files.owner, mode="0600")
            host.put_file(files.key, issued.key_pem, owner=files.owner, mode="0600", secret=True)
        self.changed(f"certificate {copies[0].cert} of {self.host} issued ({reason}): expires "
                     f"{tls.expires(issued.cert_pem):%Y-%m-%d}, names {', '.join(dns_names + addresses)}; "
                     f"installed 0600 for {', '.join(f.owner for f in copies)}")
        return True, self._describe(issued.cert_pem)

    def _files_reason(self, installed: str | None, copies: tuple[tls.ServiceFiles, ...]) -> str | None:
        """Why the installed copies are not usable as they are (a copy differs, a key lost owner or mode)."""
        host = self.host_hook(self.host)
        for files in copies:
            if files is not copies[0] and host.read_file(files.cert) != installed:
                return f"{files.cert} differs from {copies[0].cert}"
            for path in dict.fromkeys((files.cert, files.key)):
                state = host.file_state(path)
                if state != f"regular file {files.owner}:{files.owner}:600":
                    return f"{path} is {state or 'missing'}, not a 0600 file of {files.owner}"
        return None

    def _describe(self, cert_pem: str) -> dict[str, Any]:
        names, addresses = tls.subject_alt_names(cert_pem)
        return {"expires": f"{tls.expires(cert_pem):%Y-%m-%d}", "names": names + addresses,
                "sha256": tls.fingerprint(cert_pem)}

    def _reload_services(self) -> None:
        host = self.host_hook(self.host)
        for unit, why in RELOAD_ON_RENEWAL.items():
            if host.unit_active(unit):
                host.reload(unit)
                self.changed(f"{unit} reloaded: {why}")


class CheckCertificatesOperator(PghaOperator):
    """
    Preflight: the cluster CA (connection ``tls.ca_conn_id``) is usable and it,
    every database node's certificate and HAProxy's are valid for more than
    ``tls.renew_before_days``. A problem fails the run unless phase 3 (which issues
    and renews them) is selected; then it is only logged. Changes nothing.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        if not inv.tls.enabled:
            self.log.warning("tls.enabled is false: etcd, Patroni's REST API and PostgreSQL run in plain text")
            return {"tls": False}
        ca = cluster_ca(inv.tls.ca_conn_id)
        problems = tls.certificate_problems(inv, ca.cert_pem, self._installed, warn_days=inv.tls.renew_before_days)
        if problems and "3_etcd_cluster" not in ((context.get("params") or {}).get("phases") or ["3_etcd_cluster"]):
            raise AirflowException("certificates need phase 3 (not selected in this run): " + "; ".join(problems))
        for problem in problems:
            self.log.warning("certificate: %s (phase 3 of this run issues it)", problem)
        return {"ca_expires": f"{tls.expires(ca.cert_pem):%Y-%m-%d}", "ca_fingerprint": tls.fingerprint(ca.cert_pem),
                "problems": problems}

    def _installed(self, host: str, path: str) -> str | None:
        return self.host_hook(host).read_file(path)
