"""The command plan of a migration for one OS family, without a host or a network.

Runs the host-changing operators of phases 1-5 and 7 of pg_ha_migration, in the
DAG's order, against recording fakes (tests/recording_host.py) of every
inventory host, all of one OS (``debian12`` or ``rocky9``), and prints every
command each task would send to each host (secrets masked, ``*`` marks a
command that changes the host). The sensors only read the cluster's APIs and
phase 6 works through database connections, so they add no host command.

The fake lives with the tests (it uses pytest's fixtures and its rules are a
test's simulation of a host, not something to deploy), so this tool does too:

    .venv/bin/python tests/command_plan.py --os rocky9 [--inventory X] [--method logical_replication]

docs/rhel-plan.md says what this plan is for: the RHEL family is checked on paper.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

if __name__ == "__main__":  # as a script: a throw-away AIRFLOW_HOME, set before airflow loads
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if "AIRFLOW_HOME" not in os.environ:
        os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="pgha-plan-airflow-home-")
        atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], True)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import yaml  # noqa: E402
from pgha.inventory import INCLUDE_DIR, load_inventory  # noqa: E402
from pgha.runtime import InventoryMixin  # noqa: E402
from recording_host import DEBIAN_12, ROCKY_9, Fleet, Recorded  # noqa: E402

OS_CHOICES = {"debian12": DEBIAN_12, "rocky9": ROCKY_9}
PLAN_PASSWORD = "plan-secret-{conn_id}"  # what the plan's connections hold; masked wherever it is printed


@dataclass
class Step:
    phase: str
    task: str
    host: str
    commands: list[Recorded]


@dataclass
class Plan:
    os: str
    method: str
    steps: list[Step] = field(default_factory=list)
    fleet: Fleet = field(default_factory=Fleet)
    failure: str | None = None  # the task that refused and its reason: the plan stops there, as the DAG would

    def commands(self, host: str | None = None, phase: str | None = None) -> list[str]:
        return [c.command for s in self.steps for c in s.commands
                if (host is None or s.host == host) and (phase is None or s.phase.startswith(phase))]

    def text(self) -> str:
        lines = [f"# pgha command plan: {self.os}, migration_method {self.method}",
                 "# '*' changes the host, ' ' only reads it; secrets are masked as ***"]
        phase = None
        for step in self.steps:
            if step.phase != phase:
                phase = step.phase
                lines += ["", f"## {phase}"]
            lines.append(f"### {step.task} [{step.host}]")
            lines += [f"{'*' if c.mutating else ' '} {c.command}" for c in step.commands]
        if self.failure:
            lines += ["", f"!! the plan stops here: {self.failure}"]
        return "\n".join(lines) + "\n"


def _connections(inventory: Any) -> dict[str, str]:
    """An Airflow connection (environment variable) for every connection id the inventory names."""
    import json

    ids = {inventory.source.conn_id, inventory.postgres.superuser_conn_id, inventory.postgres.replication_conn_id,
           inventory.postgres.app_conn_id, inventory.patroni.rest_conn_id, *(h.ssh_conn_id for h in inventory.hosts)}
    if inventory.etcd_auth_enabled:  # etcd RBAC (on by default with TLS): root's, Patroni's and pgha's etcd users
        auth = inventory.etcd.auth
        ids |= {auth.root_conn_id, auth.patroni_conn_id, auth.pgha_conn_id}
    connections = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(
        {"conn_type": "postgres", "host": "plan.invalid", "port": 5432, "login": f"plan_{conn_id}",
         "password": PLAN_PASSWORD.format(conn_id=conn_id)}) for conn_id in sorted(ids)}
    if inventory.tls.enabled:  # a throw-away cluster CA (TLS is on by default), as the tests' own
        from pgha import tls

        connections[f"AIRFLOW_CONN_{inventory.tls.ca_conn_id.upper()}"] = json.dumps(
            tls.connection_json(tls.make_ca("pgha plan CA")))
    return connections


def migration_plan(inventory_path: str, os_name: str, *, method: str = "dump_restore",
                   fleet: Fleet | None = None) -> Plan:
    """
    Every command phases 1-5 and 7 would send to each host of ``inventory_path``, all hosts being ``os_name``.
    ``fleet``: the fake hosts to run on (a test's prepared ones, or a previous plan's for a second run).
    """
    inventory = load_inventory(inventory_path)
    raw = yaml.safe_load(Path(inventory.path).read_text())
    plan = Plan(os_name, method, fleet=fleet or Fleet())
    plan.fleet.for_inventory(raw, os_name)
    context = {"params": {"migration_method": method}}

    class Stop(Exception):
        pass

    def run(phase: str, task: str, cls: type, **kwargs: Any) -> None:
        plan.fleet.forget()
        try:
            cls(task_id=task, inventory_path=str(inventory.path), **kwargs).execute(context)
        except Exception as exc:
            plan.failure = f"{phase}.{task}: {exc}"
            raise Stop from exc
        finally:
            for name, fake in plan.fleet.hosts.items():
                if fake.commands:
                    plan.steps.append(Step(phase, task, name, list(fake.commands)))

    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, _connections(inventory)))
        stack.enter_context(mock.patch.object(InventoryMixin, "remote", lambda self, host: plan.fleet[
            host if isinstance(host, str) else host.name]))
        with contextlib.suppress(Stop):
            _run_phases(run, inventory)
    return plan


def _run_phases(run: Any, inventory: Any) -> None:
    """The host-changing tasks of phases 1-5 and 7, in the DAG's order (mapped tasks host by host)."""
    from pgha.operators.etcd import ConfigureEtcdOperator, InstallEtcdOperator
    from pgha.operators.haproxy import HAProxySwitchOperator, InstallHAProxyOperator
    from pgha.operators.host import PrepareHostOperator
    from pgha.operators.patroni import ConfigurePatroniOperator, InstallPatroniOperator, StartPatroniOperator
    from pgha.operators.postgres import InstallPostgresOperator

    nodes = list(inventory.database_nodes)
    for host in inventory.managed_host_names:
        run("phase1_prepare_hosts", "prepare_host", PrepareHostOperator, host=host)
    for host in nodes:
        run("phase2_install_postgres", "install_postgres", InstallPostgresOperator, host=host)
    for host in nodes:
        run("phase3_etcd_cluster", "install_etcd", InstallEtcdOperator, host=host)
    for host in nodes:
        run("phase3_etcd_cluster", "configure_etcd", ConfigureEtcdOperator, host=host)
    for host in nodes:
        run("phase4_patroni", "install_patroni", InstallPatroniOperator, host=host)
    for host in nodes:
        run("phase4_patroni", "configure_patroni", ConfigurePatroniOperator, host=host)
    run("phase5_bootstrap", "start_first_node", StartPatroniOperator, host=nodes[0])
    for host in nodes:
        run("phase5_bootstrap", "start_all_nodes", StartPatroniOperator, host=host)
    run("phase7_haproxy", "install_haproxy", InstallHAProxyOperator)
    run("phase7_haproxy", "switch_haproxy", HAProxySwitchOperator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default=str(INCLUDE_DIR / "inventory.yml"))
    parser.add_argument("--os", choices=sorted(OS_CHOICES), required=True)
    parser.add_argument("--method", choices=["dump_restore", "logical_replication"], default="dump_restore")
    options = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # the tasks' own logs (their SUMMARY blocks) are not the plan
        plan = migration_plan(options.inventory, OS_CHOICES[options.os], method=options.method)
    sys.stdout.write(plan.text())
    return 1 if plan.failure else 0


if __name__ == "__main__":
    sys.exit(main())
