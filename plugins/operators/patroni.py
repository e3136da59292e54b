"""Phases 4, 5 and 9b: Patroni install, configuration, start, and the switchover test."""

from __future__ import annotations

import shlex
import time
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowSkipException
from pgha.hooks.patroni import PatroniHook
from pgha.render import node_context, patroni_bin, render
from pgha.runtime import credentials

from pgha.operators.base import HostOperator, PghaOperator

PATRONI_YML = "/etc/patroni/patroni.yml"


class InstallPatroniOperator(HostOperator):
    """Installs Patroni into its own virtualenv (ERRATA 2: never a system-wide pip)."""

    def run(self, context: Any) -> Any:
        install = self.inventory.patroni.install
        family = self.os_family(self.host)
        remote = self.remote(self.host)
        if install.method == "package":
            self.ensure_packages(self.host, family, ["patroni"])
        else:
            self.ensure_packages(self.host, family, list(family.python_packages))
            current = remote.run(f"{patroni_bin(self.inventory)} --version", check=False, quiet=True).stdout.strip()
            if current == f"patroni {install.version}":
                self.unchanged(f"{current} in {install.venv}")
            else:
                venv = shlex.quote(install.venv or "/opt/patroni")
                remote.run(f"test -x {venv}/bin/pip || {family.python} -m venv {venv}")
                remote.run(
                    f"{venv}/bin/pip install -q --disable-pip-version-check "
                    f"'patroni[etcd3,psycopg2-binary]=={install.version}'",
                    timeout=1800,
                )
                self.changed(f"patroni {install.version} into {install.venv} (was {current or 'absent'})")
        version = remote.run(f"{patroni_bin(self.inventory)} --version").stdout.strip()
        if install.version and not version.endswith(install.version):
            raise AirflowException(f"[{self.host}] version mismatch: expected patroni {install.version}, got {version!r}")
        return {"version": version}


class ConfigurePatroniOperator(HostOperator):
    """
    Writes patroni.yml (credentials from Connections, 0600) and the unit,
    validates the config with Patroni itself on the node, and reloads a
    running Patroni when its config changed.
    """

    def run(self, context: Any) -> Any:
        inv = self.inventory
        family = self.os_family(self.host)
        remote = self.remote(self.host)
        ctx = node_context(inv, inv.host(self.host), family)
        ctx["secrets"] = self._secrets()
        remote.add_secret(*(v for k, v in ctx["secrets"].items() if k.endswith("password")))
        remote.run(f"install -d -o postgres -g postgres -m 0700 {shlex.quote(ctx['data_dir'])}")
        remote.run("install -d -o root -g postgres -m 0750 /etc/patroni")
        config = remote.put_file(PATRONI_YML, render("patroni.yml.j2", **ctx), owner="postgres", mode="0600",
                                 secret=True)
        self.note(PATRONI_YML, config.changed)
        if inv.patroni.synchronous_mode != "quorum":  # ERRATA 6: 4.1.x's validator rejects quorum
            remote.run(f"runuser -u postgres -- {patroni_bin(inv)} --validate-config --ignore-listen-port {PATRONI_YML}")
        self.install_unit(self.host, "patroni.service", render("patroni.service.j2", **ctx))
        running = remote.run("systemctl is-active --quiet patroni.service", check=False).ok
        if running and config.changed:
            remote.run("systemctl reload patroni.service")
            self.changed("running Patroni reloaded its configuration")
        return {"config_changed": config.changed}

    def _secrets(self) -> dict[str, str]:
        inv = self.inventory
        superuser = credentials(inv.postgres.superuser_conn_id, "cluster superuser")
        replication = credentials(inv.postgres.replication_conn_id, "replication user")
        rest = credentials(inv.patroni.rest_conn_id, "Patroni REST API")
        return {
            "superuser": superuser.login,
            "superuser_password": superuser.password,
            "replication_user": replication.login,
            "replication_password": replication.password,
            "rest_user": rest.login,
            "rest_password": rest.password,
        }


