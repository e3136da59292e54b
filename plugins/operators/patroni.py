"""Phases 4, 5 and 9b: Patroni install, configuration, start, and the switchover test."""

from __future__ import annotations

import shlex
from typing import Any

from pgha.compat import AirflowException, AirflowSkipException
from pgha import pgdata
from pgha.hooks.patroni import PatroniHook
from pgha.hooks.postgres import node_endpoint
from pgha.render import node_context, patroni_bin, render
from pgha.runtime import REWIND_CONN_ID, credentials, optional_credentials

from pgha.operators.base import HostOperator, PghaOperator

PATRONI_DIR = "/etc/patroni"
PATRONI_YML = f"{PATRONI_DIR}/patroni.yml"
PATRONI_UNIT = "patroni.service"


class InstallPatroniOperator(HostOperator):
    """Installs Patroni into its own virtualenv (never a system-wide pip), or its OS package."""

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        install = self.inventory.patroni.install
        host = self.host_hook(self.host)
        binary = patroni_bin(self.inventory)
        if install.method == "package":
            packages = host.family.packages_for("patroni", 0)
            self.note(f"packages {' '.join(packages)}",
                      host.ensure_packages(packages, repo=host.family.repo_for("patroni")))
        else:
            packages = list(host.family.python_packages)
            self.note(f"packages {' '.join(packages)}", host.ensure_packages(packages))
            current = host.version(f"{shlex.quote(binary)} --version", check=False)
            if current == f"patroni {install.version}":
                self.unchanged(f"{current} in {install.venv}")
            else:
                venv = install.venv or "/opt/patroni"
                host.ensure_venv(venv, host.family.python)
                host.pip_install(venv, f"patroni[etcd3,psycopg2-binary]=={install.version}")
                self.changed(f"patroni {install.version} into {venv} (was {current or 'absent'})")
        version = host.version(f"{shlex.quote(binary)} --version") or ""
        if install.version and not version.endswith(f" {install.version}"):
            raise AirflowException(
                f"[{self.host}] version mismatch: expected patroni {install.version}, {binary} says {version!r}"
            )
        return {"version": version}


class ConfigurePatroniOperator(HostOperator):
    """
    Writes patroni.yml (credentials from Connections, 0600) and the unit,
    validates the config with Patroni itself on the node, and reloads a
    running Patroni when its config changed. pg_rewind logs in as its own
    role (connection ``pgha_rewind``; without it, as the superuser): Patroni
    creates that role when it bootstraps the cluster; on a cluster that runs
    already, this task creates it on the leader (password as a SCRAM
    verifier) before any node's config names it.
    """

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        inv = self.inventory
        host = self.host_hook(self.host)
        ctx = node_context(inv, inv.host(self.host), host.family)
        ctx["secrets"] = self._secrets()
        self.remote(self.host).add_secret(*(v for k, v in ctx["secrets"].items() if k.endswith("password")))
        self._rewind_role(ctx["secrets"])
        self.note(f"directory {ctx['data_dir']}",
                  host.ensure_directory(ctx["data_dir"], owner="postgres", group="postgres", mode="0700"))
        self.note(f"directory {PATRONI_DIR}",
                  host.ensure_directory(PATRONI_DIR, owner="root", group="postgres", mode="0750"))
        config = host.put_file(PATRONI_YML, render("patroni.yml.j2", **ctx), owner="postgres", mode="0600",
                               secret=True)
        self.note(PATRONI_YML, config.changed)
        if inv.patroni.synchronous_mode != "quorum":  # 4.1.x's validator wrongly rejects quorum
            host.run_as("postgres", [patroni_bin(inv), "--validate-config", "--ignore-listen-port", PATRONI_YML])
        self.note(f"unit {PATRONI_UNIT}", host.install_unit(PATRONI_UNIT, render("patroni.service.j2", **ctx)))
        if config.changed and host.unit_active(PATRONI_UNIT):
            host.reload(PATRONI_UNIT)
            self.changed("running Patroni reloaded its configuration")
        return {"config_changed": config.changed}

    def _secrets(self) -> dict[str, str]:
        inv = self.inventory
        superuser = credentials(inv.postgres.superuser_conn_id, "cluster superuser")
        replication = credentials(inv.postgres.replication_conn_id, "replication user")
        rest = credentials(inv.patroni.rest_conn_id, "Patroni REST API")
        rewind = optional_credentials(REWIND_CONN_ID, "pg_rewind login")
        if rewind is None:
            self.log.warning("no Airflow connection %r: pg_rewind logs in as the cluster superuser (create it, "
                             "login + password, to give pg_rewind a role of its own)", REWIND_CONN_ID)
            rewind = superuser
        return {
            "superuser": superuser.login,
            "superuser_password": superuser.password,
            "replication_user": replication.login,
            "replication_password": replication.password,
            "rewind_user": rewind.login,
            "rewind_password": rewind.password,
            "rest_user": rest.login,
            "rest_password": rest.password,
            **self._etcd_secrets(),
        }

    def _etcd_secrets(self) -> dict[str, str]:
        """Patroni's etcd user (read-write on its own keys only) when etcd RBAC is on."""
        if not self.inventory.etcd_auth_enabled:
            return {}
        etcd = credentials(self.inventory.etcd.auth.patroni_conn_id, "Patroni's etcd user")
        return {"etcd_user": etcd.login, "etcd_password": etcd.password}

    def _rewind_role(self, secrets: dict[str, str]) -> None:
        """The rewind role on a running cluster's leader (a new cluster's bootstrap makes it itself)."""
        user = secrets["rewind_user"]
        if user == secrets["superuser"]:
            self.unchanged(f"pg_rewind logs in as the superuser {user}")
            return
        inv = self.inventory
        try:
            leader = PatroniHook(self.patroni_api_urls(), tls=self.client_tls(), conn_id=inv.patroni.rest_conn_id).leader()
        except Exception as exc:  # no Patroni answers yet: the cluster is bootstrapped later, with the role
            self.unchanged(f"rewind role {user}: no running cluster ({str(exc).strip()[:200]}); Patroni's "
                           "bootstrap creates it")
            return
        if not leader:
            raise AirflowException(f"the Patroni cluster has no single leader to create the rewind role {user} "
                                   "on; clear this task once it has one")
        if self.planning:  # a dry run logs in to no database
            self.changed(f"rewind role {user} on the leader {leader}: created or its password set if it differs "
                         "(not checked: a dry run does not log in to the database)")
            return
        admin = self.verified(node_endpoint(inv.postgres.superuser_conn_id, host=inv.host(leader).address,
                                            port=inv.postgres.port, database="postgres"))
        with pgdata.session(admin) as conn:
            created = pgdata.ensure_login_role(conn, user, secrets["rewind_password"])
            pgdata.execute(conn, pgdata.statement("rewind_role_grants.sql", role=pgdata.ident(user)))
        self.note(f"rewind role {user} on the leader {leader}", created)
        self.unchanged(f"password of {user} set from connection {REWIND_CONN_ID}; it may run only the file "
                       "functions pg_rewind calls")


