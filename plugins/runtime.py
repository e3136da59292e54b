"""What every pgha task needs at run time: the inventory, hosts and secrets.

Operators and sensors mix this in. Nothing here runs at DAG parse time, so a
broken inventory or a missing connection fails a task with a clear message
instead of breaking the DAG.
"""

from __future__ import annotations

import inspect
import re
import shlex
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from pgha.compat import AirflowException, AirflowNotFoundException, AirflowSkipException, BaseHook

from pgha.inventory import Host, Inventory, load_inventory
from pgha.osfamily import FAMILIES, OsFamily
from pgha import airflowcfg, tls

if TYPE_CHECKING:  # the hooks are imported where a task first needs one, not with the model
    from pgha.hooks.drill import DrillProbeHook
    from pgha.hooks.host import HostHook
    from pgha.hooks.remote import RemoteHook


# Patroni's pg_rewind login (``postgresql.authentication.rewind``): a role that may only read the files
# pg_rewind needs. Without this connection the cluster superuser rewinds, as before (README, Connections).
REWIND_CONN_ID = "pgha_rewind"


@dataclass(frozen=True)
class Credentials:
    login: str
    password: str


def credentials(conn_id: str, purpose: str) -> Credentials:
    """Login and password of an Airflow connection; the error says what it is for."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise AirflowException(
            f"Airflow connection {conn_id!r} ({purpose}) is missing: create it (login + password) "
            "in Admin > Connections or the secrets backend"
        ) from exc
    if not conn.login or not conn.password:
        raise AirflowException(f"Airflow connection {conn_id!r} ({purpose}) needs both login and password")
    return Credentials(conn.login, conn.password)


def optional_credentials(conn_id: str, purpose: str) -> Credentials | None:
    """``credentials``, or None when the connection does not exist (an incomplete one is still an error)."""
    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return credentials(conn_id, purpose)


def cluster_ca(conn_id: str) -> tls.CertificateAuthority:
    """The cluster CA kept in an Airflow Connection (pgha.tls: certificate in extra, key in password)."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise AirflowException(
            f"Airflow connection {conn_id!r} (the cluster CA, tls.ca_conn_id) is missing: bring your own CA "
            "(certificate PEM in extra 'certificate', private key PEM in password) or make one with "
            "`python -m pgha.tls create-ca --conn-id " + conn_id + "` where the Airflow CLI runs"
        ) from exc
    try:
        return tls.ca_from_connection(conn.extra, conn.password, conn_id)
    except ValueError as exc:
        raise AirflowException(str(exc)) from None


_CLIENT_TLS: dict[str, tls.ClientTLS] = {}


def cluster_tls_files(inventory: Inventory) -> tls.TlsFiles | None:
    """The cluster CA, pgha's client certificate and its key as files of this process, for libpq's
    sslrootcert, sslcert and sslkey (None: tls.enabled is false)."""
    return client_tls(inventory.tls.ca_conn_id).files() if inventory.tls.enabled else None


def client_tls(conn_id: str) -> tls.ClientTLS:
    """pgha's own client credentials for this process: the CA to trust and a one-day client certificate."""
    if conn_id not in _CLIENT_TLS or tls.days_left(_CLIENT_TLS[conn_id].cert_pem) < 0.5:
        _CLIENT_TLS[conn_id] = tls.ClientTLS.for_ca(cluster_ca(conn_id))
    return _CLIENT_TLS[conn_id]


def verified_on_host(endpoint: Any) -> Any:
    """A verified ``endpoint`` as a managed host's libpq reaches it: with the CA file phase 3 installed there."""
    return replace(endpoint, sslrootcert=tls.CA_FILE) if endpoint.sslrootcert else endpoint


class RepointedConfig(NamedTuple):
    current: str  # the host's airflow.cfg as it is
    live_url: str  # its [database] sql_alchemy_conn ("postgresql://" when it has none)
    new: str  # the same text pointing at the new address (``current`` when it already does)


def repoint_airflow_config(remote: RemoteHook, inventory: Inventory, host: str, address: str, port: int,
                           verify_ca: str | None = None) -> RepointedConfig:
    """
    Airflow host ``host``'s airflow.cfg (``airflow.hosts[].config``, read through ``remote``; a missing
    file is refused) and the same text with ``[database] sql_alchemy_conn`` (and Celery's
    ``result_backend``) pointing at ``address:port`` as the app login (``postgres.app_conn_id``, its
    password made a secret of ``remote``), keeping the live URL's scheme (driver). ``verify_ca``: see
    ``airflowcfg.database_url``. Nothing is written.
    """
    config = inventory.airflow_host(host).config
    current = remote.read_file(config)
    if current is None:
        raise AirflowException(f"[{host}] {config} does not exist (airflow.hosts[].config)")
    app = credentials(inventory.postgres.app_conn_id, f"login of {inventory.postgres.owner}")
    remote.add_secret(app.password)
    live_url = airflowcfg.get_option(current, "database", "sql_alchemy_conn") or "postgresql://"
    url = airflowcfg.database_url(app.login, app.password, address, port, inventory.postgres.database,
                                  scheme=live_url.split("://")[0], verify_ca=verify_ca)
    return RepointedConfig(current, live_url, airflowcfg.repoint(current, url, "db+" + url))