class StartPatroniOperator(HostOperator):
    """Enables and starts Patroni on one node (bootstraps or joins the cluster)."""

    def run(self, context: Any) -> Any:
        remote = self.remote(self.host)
        active = remote.run("systemctl is-active --quiet patroni.service", check=False).ok
        remote.run("systemctl enable --quiet patroni.service")
        if not active:
            remote.run("systemctl start patroni.service")
        self.note("patroni.service started", not active)
        return {"was_running": active}


def dcs_settings(patroni: Any) -> dict[str, Any]:
    """The inventory's cluster-wide Patroni settings as Patroni's /config spells them."""
    sync = {"true": True, "false": False}.get(str(patroni.synchronous_mode).lower(), patroni.synchronous_mode)
    return {
        "ttl": patroni.ttl, "loop_wait": patroni.loop_wait, "retry_timeout": patroni.retry_timeout,
        "maximum_lag_on_failover": patroni.maximum_lag_on_failover,
        "primary_start_timeout": patroni.primary_start_timeout,
        "synchronous_mode": sync, "synchronous_mode_strict": patroni.synchronous_mode_strict,
    }


class ApplyDcsConfigOperator(PghaOperator):
    """
    Makes the cluster's dynamic configuration (kept in etcd, GET /config)
    match the inventory's failover timings and synchronous mode. patroni.yml's
    ``bootstrap.dcs`` only counts when the cluster is first bootstrapped, so a
    later change of ttl / loop_wait / retry_timeout in the inventory reaches
    a running cluster only through PATCH /config. Patroni applies it on its
    next loop, without a restart. Logs each value that changed, old -> new.
    """

    def run(self, context: Any) -> Any:
        hook = PatroniHook(self.patroni_api_urls(), conn_id=self.inventory.patroni.rest_conn_id)
        wanted, current = dcs_settings(self.inventory.patroni), hook.dynamic_config()
        changes = {key: value for key, value in wanted.items() if current.get(key) != value}
        if changes:
            hook.patch_config(changes)
            self.changed("Patroni DCS config: " + ", ".join(
                f"{key} {current.get(key)!r} -> {value!r}" for key, value in changes.items()))
        else:
            self.unchanged("Patroni DCS config matches the inventory (" + ", ".join(
                f"{key}={value!r}" for key, value in wanted.items()) + ")")
        return {"config": {key: wanted[key] for key in wanted}, "changed_keys": sorted(changes)}


class SwitchoverTestOperator(PghaOperator):
    """
    Phase 9b: a planned switchover through POST /switchover to a synchronous
    standby, judged by the resulting leader (ERRATA 11: never by an exit code).
    Returns the old and new leader and the time the new one took.

    :param wait_timeout: seconds to wait for the new leader.
    """

    def __init__(self, *, wait_timeout: int = 120, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_timeout = wait_timeout

    def run(self, context: Any) -> Any:
        if not context["params"].get("run_failover_test", True):
            raise AirflowSkipException("run_failover_test is off for this run")
        hook = PatroniHook(self.patroni_api_urls(), conn_id=self.inventory.patroni.rest_conn_id)
        cluster = hook.cluster()
        problems = cluster.problems(len(self.inventory.database_nodes) - 1, require_sync=True)
        if problems:
            raise AirflowException("cluster not healthy before the switchover: " + "; ".join(problems))
        old, candidate = cluster.leaders[0], cluster.sync_standbys[0]
        started = time.monotonic()
        response = hook.switchover(old, candidate)
        self.log.info("POST /switchover %s -> %s: HTTP %s %s", old, candidate, response.status_code, response.text.strip())
        deadline = started + self.wait_timeout
        while time.monotonic() < deadline:
            try:
                if hook.leader() == candidate and hook.is_primary(self._api_url(candidate)):
                    break
            except AirflowException:
                pass
            time.sleep(0.5)
        else:
            raise AirflowException(f"switchover {old} -> {candidate}: {candidate} is not leader after {self.wait_timeout}s")
        elapsed = round(time.monotonic() - started, 2)
        self.changed(f"leader moved {old} -> {candidate} in {elapsed}s")
        return {"old_leader": old, "new_leader": candidate, "seconds": elapsed}

    def _api_url(self, name: str) -> str:
        return f"http://{self.inventory.host(name).address}:{self.inventory.patroni.rest_port}"
