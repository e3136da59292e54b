"""Phase 7: HAProxy in front of the cluster, switched only when it routes correctly."""

from __future__ import annotations

import shlex
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException
from pgha.hooks.haproxy import HAProxyHook
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.remote import first_line
from pgha.hooks.postgres import NodePostgresHook
from pgha.render import haproxy_context, render

from pgha.operators.base import PghaOperator


class InstallHAProxyOperator(PghaOperator):
    """Installs HAProxy (and socat for its runtime socket) on the inventory's HAProxy host."""

    def run(self, context: Any) -> Any:
        host = self.inventory.haproxy.host
        family = self.os_family(host)
        self.ensure_packages(host, family, family.packages_for("haproxy", 0))
        version = first_line(self.remote(host).run("haproxy -v").stdout)
        return {"version": version}


class HAProxySwitchOperator(PghaOperator):
    """
    Renders haproxy.cfg, validates it with ``haproxy -c`` on the target before
    installing it, installs it atomically (previous config kept as a dated
    backup), reloads seamlessly (server state kept across the reload, ERRATA
    14b), then waits until the write backend has exactly one UP server, the
    Patroni leader, and the read backend exactly the streaming replicas.

    :param routing_timeout: seconds to wait for the routing to match Patroni.
    """

    def __init__(self, *, routing_timeout: int = 120, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routing_timeout = routing_timeout

    def run(self, context: Any) -> Any:
        inv = self.inventory
        remote = self.remote(inv.haproxy.host)
        config = shlex.quote(inv.haproxy.config)
        staged = f"{config}.pgha-new"
        remote.put_file(staged, render("haproxy.cfg.j2", **haproxy_context(inv)))
        check = remote.run(f"haproxy -c -f {staged}", check=False)
        if not check.ok:
            remote.run(f"rm -f {staged}")
            raise AirflowException(
                f"[{inv.haproxy.host}] the rendered haproxy.cfg is invalid, nothing was installed:\n"
                f"{check.stdout}{check.stderr}"
            )
        differs = not remote.run(f"cmp -s {staged} {config}", check=False).ok
        running = remote.run("systemctl is-active --quiet haproxy", check=False).ok
        if differs:
            self._install(staged, running)
        else:
            remote.run(f"rm -f {staged}")
            self.unchanged(f"{inv.haproxy.config} already current")
        remote.run("systemctl enable --quiet haproxy")
        if not running:
            remote.run("systemctl start haproxy")
            self.changed("haproxy started")
        return self.wait_for_routing()

    def _install(self, staged: str, running: bool) -> None:
        haproxy = self.inventory.haproxy
        remote = self.remote(haproxy.host)
        config = shlex.quote(haproxy.config)
        if running:
            state = HAProxyHook(remote, haproxy.stats_socket).command("show servers state")
            remote.put_file(haproxy.state_file, state)
        remote.run(
            f"if [ -f {config} ]; then cp -p {config} {config}.pgha-bak-$(date +%Y%m%dT%H%M%S); fi; "
            f"mv -f {staged} {config}"
        )
        self.changed(f"{haproxy.config} installed (validated with haproxy -c; previous kept as .pgha-bak-*)")
        if running:
            remote.run("systemctl reload haproxy")
            self.changed("haproxy reloaded (master-worker: live connections kept)")

    def wait_for_routing(self) -> dict[str, Any]:
        inv = self.inventory
        haproxy = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket)
        patroni = PatroniHook(self.patroni_api_urls())
        deadline = time.monotonic() + self.routing_timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            try:
                routing = haproxy.routing(patroni.cluster())
                problems = routing.problems
            except AirflowException as exc:
                problems = [str(exc)]
            if not problems:
                self.log.info("routing ok: writes -> %s, reads -> %s", routing.write, routing.read)
                return routing.as_dict()
            self.log.info("routing not ready: %s", "; ".join(problems))
            time.sleep(1)
        raise AirflowException(f"HAProxy routing did not match Patroni within {self.routing_timeout}s: "
                               + "; ".join(problems))


class ClusterRoutingCheckOperator(HAProxySwitchOperator):
    """
    Phase 9a: HAProxy's routing matches Patroni, and a client logging in as
    the application user through the write port reaches the leader and
    through the read port a replica (``SELECT pg_is_in_recovery()``).
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        routing = self.wait_for_routing()
        address = inv.host(inv.haproxy.host).address
        recovery = {}
        for port, expected in ((inv.haproxy.write_port, False), (inv.haproxy.read_port, True)):
            hook = NodePostgresHook(inv.postgres.app_conn_id, host=address, port=port, database=inv.postgres.database)
            recovery[port] = hook.scalar("SELECT pg_is_in_recovery()")
            if recovery[port] is not expected:
                raise AirflowException(f"HAProxy :{port}: pg_is_in_recovery() = {recovery[port]}, expected {expected}")
        self.log.info("through HAProxy: :%d -> leader, :%d -> replica", inv.haproxy.write_port, inv.haproxy.read_port)
        return {**routing, "pg_is_in_recovery": recovery}
