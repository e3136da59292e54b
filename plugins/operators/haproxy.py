"""Phase 7 and 9a: HAProxy in front of the cluster, and clients through it.

Whether HAProxy routes like Patroni is waited for by HAProxyRoutingSensor
(pgha.sensors.haproxy), a visible task after the switch.
"""

from __future__ import annotations

import shlex
from typing import Any

from pgha.compat import AirflowException, BaseHook
from pgha.hooks.haproxy import HAProxyHook
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.postgres import NodePostgresHook
from pgha.render import haproxy_context, render
from pgha.runtime import Credentials, credentials

from pgha.operators.base import PghaOperator

HAPROXY_UNIT = "haproxy.service"
STATS_CONN_ID = "pgha_haproxy_stats"  # optional: without it the stats page takes the Patroni REST API's login


def haproxy_word(value: str) -> str:
    """``value`` as one haproxy.cfg word, read back verbatim: single-quoted (no escape, no variable
    inside), each ``'`` written as ``'\\''``."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise AirflowException("a control character cannot be written into haproxy.cfg")
    return "'" + value.replace("'", "'\\''") + "'"


class InstallHAProxyOperator(PghaOperator):
    """Installs HAProxy (and socat for its runtime socket) on the inventory's HAProxy host."""

    def run(self, context: Any) -> Any:
        host = self.host_hook(self.inventory.haproxy.host)
        packages = host.family.packages_for("haproxy", 0)
        self.note(f"packages {' '.join(packages)}", host.ensure_packages(packages))
        return {"version": host.version("haproxy -v")}


class HAProxySwitchOperator(PghaOperator):
    """
    Renders haproxy.cfg; when it differs from the installed one, validates it
    with ``haproxy -c`` on the target before installing it, installs it
    (previous config kept as a dated backup) and reloads seamlessly (server
    state kept across the reload, so no write reaches a replica before the
    first check). Starts HAProxy if it is not running. HAProxyRoutingSensor
    then waits until HAProxy routes like Patroni.
    """

    def run(self, context: Any) -> Any:
        haproxy = self.inventory.haproxy
        host = self.host_hook(haproxy.host)
        login = self._stats_login()
        host.remote.add_secret(login.password)
        wanted = render("haproxy.cfg.j2", **haproxy_context(self.inventory),
                        stats_auth=haproxy_word(f"{login.login}:{login.password}"))
        running = host.unit_active(HAPROXY_UNIT)
        # what a command prints comes back with the password masked; a changed password still differs
        differs = host.read_file(haproxy.config) not in (wanted, host.remote.mask(wanted))
        if differs:
            self._install(wanted, running)
        else:
            self.unchanged(f"{haproxy.config} already current")
        self.note(f"{HAPROXY_UNIT} enabled", host.enable(HAPROXY_UNIT))
        if not running:
            host.start(HAPROXY_UNIT)
            self.changed("haproxy started")
        return {"config_changed": differs, "reloaded": differs and running, "started": not running}

    def _stats_login(self) -> Credentials:
        """The stats page's login: connection pgha_haproxy_stats, else the Patroni REST API's."""
        try:
            BaseHook.get_connection(STATS_CONN_ID)
        except Exception:
            conn_id = self.inventory.patroni.rest_conn_id
            login = credentials(conn_id, f"HAProxy stats page login (no connection {STATS_CONN_ID!r})")
        else:
            conn_id = STATS_CONN_ID
            login = credentials(conn_id, "HAProxy stats page login")
        if ":" in login.login:
            raise AirflowException(f"connection {conn_id!r}: a HAProxy stats login cannot contain ':'")
        return login

    def _install(self, wanted: str, running: bool) -> None:
        haproxy = self.inventory.haproxy
        host = self.host_hook(haproxy.host)
        staged = f"{haproxy.config}.pgha-new"
        host.put_file(staged, wanted, mode="0600", secret=True)  # it holds the stats page's password
        check = host.run(f"haproxy -c -f {shlex.quote(staged)}", check=False)
        if not check.ok:
            host.remove(staged)
            raise AirflowException(
                f"[{haproxy.host}] the rendered haproxy.cfg is invalid, nothing was installed:\n"
                f"{check.stdout}{check.stderr}"
            )
        if running:
            state = HAProxyHook(self.remote(haproxy.host), haproxy.stats_socket).command("show servers state")
            host.put_file(haproxy.state_file, state)
        host.replace_file(haproxy.config, staged)
        self.changed(f"{haproxy.config} installed (validated with haproxy -c; previous kept as .pgha-bak-*)")
        if running:
            host.reload(HAPROXY_UNIT)
            self.changed("haproxy reloaded (master-worker: live connections kept)")


class ClusterRoutingCheckOperator(PghaOperator):
    """
    Phase 9a, after HAProxyRoutingSensor: a client logging in as the
    application user through HAProxy's write port reaches the leader and
    through its read port a replica (``SELECT pg_is_in_recovery()``). Reads
    HAProxy's routing once for the record; it does not wait.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        routing = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket).routing(
            PatroniHook(self.patroni_api_urls()).cluster()
        )
        if routing.problems:
            raise AirflowException("HAProxy does not route like Patroni: " + "; ".join(routing.problems))
        address = inv.host(inv.haproxy.host).address
        recovery = {}
        for port, expected in ((inv.haproxy.write_port, False), (inv.haproxy.read_port, True)):
            hook = NodePostgresHook(inv.postgres.app_conn_id, host=address, port=port, database=inv.postgres.database)
            recovery[port] = hook.scalar("SELECT pg_is_in_recovery()")
            if recovery[port] is not expected:
                raise AirflowException(f"HAProxy :{port}: pg_is_in_recovery() = {recovery[port]}, expected {expected}")
        self.log.info("through HAProxy: :%d -> leader, :%d -> replica", inv.haproxy.write_port, inv.haproxy.read_port)
        return {**routing.as_dict(), "pg_is_in_recovery": recovery}
