"""Phase 3: the etcd cluster (install, configure, start one member per node)."""

from __future__ import annotations

import time
from typing import Any

from pgha.compat import AirflowException
from pgha.hooks.etcd import EtcdHook, EtcdRbac, EtcdUser, Permission
from pgha.hooks.patroni import PatroniHook
from pgha.render import node_context, render
from pgha.runtime import credentials

from pgha.operators.base import HostOperator, PghaOperator

ETCD_UNIT = "etcd.service"


class InstallEtcdOperator(HostOperator):
    """
    Installs etcd on one node: the OS package, or the release tarball
    verified against the inventory's sha256; and the ``etcd`` system user.

    :param host: database node (mapped).
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        install = self.inventory.etcd.install
        host = self.host_hook(self.host)
        binary = host.family.etcd_bin(install.method)
        if install.method == "package":
            # Debian's package starts a single-node etcd of its own; ConfigureEtcdOperator's unit replaces it.
            packages = host.family.packages_for("etcd", 0)
            self.note(f"packages {' '.join(packages)}",
                      host.ensure_packages(packages, repo=host.family.repo_for("etcd")))
        else:
            self._install_tarball(binary)
        self.note("system user etcd", host.ensure_system_user("etcd", home="/var/lib/etcd"))
        version = host.version(f"{binary} --version") or ""
        if install.version and not version.endswith(f" {install.version}"):
            raise AirflowException(
                f"[{self.host}] version mismatch: expected etcd {install.version}, {binary} says {version!r}"
            )
        return {"version": version}

    def _install_tarball(self, binary: str) -> None:
        install = self.inventory.etcd.install
        host = self.host_hook(self.host)
        if host.version(f"{binary} --version", check=False) == f"etcd Version: {install.version}":
            self.unchanged(f"etcd {install.version} in {binary}")
            return
        host.install_release_tarball(
            url=install.url or "", sha256=install.sha256 or "", binaries=["etcd", "etcdctl"],
            target_dir=binary.rsplit("/", 1)[0], proxy=self.inventory.packages.apt_proxy,
        )
        self.changed(f"etcd {install.version} from {install.url} (sha256 verified) into {binary}")


class ConfigureEtcdOperator(HostOperator):
    """
    Writes one member's unit (v3 API only, explicit URLs) and (re)starts it.

    Bootstrap: a new member only reports ready once a quorum is up, so each
    member starts without blocking and EtcdHealthSensor waits. A cluster that
    is already whole restarts a changed member and waits until the cluster is
    whole again, and the DAG maps this task one member at a time, so a changed
    unit never takes quorum (Patroni's DCS) away. That wait stays here, bounded
    by ``rejoin_timeout``: a sensor after the mapped task would let the next
    member restart before this one rejoined.

    :param host: database node (mapped, one at a time).
    :param rejoin_timeout: seconds a restarted member of a whole cluster has to rejoin.
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def __init__(self, *, rejoin_timeout: float = 90, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rejoin_timeout = rejoin_timeout

    def run(self, context: Any) -> Any:
        inv = self.inventory
        host = self.host_hook(self.host)
        self.note(f"directory {inv.etcd.data_dir}",
                  host.ensure_directory(inv.etcd.data_dir, owner="etcd", group="etcd", mode="0700"))
        unit = render("etcd.service.j2", **node_context(inv, inv.host(self.host), host.family))
        changed = host.install_unit(ETCD_UNIT, unit)
        self.note(f"unit {ETCD_UNIT}", changed)
        self.note(f"{ETCD_UNIT} enabled", host.enable(ETCD_UNIT))
        active = host.unit_active(ETCD_UNIT)
        if not changed and active:
            self.unchanged(f"{ETCD_UNIT} running with this unit")
            return {"restarted": False}
        etcd = EtcdHook(self.etcd_endpoints(), tls=self.client_tls(), auth_conn_id=self.etcd_auth_conn_id())
        if active and not etcd.report().problems(list(inv.database_nodes)):
            self._rolling_restart(etcd)
        else:
            host.restart(ETCD_UNIT, no_block=True)
            self.changed(f"{ETCD_UNIT} (re)started (cluster not whole yet: EtcdHealthSensor waits for it)")
        return {"restarted": True}

    def _rolling_restart(self, etcd: EtcdHook) -> None:
        """Restart this member of a whole cluster and wait until the cluster is whole again."""
        self.host_hook(self.host).restart(ETCD_UNIT, timeout=self.rejoin_timeout)
        deadline = time.monotonic() + self.rejoin_timeout
        while problems := etcd.report().problems(list(self.inventory.database_nodes)):
            if time.monotonic() > deadline:
                raise AirflowException(f"[{self.host}] etcd not whole {self.rejoin_timeout}s after restarting "
                                       f"this member: {'; '.join(problems)}")
            time.sleep(1)
        self.changed(f"{ETCD_UNIT} restarted, one member at a time: the cluster is whole again")


class EtcdLeaderPlacementOperator(PghaOperator):
    """Keeps etcd's leader on another host than Patroni's (see EtcdHook.keep_leader_off_patroni_leader)."""

    def run(self, context: Any) -> Any:
        cluster = PatroniHook(self.patroni_api_urls(), tls=self.client_tls()).cluster()
        if len(cluster.leaders) != 1:
            raise AirflowException(f"Patroni has no single leader ({cluster.leaders or 'none'}): "
                                   "there is nothing to keep etcd's leader away from; clear this task once it has")
        etcd = EtcdHook(self.etcd_endpoints(), tls=self.client_tls(), auth_conn_id=self.etcd_auth_conn_id())
        moved = etcd.keep_leader_off_patroni_leader(cluster)
        if moved:
            self.changed(moved)
        else:
            self.unchanged(f"etcd leader {etcd.report().leader_name}, Patroni leader {cluster.leaders}: apart")
        return {"etcd_leader": etcd.report().leader_name, "patroni_leader": cluster.leaders[0]}


PATRONI_ROLE = "pgha-patroni"  # read-write on Patroni's keys of this cluster
PGHA_ROLE = "pgha-reader"  # read of the same keys (health, status and the member list need no grant)


class EtcdAuthOperator(PghaOperator):
    """
    Turns on etcd RBAC once the cluster is healthy: user ``root`` (connection
    ``etcd.auth.root_conn_id``), Patroni's user with role ``pgha-patroni``
    (read-write on ``/<namespace>/<scope>/`` only) and pgha's user with role
    ``pgha-reader`` (read of those keys); then ``auth enable``. A re-run with
    etcd already so changes nothing; a password that differs from its
    Connection is set again (root's must be right: it is the only way in).
    The certificates carry no common name (pgha.tls.subject), so a cluster-CA
    certificate opens the TLS link only and grants nothing inside etcd.

    On a cluster whose Patroni runs already while auth is still off (Patroni
    from before etcd RBAC), auth stays off: Patroni would lose its DCS and
    demote the leader. Run phase 4 (Patroni's config gets its etcd user), then
    clear this task. Skips when ``etcd.auth.enabled`` or ``tls.enabled`` is false.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        if not inv.etcd_auth_enabled:
            why = "tls.enabled" if inv.etcd.auth.enabled else "etcd.auth.enabled"
            self.unchanged(f"{why} is false: etcd RBAC stays off (any cluster-CA client may read and write)")
            return {"auth": False}
        rbac = self.rbac()
        etcd = EtcdHook(self.etcd_endpoints(), tls=self.client_tls(), credentials=rbac.root)
        if not etcd.auth_enabled(etcd.first_endpoint()) and (running := self._patroni_running()):
            raise AirflowException(
                f"Patroni runs on {', '.join(running)} while etcd's auth is off: turning it on now would cut "
                "Patroni off its DCS and demote the leader. Run phase 4 (Patroni's config gets its etcd user "
                f"from {inv.etcd.auth.patroni_conn_id!r}), then clear this task")
        changes = etcd.apply_rbac(rbac)
        for change in changes:
            self.changed(change)
        if not changes:
            self.unchanged(f"etcd RBAC on: users {', '.join(u.credentials.login for u in rbac.users)} and root, "
                           f"roles {', '.join(rbac.roles)} as pgha grants them")
        return {"auth": True, "prefix": inv.patroni_key_prefix, "changes": len(changes)}

    def rbac(self) -> EtcdRbac:
        auth = self.inventory.etcd.auth
        root = credentials(auth.root_conn_id, "etcd's root user (login root)")
        patroni = credentials(auth.patroni_conn_id, "Patroni's etcd user")
        pgha = credentials(auth.pgha_conn_id, "pgha's etcd user")
        if root.login != "root":
            raise AirflowException(f"connection {auth.root_conn_id!r}: login must be root (etcd enables auth only "
                                   f"with a user named root), not {root.login!r}")
        if len({"root", patroni.login, pgha.login}) != 3:
            raise AirflowException(f"connections {auth.patroni_conn_id!r} and {auth.pgha_conn_id!r} need two "
                                   f"logins of their own, neither root (they are {patroni.login!r}, {pgha.login!r})")
        prefix = self.inventory.patroni_key_prefix
        return EtcdRbac(root=root,
                        users=(EtcdUser(patroni, PATRONI_ROLE), EtcdUser(pgha, PGHA_ROLE)),
                        roles={PATRONI_ROLE: (Permission.prefix("READWRITE", prefix),),
                               PGHA_ROLE: (Permission.prefix("READ", prefix),)})

    def _patroni_running(self) -> list[str]:
        return [name for name in self.inventory.database_nodes
                if self.host_hook(name).unit_active("patroni.service")]
