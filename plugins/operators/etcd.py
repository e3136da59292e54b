"""Phase 3: the etcd cluster (install, configure, start one member per node)."""

from __future__ import annotations

import shlex
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException
from pgha.hooks.etcd import EtcdHook
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.remote import first_line
from pgha.render import node_context, render

from pgha.operators.base import HostOperator, PghaOperator


class InstallEtcdOperator(HostOperator):
    """
    Installs etcd on one node: the OS package, or the release tarball
    verified against the inventory's sha256.

    :param host: database node (mapped).
    """

    def run(self, context: Any) -> Any:
        install = self.inventory.etcd.install
        family = self.os_family(self.host)
        remote = self.remote(self.host)
        if install.method == "package":
            # The package starts a single-node etcd of its own; ours replaces that unit.
            self.ensure_packages(self.host, family, family.packages_for("etcd", 0))
        else:
            self._install_tarball(family.etcd_binary)
        remote.run("id etcd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/etcd --shell /usr/sbin/nologin etcd")
        version = first_line(remote.run(f"{family.etcd_binary} --version").stdout)
        if install.version and install.version not in version:
            raise AirflowException(f"[{self.host}] version mismatch: expected etcd {install.version}, got {version!r}")
        return {"version": version}

    def _install_tarball(self, etcd_binary: str) -> None:
        install = self.inventory.etcd.install
        remote = self.remote(self.host)
        if remote.run(f"{etcd_binary} --version 2>/dev/null | grep -q 'etcd Version: {install.version}$'",
                      check=False, quiet=True).ok:
            self.unchanged(f"etcd {install.version} already installed")
            return
        proxy = self.inventory.packages.apt_proxy
        curl = "curl -fsSL" + (f" --proxy {shlex.quote(proxy)}" if proxy else "")
        target_dir = shlex.quote(etcd_binary.rsplit("/", 1)[0])
        remote.run(
            "set -e; tmp=$(mktemp -d); trap 'rm -rf $tmp' EXIT; "
            f"{curl} -o $tmp/etcd.tgz {shlex.quote(install.url or '')}; "
            f"echo '{install.sha256}  '$tmp/etcd.tgz | sha256sum -c --quiet; "
            f"tar -xzf $tmp/etcd.tgz -C $tmp --strip-components=1; "
            f"install -m 0755 $tmp/etcd $tmp/etcdctl {target_dir}/",
            timeout=900,
        )
        self.changed(f"etcd {install.version} from {install.url} (sha256 verified)")


class ConfigureEtcdOperator(HostOperator):
    """
    Writes one member's unit (ERRATA: no v2, explicit URLs) and (re)starts it.

    Bootstrap: a new member only reports ready once a quorum is up, so each
    member starts without blocking and EtcdHealthSensor waits. A cluster that
    is already whole restarts a changed member and waits until the cluster is
    whole again, and the DAG maps this task one member at a time, so a changed
    unit never takes quorum (Patroni's DCS) away.

    :param host: database node (mapped, one at a time).
    :param rejoin_timeout: seconds a restarted member of a whole cluster has to rejoin.
    """

    def __init__(self, *, rejoin_timeout: float = 90, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rejoin_timeout = rejoin_timeout

    def run(self, context: Any) -> Any:
        inv = self.inventory
        family = self.os_family(self.host)
        remote = self.remote(self.host)
        data_dir = shlex.quote(inv.etcd.data_dir)
        remote.run(f"install -d -o etcd -g etcd -m 0700 {data_dir}")
        unit = render("etcd.service.j2", **node_context(inv, inv.host(self.host), family))
        changed = self.install_unit(self.host, "etcd.service", unit)
        remote.run("systemctl enable --quiet etcd.service")
        active = remote.run("systemctl is-active --quiet etcd.service", check=False).ok
        if not changed and active:
            self.unchanged("etcd.service running with this unit")
            return {"restarted": False}
        etcd = EtcdHook(self.etcd_endpoints())
        if active and not etcd.report().problems(list(inv.database_nodes)):
            self._rolling_restart(etcd)
        else:
            remote.run("systemctl restart --no-block etcd.service")
            self.changed("etcd.service (re)started (cluster not whole yet: EtcdHealthSensor waits for it)")
        return {"restarted": True}

    def _rolling_restart(self, etcd: EtcdHook) -> None:
        """Restart this member of a whole cluster and wait until the cluster is whole again."""
        self.remote(self.host).run("systemctl restart etcd.service", timeout=self.rejoin_timeout)
        deadline = time.monotonic() + self.rejoin_timeout
        while problems := etcd.report().problems(list(self.inventory.database_nodes)):
            if time.monotonic() > deadline:
                raise AirflowException(f"[{self.host}] etcd not whole {self.rejoin_timeout}s after restarting "
                                       f"this member: {'; '.join(problems)}")
            time.sleep(1)
        self.changed("etcd.service restarted, one member at a time: the cluster is whole again")


class EtcdLeaderPlacementOperator(PghaOperator):
    """Keeps etcd's leader on another host than Patroni's (see EtcdHook.keep_leader_off_patroni_leader)."""

    def run(self, context: Any) -> Any:
        cluster = PatroniHook(self.patroni_api_urls()).cluster()
        etcd = EtcdHook(self.etcd_endpoints())
        moved = etcd.keep_leader_off_patroni_leader(cluster)
        if moved:
            self.changed(moved)
        else:
            self.unchanged(f"etcd leader {etcd.report().leader_name}, Patroni leader {cluster.leaders}: apart")
        return {"etcd_leader": etcd.report().leader_name, "patroni_leader": cluster.leaders[0]}