def arming_task(context: Any) -> dict[str, Any] | None:
    """The task instance an agent waits for (``airflow tasks state`` on its host) before it changes
    anything; None outside a DAG run (the agent starts at once)."""
    dag, task, run_id = context.get("dag"), context.get("task"), context.get("run_id")
    if not (dag and task and run_id):
        return None
    armed: dict[str, Any] = {"dag_id": dag.dag_id, "task_id": task.task_id, "run_id": run_id}
    map_index = getattr(context.get("ti"), "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        armed["map_index"] = map_index
    return armed


def airflow_executable(remote: RemoteHook, unit: str) -> str:
    """The airflow executable an Airflow unit runs (from the unit's ExecStart)."""
    shown = remote.run(f"systemctl show -P ExecStart {shlex.quote(unit)}").stdout
    match = re.search(r"path=(\S+)", shown)
    if not match:
        raise AirflowException(
            f"[{remote.host_name}] cannot find the airflow executable in {unit}'s ExecStart: {shown.strip()!r}"
        )
    return match.group(1)


def agent_airflow_settings(remote: RemoteHook, inventory: Inventory, host: str, staged: str,
                           backup_dir: str) -> dict[str, Any]:
    """What an agent (``pgha.cutover``) needs of ``host``'s Airflow: units, config, the staged config it
    installs, the config's owner, the airflow executable and the units' python (which imports pgha)."""
    airflow_host = inventory.airflow_host(host)
    owner = remote.run(f"stat -c %U {shlex.quote(airflow_host.config)}", quiet=True).stdout.strip()
    airflow_bin = airflow_executable(remote, airflow_host.units[0])
    return {
        "units": list(airflow_host.units),
        "config": airflow_host.config,
        "staged": staged,
        "backup_dir": backup_dir,
        "airflow_user": owner,
        "airflow_bin": airflow_bin,
        "python": airflow_bin.rsplit("/", 1)[0] + "/python",
    }


class InventoryMixin:
    """
    Gives a task ``self.inventory``, ``self.remote(host)`` (SSH), ``self.host_hook(host)``
    (packages, units, files... of that host) and ``self.os_family(host)``; each hook is
    created on first use and the OS family detected once per host.
    """

    inventory_path: str | None
    phase: str | None = None
    # What the task does in a run with the ``dry_run`` param (README "Dry run"): "skip" (the default, so a
    # new task never acts in a dry run), "plan" (it runs with every host in dry-run mode: reads happen,
    # changes are logged as what would happen) or "check" (it only reads; it runs as in any run, its hosts
    # in dry-run mode all the same).
    dry_run_mode: str = "skip"
    in_dry_run: bool = False

    def skip_unless_selected(self, context: Any) -> None:
        """Skip this task when the run's ``phases`` param leaves its phase out, or when the run is a
        dry run and the task has nothing to plan (``dry_run_mode``); in a dry run the hosts it reaches
        are only read."""
        params = context.get("params") or {}
        selected = params.get("phases")
        if self.phase and selected is not None and self.phase not in selected:
            raise AirflowSkipException(f"phase {self.phase!r} is not selected in this run's 'phases' param")
        self.in_dry_run = bool(params.get("dry_run"))
        if self.in_dry_run and self.dry_run_mode == "skip":
            what = (inspect.getdoc(type(self)) or type(self).__name__).split("\n\n")[0]
            raise AirflowSkipException(f"dry run: not run (a dry run changes nothing and waits for nothing); "
                                       f"this task would: {' '.join(what.split())}")

    @cached_property
    def inventory(self) -> Inventory:
        return load_inventory(self.inventory_path)

    @cached_property
    def _remotes(self) -> dict[str, RemoteHook]:
        return {}

    @cached_property
    def _host_hooks(self) -> dict[str, HostHook]:
        return {}

    def remote(self, host: str | Host) -> RemoteHook:
        """A RemoteHook for an inventory host, created on first use; in a dry run, one that only reads
        (``pgha.hooks.dryrun.DryRunRemote``)."""
        name = host if isinstance(host, str) else host.name
        if name not in self._remotes:
            connection = self.connect_remote(name)
            if self.in_dry_run:
                from pgha.hooks.dryrun import DryRunRemote

                connection = DryRunRemote(connection)
            self._remotes[name] = connection
        return self._remotes[name]

    def connect_remote(self, name: str) -> RemoteHook:
        """The SSH RemoteHook of inventory host ``name`` (tests stand a fake host here)."""
        from pgha.hooks.remote import RemoteHook

        entry = self.inventory.host(name)
        return RemoteHook(
            ssh_conn_id=entry.ssh_conn_id,
            host_name=name,
            allow_unverified_host_keys=self.inventory.ssh.allow_unverified_host_keys,
            command_timeout=self.inventory.ssh.command_timeout,
        )

    def dry_run_plan(self) -> list[str]:
        """What this task would have changed on each host it reached (a dry run's plan), one line each."""
        return [f"[{name}] {line}" for name, remote in self._remotes.items()
                for line in getattr(remote, "plan_lines", lambda: [])()]

    def host_hook(self, host: str | Host) -> HostHook:
        """The HostHook of an inventory host (over ``self.remote(host)``), created on first use."""
        from pgha.hooks.host import HostHook

        name = host if isinstance(host, str) else host.name
        if name not in self._host_hooks:
            pinned = self.inventory.host(name).os_family
            self._host_hooks[name] = HostHook(self.remote(name), FAMILIES[pinned] if pinned else None)
        return self._host_hooks[name]

    def os_family(self, host: str) -> OsFamily:
        """The host's OS family: the inventory's ``os_family``, else detected (once) from /etc/os-release."""
        return self.host_hook(host).family

    def pgbouncer_consoles(self, port: int, server: Any = None) -> dict[str, Any]:
        """Host -> PgBouncerAdminHook of every Airflow host's PgBouncer on ``port``; ``server``: where
        blocking transactions are read (pg_stat_activity)."""
        from pgha.hooks.pgbouncer import PgBouncerAdminHook

        return {a.host: PgBouncerAdminHook.on_host(self.remote(a.host), self.os_family(a.host).pgbouncer, port, server)
                for a in self.inventory.airflow_hosts}

    def close_remotes(self) -> None:
        for remote in self._remotes.values():
            remote.close()

    def kill_remote_work(self) -> list[str]:
        """Stop the killable commands this task started on any host and did not see end."""
        outcomes = []
        for remote in self._remotes.values():
            if remote.running:
                outcomes += remote.kill_running()
        return outcomes

    @property
    def scheme(self) -> str:
        return "https" if self.inventory.tls.enabled else "http"

    def patroni_api_urls(self) -> list[str]:
        port = self.inventory.patroni.rest_port
        return [f"{self.scheme}://{h.address}:{port}" for h in self.inventory.db_hosts]

    def etcd_endpoints(self) -> list[str]:
        port = self.inventory.etcd.client_port
        return [f"{self.scheme}://{h.address}:{port}" for h in self.inventory.db_hosts]

    def etcd_auth_conn_id(self) -> str | None:
        """The Connection of the etcd user pgha's own etcd calls log in as (None: etcd RBAC is off)."""
        return self.inventory.etcd.auth.pgha_conn_id if self.inventory.etcd_auth_enabled else None

    def tls_conn_id(self) -> str | None:
        """The CA Connection pgha's clients trust (None: tls.enabled is false)."""
        return self.inventory.tls.ca_conn_id if self.inventory.tls.enabled else None

    def client_tls(self) -> tls.ClientTLS | None:
        """What pgha's own etcd, Patroni and PostgreSQL clients verify with and present (None without TLS)."""
        conn_id = self.tls_conn_id()
        return client_tls(conn_id) if conn_id else None

    def verified(self, endpoint: Any) -> Any:
        """``endpoint`` (a cluster member or HAProxy) as this process's libpq must reach it: with TLS on, the
        server's certificate verified against the cluster CA and its name against the address
        (sslmode=verify-full), so a man in the middle gets no superuser password; and pgha's client
        certificate presented, which the superuser's rules ask of a host that is no member."""
        files = self.tls_files()
        if files is None:
            return endpoint
        return replace(endpoint, sslmode="verify-full", sslrootcert=files.ca, sslcert=files.cert, sslkey=files.key)

    def tls_files(self) -> tls.TlsFiles | None:
        """The cluster CA, pgha's client certificate and key as files of this process (None without TLS)."""
        return cluster_tls_files(self.inventory)


class DrillPlanMixin:
    """Gives a drill task (operator or sensor) the precheck's plan and the probe host's records.

    Mixed in after InventoryMixin; the task stores ``plan`` (templated from the precheck's XCom).
    """

    plan: Any

    def the_plan(self) -> dict[str, Any]:
        from pgha.drill import xcom_result

        plan = xcom_result(self.plan)
        if not plan:
            raise AirflowSkipException("no drill was planned (the precheck skipped or failed): nothing to do")
        return plan

    def probe(self) -> DrillProbeHook:
        from pgha.hooks.drill import DrillProbeHook

        plan = self.the_plan()
        return DrillProbeHook(self.remote(plan["probe_host"]), self.inventory.drill.state_dir,  # type: ignore[attr-defined]
                              plan["drill_id"])
