"""Phase 7 and 9a: HAProxy in front of the cluster, and clients through it.

Whether HAProxy routes like Patroni is waited for by HAProxyRoutingSensor
(pgha.sensors.haproxy), a visible task after the switch.
"""

from __future__ import annotations

import shlex
from typing import Any

from pgha.compat import AirflowException, BaseHook
from pgha.hooks.haproxy import HAProxyHook
from pgha.hooks.host import KEEP_BACKUPS
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.postgres import NodePostgresHook
from pgha.render import haproxy_context, render
from pgha.secret_formats import haproxy_word
from pgha.runtime import Credentials, credentials

from pgha.operators.base import PghaOperator

HAPROXY_UNIT = "haproxy.service"
STATS_CONN_ID = "pgha_haproxy_stats"  # optional: without it the stats page takes the Patroni REST API's login


# SELinux on the HAProxy host: HAProxy's own policy lets it connect to and bind only a few port types
# (http_port_t...), so its checks of PostgreSQL ports need haproxy_connect_any, which also lets it bind
# any port. The front ports carry PostgreSQL's protocol, the stats page HTTP.
HAPROXY_BOOLEAN = "haproxy_connect_any"


class InstallHAProxyOperator(PghaOperator):
    """
    Installs HAProxy (and socat for its runtime socket) on the inventory's
    HAProxy host; on the RHEL family also opens its ports in firewalld where
    it runs and, where SELinux enforces, lets HAProxy reach the cluster's
    ports and labels its own.
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        haproxy = self.inventory.haproxy
        host = self.host_hook(haproxy.host)
        socket_dir = host.family.haproxy_socket_dir
        if socket_dir and not haproxy.stats_socket.startswith(socket_dir + "/"):
            raise AirflowException(
                f"[{haproxy.host}] haproxy.stats_socket {haproxy.stats_socket} cannot work on {host.family.name}: "
                f"its HAProxy package creates no directory for it and SELinux lets HAProxy create its socket "
                f"only under {socket_dir}; set haproxy.stats_socket: {socket_dir}/stats in the inventory"
            )
        packages = host.family.packages_for("haproxy", 0)
        self.note(f"packages {' '.join(packages)}", host.ensure_packages(packages))
        ports = [haproxy.write_port, haproxy.read_port, haproxy.stats_port]
        opened = host.open_ports(ports)
        if opened is not None:
            self.note(f"firewalld ports {opened or ports}", bool(opened))
        if host.selinux_enforcing():
            self.note(f"SELinux boolean {HAPROXY_BOOLEAN}", host.ensure_selinux_boolean(HAPROXY_BOOLEAN))
            labels = {haproxy.write_port: "postgresql_port_t", haproxy.read_port: "postgresql_port_t",
                      haproxy.stats_port: "http_port_t"}
            changed = host.ensure_port_labels(labels)
            self.note(f"SELinux port labels {changed or sorted(labels.items())}", bool(changed))
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

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

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
        pruned = host.replace_file(haproxy.config, staged)
        self.changed(f"{haproxy.config} installed (validated with haproxy -c; previous kept 0600 as .pgha-bak-*, "
                     f"the newest {KEEP_BACKUPS})")
        if pruned:
            self.changed(f"older backups removed: {', '.join(pruned)}")
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
            PatroniHook(self.patroni_api_urls(), tls=self.client_tls()).cluster()
        )
        if routing.problems:
            raise AirflowException("HAProxy does not route like Patroni: " + "; ".join(routing.problems))
        address = inv.host(inv.haproxy.host).address
        recovery = {}
        for port, expected in ((inv.haproxy.write_port, False), (inv.haproxy.read_port, True)):
            hook = NodePostgresHook(inv.postgres.app_conn_id, host=address, port=port, database=inv.postgres.database,
                                    tls_files=self.tls_files())
            recovery[port] = hook.scalar("SELECT pg_is_in_recovery()")
            if recovery[port] is not expected:
                raise AirflowException(f"HAProxy :{port}: pg_is_in_recovery() = {recovery[port]}, expected {expected}")
        self.log.info("through HAProxy: :%d -> leader, :%d -> replica", inv.haproxy.write_port, inv.haproxy.read_port)
        return {**routing.as_dict(), "pg_is_in_recovery": recovery}
