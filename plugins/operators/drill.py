"""The failover drill (issue 5): precheck, write probe, fault, heal, verdict.

Every step after the precheck works from the precheck's plan (XCom) and
keeps its own record on the probe host (hooks/drill.py), so a retried task
never injects a fault twice and the drill survives Airflow's own metadata DB
failing over under it. The waits in between (new leader, client writes,
routing, the cluster whole again) are sensors (sensors/drill.py and the
Patroni and HAProxy sensors), not loops in these operators.
"""

from __future__ import annotations

import json
import shlex
import time
from contextlib import AbstractContextManager
from functools import partial
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, NoReturn

from airflow.sdk import Asset
from pgha.compat import AirflowException, AirflowFailException, AirflowSkipException
from pgha.drill import (
    ATTEMPTED,
    CONFIRMED,
    DRILL_DAG_ID,
    LEADER_MOVES,
    MIGRATION_DAG_ID,
    ROTATION,
    analyse,
    enabled_scenarios,
    fault_state,
    parse_probe_log,
    promotion_time,
    rto_slo_s,
    scenario_of_the_day,
    summary,
    xcom_result,
)
from pgha.hooks.drill import drill_database, probe_tls, python_beside_unit, python_with_driver
from pgha.hooks.etcd import EtcdHook
from pgha.hooks.haproxy import (
    HAProxyHook,
    SwitchoverRefused,
    refuse_switchover_to_servers_set_aside,
    switchover_routed,
)
from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.hooks.pgbouncer import held_back
from pgha.hooks.postgres import NodePostgresHook, load_sql, node_endpoint
from pgha.hooks.remote import RemoteHook
from pgha.inventory import DRILL_SCENARIOS, INCLUDE_DIR
from pgha.notify import AlertNotSent, alert_skip
from pgha import pgdata, tls
from pgha.pgdata import Endpoint
from pgha.runtime import DrillPlanMixin, cluster_ca, credentials
import psycopg2
from psycopg2 import sql

from pgha.operators.base import PghaOperator

PATRONI_UNIT = "patroni.service"
PROBE_SCRIPT = INCLUDE_DIR / "drill" / "probe.py"
PROBE_WARMUP_ACKS = 20  # about a second of steady commits before the fault
# The precheck just saw a healthy cluster: a probe short of its warm-up acks by then cannot write (login,
# driver), which is a failure to report, not a wait.
PROBE_WARMUP_TIMEOUT_S = 15
PROBE_MAX_SECONDS = 4 * 3600  # the probe stops itself even if stop_probe never runs (the DAG run timed out)
HISTORY_DAYS = 30  # probe rows kept; pgha_drill_history is kept forever
# A fault shows within seconds: Patroni answers a switchover once the new leader took over, systemctl stop
# returns once the unit stopped, a SIGKILLed process is gone, a crashed or cut-off host stops answering.
CONFIRM_TIMEOUT_S = 30
CONFIRM_POLL_S = 0.5