class StartPatroniOperator(HostOperator):
    """Enables and starts Patroni on one node (bootstraps or joins the cluster)."""

    dry_run_mode = "plan"  # a dry run plans it: reads for real, logs the changes it would make

    def run(self, context: Any) -> Any:
        host = self.host_hook(self.host)
        self.note(f"{PATRONI_UNIT} enabled", host.enable(PATRONI_UNIT))
        started = host.ensure_started(PATRONI_UNIT)
        self.note(f"{PATRONI_UNIT} started", started)
        return {"was_running": not started}


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
        hook = PatroniHook(self.patroni_api_urls(), tls=self.client_tls(), conn_id=self.inventory.patroni.rest_conn_id)
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
    Phase 9b: requests a planned switchover (POST /switchover) from a healthy
    cluster's leader to its synchronous standby and returns both names
    (``old_leader``, ``new_leader``). It does not wait: a PatroniLeaderSensor
    with ``not_leader`` = the old leader judges the result by the cluster's
    new leader (never by an exit code: runbook correction C11).
    """

    def run(self, context: Any) -> Any:
        if not context["params"].get("run_failover_test", True):
            raise AirflowSkipException("run_failover_test is off for this run")
        hook = PatroniHook(self.patroni_api_urls(), tls=self.client_tls(), conn_id=self.inventory.patroni.rest_conn_id)
        cluster = hook.cluster()
        problems = cluster.problems(len(self.inventory.database_nodes) - 1, require_sync=True)
        if problems:
            raise AirflowException("cluster not healthy before the switchover: " + "; ".join(problems))
        old, candidate = cluster.leaders[0], cluster.sync_standbys[0]
        response = hook.switchover(old, candidate)
        answer = response.text.strip()
        self.log.info("POST /switchover %s -> %s: HTTP %s %s", old, candidate, response.status_code, answer)
        if response.status_code >= 400:
            raise AirflowException(f"Patroni refused the switchover {old} -> {candidate}: "
                                   f"HTTP {response.status_code} {answer}")
        self.changed(f"switchover {old} -> {candidate} requested (HTTP {response.status_code} {answer})")
        return {"old_leader": old, "new_leader": candidate}