class DrillOperator(DrillPlanMixin, PghaOperator):
    """
    A drill step after the precheck.

    :param plan: the precheck's result (templated, from XCom). None (precheck
        skipped or failed): the step skips.
    """

    template_fields = (*PghaOperator.template_fields, "plan")
    ui_color = "#f6dbe9"

    def __init__(self, *, plan: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def patroni(self) -> PatroniHook:
        return PatroniHook(self.patroni_api_urls(), tls=self.client_tls(), conn_id=self.inventory.patroni.rest_conn_id)

    def haproxy(self) -> HAProxyHook:
        return HAProxyHook(self.remote(self.inventory.haproxy.host), self.inventory.haproxy.stats_socket)

    def api_url(self, name: str) -> str:
        return f"{self.scheme}://{self.inventory.host(name).address}:{self.inventory.patroni.rest_port}"

    def injector(self) -> RemoteHook:
        """The fault injector's RemoteHook (``drill.fault_injector``)."""
        inv = self.inventory
        injector = inv.drill.fault_injector
        if injector is None:
            raise AirflowFailException("drill.fault_injector is not set in the inventory")
        if injector.name not in self._remotes:
            self._remotes[injector.name] = RemoteHook(
                ssh_conn_id=injector.ssh_conn_id, host_name=injector.name,
                allow_unverified_host_keys=inv.ssh.allow_unverified_host_keys, command_timeout=300,
            )
        return self._remotes[injector.name]

    def fault_command(self, scenario: str, step: str, node: str) -> str:
        """``drill.inject_commands.<scenario>.<step>`` with {node} and {address} filled in (quoted)."""
        template = getattr(self.inventory.drill.inject_commands[scenario], step)
        return template.format(node=shlex.quote(node), address=shlex.quote(self.inventory.host(node).address))


class DrillPrecheckOperator(PghaOperator):
    """
    Plans a drill, or skips with the reason: it never degrades a degraded
    cluster, nor one a migration (pg_ha_migration, queued or running) works
    on. Needs exactly one leader, every other member streaming within
    ``max_lag_bytes``, a synchronous standby, Patroni not paused, a healthy
    etcd, and HAProxy routing as Patroni says. Configuration mistakes (a
    scenario without its fault commands, an unknown target) fail instead.
    The ``scenario`` Param ``rotation`` (a scheduled run) drills the
    scenario of the logical date's day among those the inventory enables.
    Returns the plan every later step works from.
    """

    ui_color = "#f6e3db"

    def run(self, context: Any) -> Any:
        params = context.get("params") or {}
        self._no_migration_running(context)
        scenario = self._scenario(params.get("scenario") or ROTATION, context)
        wanted = params.get("target") or "leader"
        self._check_config(scenario)
        reasons, cluster = self._cluster_reasons(params.get("max_lag_bytes"))
        if cluster is None or reasons:
            self._skip(context, "cluster not healthy, not drilling: " + "; ".join(reasons))
        leader = cluster.leaders[0]
        target = self._target(cluster, scenario, wanted)
        probe_host = self.inventory.drill.probe_host or self.inventory.haproxy.host
        if probe_host in {leader, target}:
            self._skip(context, f"the probe host {probe_host} is the leader or the target; "
                                "set drill.probe_host to a host the fault does not touch")
        plan = {
            "drill_id": f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{scenario}-{target}",
            "scenario": scenario,
            "target": target,
            "leader": leader,
            "candidate": cluster.sync_standbys[0] if scenario == "switchover" else None,
            "leader_must_change": scenario in LEADER_MOVES and target == leader,
            "must_leave": leader if scenario in LEADER_MOVES and target == leader else None,
            "probe_host": probe_host,
            "probe_python": self._probe_python(probe_host),
            "rto_slo_s": rto_slo_s(self.inventory, scenario, params.get("rto_slo_s")),
            # a crash of a host leading etcd too costs an etcd election plus a full ttl (heal keeps them apart)
            "etcd_leader": EtcdHook(self.etcd_endpoints(), tls=self.client_tls(),
                                    auth_conn_id=self.etcd_auth_conn_id()).report().leader_name,
        }
        self.log.info("drill plan: %s", json.dumps(plan))
        return plan

    def _no_migration_running(self, context: Any) -> None:
        if "ti" not in context:  # called outside a task run (a test of the precheck alone)
            return
        runs = context["ti"].get_dr_count(dag_id=MIGRATION_DAG_ID, states=["queued", "running"])
        if runs:
            self._skip(context, f"{MIGRATION_DAG_ID} has {runs} queued or running run(s): a drill never "
                                "starts while the migration works on the cluster")

    def _scenario(self, wanted: str, context: Any) -> str:
        """The Param's scenario, or the rotation's for this run's logical date (a scheduled run)."""
        if wanted != ROTATION:
            return wanted
        enabled = enabled_scenarios(self.inventory.drill)
        dag_run = context.get("dag_run")
        when = context.get("logical_date") or getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
        scenario = scenario_of_the_day(enabled, when)
        self.log.info("rotation: %s drills %s (enabled: %s)", when.date(), scenario, ", ".join(enabled))
        return scenario

    def _skip(self, context: Any, reason: str) -> NoReturn:
        """Skips, after telling the inventory's notify: section why (a drill that never runs is news).
        An alert that cannot be sent fails the task instead: a silent skip would hide both."""
        try:
            alert_skip(context, self.inventory, reason)
        except AlertNotSent as exc:
            raise AirflowFailException(f"{reason}\n(failed instead of skipping: the alert was not sent: {exc})")
        raise AirflowSkipException(reason)

    def _check_config(self, scenario: str) -> None:
        drill = self.inventory.drill
        if scenario not in DRILL_SCENARIOS:
            raise AirflowFailException(f"unknown scenario {scenario!r}; one of {list(DRILL_SCENARIOS)}")
        if scenario in {"host_crash", "host_isolate"} and (
            scenario not in drill.inject_commands or drill.fault_injector is None
        ):
            raise AirflowFailException(
                f"scenario {scenario} needs drill.inject_commands.{scenario} (inject/heal commands with "
                "{node}) and drill.fault_injector (the SSH connection they run on) in the inventory"
            )
        credentials(self.inventory.postgres.superuser_conn_id, "cluster superuser (drill tables)")
        credentials(drill.probe_conn_id or self.inventory.postgres.app_conn_id, "the drill probe's login")
        if scenario == "switchover":
            credentials(self.inventory.patroni.rest_conn_id, "Patroni REST API (POST /switchover)")

    def _cluster_reasons(self, max_lag_override: int | None) -> tuple[list[str], PatroniCluster | None]:
        inv = self.inventory
        try:
            cluster = PatroniHook(self.patroni_api_urls(), tls=self.client_tls()).cluster()
        except AirflowException as exc:
            return [str(exc)], None
        reasons = ["Patroni is paused (maintenance mode)"] if cluster.paused else []
        lag = max_lag_override if max_lag_override is not None else inv.drill.max_lag_bytes
        reasons += cluster.problems(len(inv.database_nodes) - 1, require_sync=True, max_lag_bytes=lag)
        reasons += cluster.not_serving(list(inv.database_nodes))
        etcd = EtcdHook(self.etcd_endpoints(), tls=self.client_tls(), auth_conn_id=self.etcd_auth_conn_id())
        reasons += [f"etcd: {p}" for p in etcd.report().problems(list(inv.database_nodes))]
        reasons += self._certificate_reasons()
        if len(cluster.leaders) == 1:
            routing = HAProxyHook(self.remote(inv.haproxy.host), inv.haproxy.stats_socket).routing(cluster)
            reasons += [f"HAProxy: {p}" for p in routing.problems]
        return reasons, cluster

    def _certificate_reasons(self) -> list[str]:
        """The cluster CA or a node's certificate expired, foreign or missing (phase 3 renews them)."""
        inv = self.inventory
        if not inv.tls.enabled:
            return []
        ca = cluster_ca(inv.tls.ca_conn_id)
        return [f"TLS: {p}" for p in tls.certificate_problems(
            inv, ca.cert_pem, lambda host, path: self.host_hook(host).read_file(path), warn_days=1)]

    def _target(self, cluster: PatroniCluster, scenario: str, wanted: str) -> str:
        leader = cluster.leaders[0]
        if wanted == "leader":
            return leader
        if wanted not in self.inventory.database_nodes or cluster.member(wanted) is None:
            raise AirflowFailException(f"target {wanted!r} is not a member of the cluster "
                                       f"({[m['name'] for m in cluster.members]})")
        if scenario == "switchover" and wanted != leader:
            raise AirflowFailException(f"a switchover moves the leader away: target must be 'leader' or {leader}, "
                                       f"not the replica {wanted}")
        return wanted

    def _probe_python(self, host: str) -> str:
        """An interpreter on ``host`` with psycopg2 (or psycopg 3) for the probe."""
        remote, configured = self.remote(host), self.inventory.drill.probe_python
        python = python_with_driver(remote, [configured] if configured else ["/usr/bin/python3"])
        if python is None and not configured and host in {a.host for a in self.inventory.airflow_hosts}:
            beside_airflow = python_beside_unit(remote, self.inventory.airflow_host(host).units[0])
            python = python_with_driver(remote, [beside_airflow]) if beside_airflow else None
        if python is None:
            raise AirflowFailException(
                f"[{host}] no Python with psycopg2 for the probe: install python3-psycopg2 or set drill.probe_python"
            )
        return python


class StartProbeOperator(DrillOperator):
    """
    Creates the drill tables (``postgres`` database) and starts the write
    probe (include/drill/probe.py) as a transient systemd unit on the probe
    host; returns once it has committed steadily through HAProxy. Its login
    comes from ``drill.probe_conn_id`` (default: Airflow's own) into a 0600
    settings file, never onto a command line.
    """

    def run(self, context: Any) -> Any:
        plan, inv = self.the_plan(), self.inventory
        login = credentials(inv.drill.probe_conn_id or inv.postgres.app_conn_id, "the drill probe's login")
        self._ensure_tables(login.login)
        probe = self.probe()
        probe.remote.add_secret(login.password)
        local = plan["probe_host"] == inv.haproxy.host
        settings = {
            "host": "127.0.0.1" if local else inv.host(inv.haproxy.host).address,
            "port": inv.haproxy.write_port, "user": login.login, "password": login.password, "dbname": "postgres",
            "drill_id": plan["drill_id"], "interval_ms": inv.drill.probe_interval_ms, "ack_file": probe.ack_file,
            "max_seconds": PROBE_MAX_SECONDS, **probe_tls(inv, local),
        }
        self.note(f"probe files in {probe.directory}", probe.install(PROBE_SCRIPT.read_text(), settings))
        self.note(f"probe unit {probe.unit} started", probe.start(plan["probe_python"]))
        try:
            acks = probe.wait_for_acks(PROBE_WARMUP_ACKS, timeout=PROBE_WARMUP_TIMEOUT_S)
        finally:  # the running probe has read them; a retry writes them again
            self.note("probe settings (its password) removed", probe.remove_settings())
        return {"unit": probe.unit, "host": plan["probe_host"], "acks": acks}

    def _ensure_tables(self, probe_login: str) -> None:
        grant = sql.SQL("GRANT SELECT, INSERT ON public.pgha_drill_probe TO {}").format(sql.Identifier(probe_login))
        drill_database(self.inventory, self.tls_files()).execute_autocommit(load_sql("drill_tables.sql"), grant)


class Seen(Enum):
    """What the cluster shows of a fault."""

    YES = "took effect"
    NO = "not in effect"
    UNCLEAR = "cannot tell"


class InjectFaultOperator(DrillOperator):
    """
    Injects the plan's fault, once, and confirms it took effect. The attempt
    is recorded on the probe host before the fault (``state: attempted``) and
    confirmed once the cluster shows it (``state: confirmed``): a retry after
    a confirmed fault does nothing; a retry after an unconfirmed attempt looks
    at the cluster first and confirms the earlier attempt, injects again (the
    fault is not in effect), or fails with what it saw.

    switchover: POST /switchover to a synchronous standby, confirmed when
    another node leads; patroni_stop: ``systemctl stop patroni`` on the
    target, confirmed when the unit is inactive; postmaster_kill: SIGKILL to
    the pid in <data_dir>/postmaster.pid (the postmaster itself: killing
    Patroni alone leaves it running and accepting writes), confirmed when that
    postmaster is gone; host_crash / host_isolate: ``drill.inject_commands``
    on the fault injector, confirmed when the target's Patroni REST API no
    longer answers.
    """

    def run(self, context: Any) -> Any:
        plan, probe = self.the_plan(), self.probe()
        record = probe.fault_record()
        state = fault_state(record)
        if state == CONFIRMED:
            self.unchanged(f"fault already injected and confirmed at {record.get('t_confirmed', record['t_inject'])} "
                           "(never twice per drill)")
            return record
        if state == ATTEMPTED:
            seen, what = self._observe(plan, record)
            self.log.info("attempt %s of this fault was never confirmed (%s); the cluster shows: %s",
                          record.get("attempt", 1), "; ".join(record.get("errors", [])) or "no error recorded", what)
            if seen is Seen.YES:
                return self._confirm(probe, record, what, f"attempt {record.get('attempt', 1)} took effect")
            if seen is Seen.UNCLEAR:
                raise AirflowException(f"an earlier attempt of {plan['scenario']} on {plan['target']} was never "
                                       f"confirmed and the cluster does not show whether it took effect: {what}; "
                                       "not injecting again (the retry looks again)")
            self.log.info("the earlier attempt is not in effect: injecting again")
        self._check_leader(plan)
        prepared = self._prepare(plan)
        attempt = {"scenario": plan["scenario"], "target": plan["target"], "state": ATTEMPTED,
                   "attempt": (record or {}).get("attempt", 0) + 1, "errors": (record or {}).get("errors", []),
                   "t_inject": time.time(), **prepared}
        probe.record_fault(attempt)
        try:
            attempt["detail"] = self._injections()[plan["scenario"]](plan, attempt)
            attempt["t_injected"] = time.time()
            evidence = self._await_effect(plan, attempt)
        except Exception as exc:
            self._record_error(probe, attempt, exc)
            raise
        return self._confirm(probe, attempt, evidence, f"{plan['scenario']} injected on {plan['target']}: "
                                                       f"{attempt['detail']}")

    def _check_leader(self, plan: dict[str, Any]) -> None:
        leader = self.patroni().leader()
        if leader != plan["leader"]:
            raise AirflowFailException(f"the leader moved since the precheck ({plan['leader']} -> {leader}): "
                                       "not injecting; trigger a new drill")

    def _confirm(self, probe: Any, record: dict[str, Any], evidence: str, change: str) -> dict[str, Any]:
        record.update(state=CONFIRMED, t_confirmed=time.time(), evidence=evidence)
        probe.record_fault(record)
        self.changed(f"{change}; confirmed: {evidence}")
        return record

    def _record_error(self, probe: Any, record: dict[str, Any], exc: Exception) -> None:
        """The failed attempt stays recorded (unconfirmed) with its error, for the retry and the audit."""
        record["errors"] = [*record["errors"], f"attempt {record['attempt']}: {exc}"]
        try:
            probe.record_fault(record)
        except Exception as write_error:  # the attempt itself is already on record; keep the original error
            self.log.warning("could not add the error to the fault record: %s", write_error)

    def _await_effect(self, plan: dict[str, Any], record: dict[str, Any]) -> str:
        """What shows the fault took effect; AirflowException (retried) if it does not show in time."""
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while True:
            seen, what = self._observe(plan, record)
            if seen is Seen.YES:
                return what
            if time.monotonic() >= deadline:
                raise AirflowException(f"{plan['scenario']} on {plan['target']} was not seen to take effect within "
                                       f"{CONFIRM_TIMEOUT_S}s: {what}; the retry looks at the cluster before "
                                       "injecting again")
            time.sleep(CONFIRM_POLL_S)

    # ------------------------------------------------------------ per scenario: prepare, inject, observe

    def _prepare(self, plan: dict[str, Any]) -> dict[str, Any]:
        """What the injection and its observation need, read before the attempt is recorded (reads only); a
        switchover through the pause is refused here, not counted as a failed attempt, when HAProxy could not
        route it."""
        if plan["scenario"] == "switchover" and self.inventory.pgbouncer.enabled:
            refuse_switchover_to_servers_set_aside(self.haproxy(), plan["leader"], plan["candidate"])
        return self._postmaster(plan["target"]) if plan["scenario"] == "postmaster_kill" else {}

    def _injections(self) -> dict[str, Callable[[dict[str, Any], dict[str, Any]], str]]:
        return {
            "switchover": self._switchover,
            "patroni_stop": self._patroni_stop,
            "postmaster_kill": self._postmaster_kill,
            "host_crash": self._host_fault,
            "host_isolate": self._host_fault,
        }

    def _observe(self, plan: dict[str, Any], record: dict[str, Any]) -> tuple[Seen, str]:
        """Whether the cluster shows the fault, and what was seen."""
        scenario, target = plan["scenario"], plan["target"]
        if scenario == "switchover":
            leader = self.patroni().leader()
            if leader is None:
                return Seen.UNCLEAR, "Patroni has no single leader (a switchover may be under way)"
            return (Seen.NO if leader == plan["leader"] else Seen.YES), f"{leader} leads (was {plan['leader']})"
        if scenario == "patroni_stop":
            active = self.host_hook(target).unit_active(PATRONI_UNIT)
            return (Seen.NO if active else Seen.YES), f"{PATRONI_UNIT} {'active' if active else 'inactive'} on {target}"
        if scenario == "postmaster_kill":
            if "pid" not in record:
                return Seen.UNCLEAR, "the attempt recorded no postmaster pid"
            alive = self.remote(target).run(_postmaster_alive(record["data_dir"], record["pid"]), check=False,
                                            quiet=True).ok
            return (Seen.NO if alive else Seen.YES), f"postmaster {record['pid']} on {target} " + (
                "still runs" if alive else "is gone")
        status = self.patroni().status_code(self.api_url(target), "/health")
        if status is None:
            return Seen.YES, f"the Patroni REST API on {target} does not answer"
        return Seen.NO, f"the Patroni REST API on {target} answers (HTTP {status})"

    def _switchover(self, plan: dict[str, Any], record: dict[str, Any]) -> str:
        """With pgbouncer.enabled, under a PAUSE of Airflow's PgBouncers until HAProxy sends writes to the new
        leader: Airflow's transactions wait instead of failing (the drill's probe, direct to HAProxy, still
        measures the cluster's own gap)."""
        inv = self.inventory
        if not inv.pgbouncer.enabled:
            response = self.patroni().switchover(plan["leader"], plan["candidate"])
            if response.status_code >= 400:
                raise AirflowException(f"POST /switchover {plan['leader']} -> {plan['candidate']} refused: "
                                       f"HTTP {response.status_code} {response.text.strip()}")
            return f"POST /switchover -> {plan['candidate']}: HTTP {response.status_code} {response.text.strip()}"
        haproxy, patroni = self.haproxy(), self.patroni()  # HAProxy's refusal in _prepare made its SSH login
        patroni.ready_to_switch_over(plan["leader"])
        server = self.verified(node_endpoint(inv.postgres.superuser_conn_id, host=inv.host(inv.haproxy.host).address,
                                             port=inv.haproxy.write_port, database=inv.postgres.database))
        with self._airflow_held_back(server):
            started = time.monotonic()
            try:
                new, answer = switchover_routed(patroni, haproxy, plan["leader"], plan["candidate"],
                                                CONFIRM_TIMEOUT_S, partial(pgdata.takes_writes, server))
            except (SwitchoverRefused, TimeoutError) as exc:
                raise AirflowException(str(exc)) from exc
            self.log.info("HAProxy sends writes to %s %.2fs after the switchover began", new,
                          time.monotonic() - started)
        response = answer.result()
        self.log.info("POST /switchover answered in %.2fs", time.monotonic() - started)
        return (f"POST /switchover -> {plan['candidate']}: HTTP {response.status_code} {response.text.strip()}; "
                f"Airflow's PgBouncers paused until HAProxy sent writes to {new}")

    def _airflow_held_back(self, server: Endpoint) -> AbstractContextManager[float]:
        """PAUSE on every Airflow host's PgBouncer for the block (RESUME however it ends; a PAUSE that times
        out fails the attempt before anything is injected, naming what held it). ``server``: HAProxy's write
        port, as the superuser."""
        inv = self.inventory
        # the old leader's shutdown checkpoint, inside the pause, then has little left to write
        started = time.monotonic()
        with pgdata.session(server) as conn:
            pgdata.execute(conn, pgdata.statement("checkpoint.sql"))
        self.log.info("CHECKPOINT on the leader before the pause: %.2fs", time.monotonic() - started)
        return held_back(self.pgbouncer_consoles(inv.pgbouncer.port, server), inv.postgres.database,
                         inv.pgbouncer.pause_timeout, self.log)

    def _patroni_stop(self, plan: dict[str, Any], record: dict[str, Any]) -> str:
        self.host_hook(plan["target"]).stop(PATRONI_UNIT)
        return f"systemctl stop {PATRONI_UNIT}"

    def _postmaster(self, node: str) -> dict[str, Any]:
        """The target's data directory and the pid its postmaster.pid names. Asked through HAProxy's write
        port when the target leads (the way in the superuser has from every host pgha manages), else of the
        target itself."""
        inv = self.inventory
        address = inv.host(node).address
        [(data_dir, server)] = drill_database(inv, self.tls_files()).rows(
            "SELECT current_setting('data_directory'), host(inet_server_addr())")
        if server != address:  # the target does not lead
            data_dir = NodePostgresHook(inv.postgres.superuser_conn_id, host=address, port=inv.postgres.port,
                                        database="postgres", tls_files=self.tls_files()).scalar("SHOW data_directory")
        pid = self.remote(node).run(f"head -n1 {shlex.quote(f'{data_dir}/postmaster.pid')}", quiet=True).stdout.strip()
        if not pid.isdigit():
            raise AirflowException(f"[{node}] {data_dir}/postmaster.pid names no pid ({pid!r})")
        return {"data_dir": data_dir, "pid": int(pid)}

    def _postmaster_kill(self, plan: dict[str, Any], record: dict[str, Any]) -> str:
        self.remote(plan["target"]).run(f"kill -KILL {int(record['pid'])}")
        return f"SIGKILL to postmaster {record['pid']} ({record['data_dir']})"

    def _host_fault(self, plan: dict[str, Any], record: dict[str, Any]) -> str:
        command = self.fault_command(plan["scenario"], "inject", plan["target"])
        result = self.injector().run(command, timeout=120)
        return f"{command} (exit {result.exit_code})"


def _postmaster_alive(data_dir: str, pid: int) -> str:
    """Exits 0 while the postmaster ``pid`` still runs (postmaster.pid names it, and it is no zombie)."""
    pid_file = shlex.quote(f"{data_dir}/postmaster.pid")
    return f"test \"$(head -n1 {pid_file} 2>/dev/null)\" = {int(pid)} && grep -qv ') Z ' /proc/{int(pid)}/stat"


class HealOperator(DrillOperator):
    """
    Teardown-style (runs whatever happened before): brings the target back
    and returns; the ``cluster_whole`` sensor after it waits until the cluster
    is whole again (pg_rewind is Patroni's job, ``use_pg_rewind``).
    patroni_stop: starts Patroni on the target unless its REST API answers;
    host_crash / host_isolate: the ``heal`` command of
    ``drill.inject_commands`` unless the target answers; switchover and
    postmaster_kill: nothing, Patroni brings the target back by itself.
    Heals after an unconfirmed attempt too (it may have taken effect); skips
    if no fault was attempted.
    """

    def run(self, context: Any) -> Any:
        plan = self.the_plan()
        if self.probe().fault_record() is None:
            raise AirflowSkipException("no fault was injected for this drill: nothing to heal")
        scenario, target = plan["scenario"], plan["target"]
        if scenario in {"switchover", "postmaster_kill"}:
            self.unchanged(f"{scenario}: Patroni brings {target} back by itself")
        elif self.patroni().status_code(self.api_url(target), "/health") is not None:
            self.unchanged(f"Patroni on {target} answers again")
        elif scenario == "patroni_stop":
            self.host_hook(target).start(PATRONI_UNIT)
            self.changed(f"{PATRONI_UNIT} started on {target}")
        else:
            self._heal_host(scenario, target)
        return {"scenario": scenario, "target": target}

    def _heal_host(self, scenario: str, target: str) -> None:
        command = self.fault_command(scenario, "heal", target)
        result = self.injector().run(command, check=False, timeout=300)
        if not result.ok:  # e.g. already started by an earlier try; cluster_whole decides
            self.log.warning("heal command exited %d; cluster_whole waits for %s anyway", result.exit_code, target)
        self.changed(f"{command} (exit {result.exit_code})")


class StopProbeOperator(DrillOperator):
    """Stops the write probe (trigger_rule all_done) and deletes its settings (its password; an earlier
    drill's too); its acknowledgments stay on the probe host."""

    def run(self, context: Any) -> Any:
        probe = self.probe()
        try:
            self.note(f"probe {probe.unit} stopped", probe.stop())
        finally:
            self.note("probe settings (its password) removed", probe.remove_settings())
        return {"unit": probe.unit, "ack_file": probe.ack_file}


class AnalyseDrillOperator(DrillOperator):
    """
    The verdict: RTO (longest gap between acknowledged commits), RPO
    (acknowledged seqs missing from pgha_drill_probe), time to the new
    leader (Patroni's promotion record), to HAProxy routing to it (its first
    acknowledged commit) and until the target streamed again. Stored in
    ``pgha_drill_history`` (``postgres`` database), pushed to XCom, printed
    on one screen. Fails when an SLO is broken, a write is missing or a step
    did not complete.

    :param steps: XComs of the steps between the precheck and stop_probe
        (templated); None marks a step that did not complete. ``new_leader``
        (a name) and ``cluster_whole`` (``back_at``) feed the timeline.
    """

    template_fields = (*DrillOperator.template_fields, "steps")

    def __init__(self, *, steps: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = steps or {}

    def run(self, context: Any) -> Any:
        plan, inv = self.the_plan(), self.inventory
        probe = self.probe()
        self.note("probe settings (its password) removed", probe.remove_settings())  # stop_probe may have failed
        fault = probe.fault_record()
        steps = {name: xcom_result(value) for name, value in self.steps.items()}
        if fault is None:
            raise AirflowFailException("the drill was planned but no fault was injected: nothing to measure "
                                       f"(incomplete: {[n for n, v in steps.items() if v is None]})")
        if fault_state(fault) != CONFIRMED:
            raise AirflowFailException(f"the fault was attempted {fault.get('attempt', 1)} time(s) but never seen to "
                                       f"take effect ({'; '.join(fault.get('errors', [])) or 'no error recorded'}): "
                                       "nothing to measure")
        patroni = self.patroni()
        new_leader = steps.get("new_leader") or patroni.leader()
        result = analyse(
            plan=plan, injection=fault, probe=parse_probe_log(probe.read_acks()),
            present=self._present_seqs(plan["drill_id"]), new_leader=new_leader,
            new_leader_address=inv.host(new_leader).address if new_leader else None,
            promoted_at=promotion_time(patroni.history(), new_leader, float(fault["t_inject"])) if new_leader else None,
            old_leader_streaming_at=(steps.get("cluster_whole") or {}).get("back_at"),
            incomplete=[name for name, value in steps.items() if value is None],
        )
        self._record(result.as_dict(), context)
        screen = summary(result, plan["probe_host"], inv.drill.probe_interval_ms)
        if "ti" in context:
            context["ti"].xcom_push(key="drill", value=result.as_dict())
        self._result_to_outlets(result.as_dict(), context)
        if not result.passed:  # a verdict, not an accident: no retry; the failure alert carries the figures
            raise AirflowFailException(f"drill {result.drill_id} failed: {'; '.join(result.problems)}\n{screen}")
        self.log.info("\n%s", screen)
        return result.as_dict()

    def _result_to_outlets(self, result: dict[str, Any], context: Any) -> None:
        """The result as the extra of this task's asset events (Airflow emits them only when the task
        succeeds: a failed drill is in pgha_drill_history and the failed run, not in an event)."""
        extra = {**json.loads(json.dumps(result, default=str)), "cluster": self.inventory.cluster.name,
                 "dag_run_id": context.get("run_id")}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra

    def _present_seqs(self, drill_id: str) -> set[int]:
        """The probe's rows in the table. No connection through HAProxy fails this try; Airflow's retry is
        the wait (cluster_whole already waited for one, so this only happens when the drill went wrong)."""
        try:
            rows = drill_database(self.inventory, self.tls_files()).rows("SELECT seq FROM public.pgha_drill_probe WHERE drill_id = %s",
                                                       (drill_id,))
        except psycopg2.OperationalError as exc:
            raise AirflowException(f"the cluster takes no connection through HAProxy: {str(exc).strip()}; "
                                   "the drill cannot be judged yet (retried)") from exc
        return {row[0] for row in rows}

    def _record(self, result: dict[str, Any], context: Any) -> None:
        row = {**result, "dag_run_id": context.get("run_id"), "details": json.dumps(result, default=str)}
        prune = sql.SQL("DELETE FROM public.pgha_drill_probe WHERE committed_at < now() - {}::interval").format(
            sql.Literal(f"{HISTORY_DAYS} days"))
        hook = drill_database(self.inventory, self.tls_files())
        hook.execute_autocommit(load_sql("drill_tables.sql"))
        hook.execute_autocommit(load_sql("drill_record.sql"), parameters=row)
        hook.execute_autocommit(prune)
        self.changed(f"pgha_drill_history row {result['drill_id']} ({'PASS' if result['passed'] else 'FAIL'})")


class NoDrillRunningOperator(PghaOperator):
    """
    The migration's first task: fails (no retry) while a failover drill runs,
    which breaks the cluster on purpose. The drill's precheck in turn skips
    while a migration is queued or running.
    """

    dry_run_mode = "check"  # it only reads: a dry run runs it as any run does

    def run(self, context: Any) -> Any:
        runs = context["ti"].get_dr_count(dag_id=DRILL_DAG_ID, states=["running"])
        if runs:
            raise AirflowFailException(f"{DRILL_DAG_ID} has {runs} running run(s): a drill breaks the cluster on "
                                       "purpose; clear this task once it has ended")
        self.unchanged(f"no {DRILL_DAG_ID} run is running")
        return None
