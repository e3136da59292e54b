"""A loopback stand-in for the lab, for the failover drill's tests and benchmark.

Real services: 3 Patroni + PostgreSQL 15 members on 127.0.0.11-13 (same ports,
like hosts), a 3-member etcd on the same addresses, HAProxy from
include/templates/haproxy.cfg.j2. Each "host" is an sshd whose sessions see
stand-ins for ``systemctl`` (patroni -> services.py patroni-ctl; transient
units -> pid files) and ``systemd-run`` (detached command). A fault injector
is an sshd whose key may only run include/drill/fault_gate.py, which drives
a ``lab/lab``-like script (crash = every process of the member SIGKILLed at
once, start = Patroni started again).

Connections are set through a ``pytest.MonkeyPatch`` (AIRFLOW_CONN_* env vars).
A drill runs the real DAG (dags/pg_ha_failover_drill.py) with ``dag.test()``
against the throw-away metadata DB of this process's AIRFLOW_HOME.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from fixture_secrets import (
    AIRFLOW_DB_PASSWORD,
    PATRONI_REPLICATION_PASSWORD,
    PATRONI_REST_PASSWORD,
    PATRONI_REST_USER,
    PATRONI_SUPERUSER_PASSWORD,
)
from pgha_testing import loopback_inventory, set_connection, ssh_connection, write_inventory
from services import (
    PatroniClusterService,
    SshdService,
    free_port,
    haproxy_command,
    pid_alive,
    start_etcd_cluster,
    start_haproxy,
    start_patroni_cluster,
    start_sshd,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = Path(__file__).resolve().parent / "services.py"
FAULT_GATE = REPO_ROOT / "include" / "drill" / "fault_gate.py"
DRILL_DAG_FILE = REPO_ROOT / "dags" / "pg_ha_failover_drill.py"
NODES = [("pg-a", "127.0.0.11"), ("pg-b", "127.0.0.12"), ("pg-c", "127.0.0.13")]


@dataclass(frozen=True)
class Profile:
    """Failover timings: Patroni's DCS settings and HAProxy's checks."""

    name: str
    ttl: int = 20
    loop_wait: int = 1
    retry_timeout: int = 5
    inter: str = "500ms"
    fall: int = 2
    rise: int = 1
    write_listen_extra: tuple[str, ...] = ()  # extra lines for `listen postgres_write` (template experiments)
    rto_slo_s: dict[str, float] = field(default_factory=lambda: {
        "switchover": 8, "patroni_stop": 10, "postmaster_kill": 12, "host_crash": 30})

    @property
    def dcs(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "loop_wait": self.loop_wait, "retry_timeout": self.retry_timeout,
                "synchronous_mode": True}

    @property
    def inventory_patroni(self) -> dict[str, int]:
        """What the inventory may say (its validator enforces loop_wait + 2 * retry_timeout <= ttl)."""
        retry = min(self.retry_timeout, (self.ttl - self.loop_wait) // 2)
        return {"ttl": self.ttl, "loop_wait": self.loop_wait, "retry_timeout": retry}


SYSTEMCTL_SHIM = """\
#!/bin/bash
# Test stand-in for systemctl: patroni -> services.py patroni-ctl; other units -> pid files.
args=(); for a in "$@"; do case "$a" in --quiet|-q|--no-block) ;; *) args+=("$a");; esac; done
verb=${{args[0]}}; unit=${{args[1]%.service}}
case "$verb" in daemon-reload|enable) exit 0 ;; esac
if [ "$unit" = patroni ] && [ -n "{patroni_base}" ]; then
  exec {python} {services} patroni-ctl "$verb" "{patroni_base}"
fi
pidfile={state}/$unit.pid
alive() {{ [ -f "$pidfile" ] && grep -qv ') Z' "/proc/$(cat "$pidfile")/stat" 2>/dev/null; }}
case "$verb" in
  is-active) alive ;;
  stop) if alive; then pid=$(cat "$pidfile"); kill -TERM "$pid"
          for _ in $(seq 200); do alive || break; sleep 0.05; done; fi; rm -f "$pidfile" ;;
  *) echo "shim: $verb $unit unsupported" >&2; exit 1 ;;
esac
"""

SYSTEMD_RUN_SHIM = """\
#!/bin/bash
# Test stand-in for systemd-run: runs the command detached; its pid file is the "unit".
unit=
while [ $# -gt 0 ]; do
  case "$1" in --unit=*) unit=${{1#--unit=}} ;; -p|--property) shift ;; -*) ;; *) break ;; esac; shift
done
[ -n "$unit" ] || {{ echo "shim: --unit= is required" >&2; exit 1; }}
setsid "$@" </dev/null >>"{state}/$unit.log" 2>&1 &
echo $! > "{state}/$unit.pid"
"""

FAKE_LAB = """\
#!/bin/bash
# Test stand-in for `lab/lab crash|start NODE`: a crash kills every process of the "host" at once.
case "$2" in
{cases}
  *) echo "fake-lab: unknown node $2" >&2; exit 2 ;;
esac
case "$1" in crash|start) exec {python} {services} patroni-ctl "$1" "$base" ;; esac
echo "fake-lab: unknown verb $1" >&2; exit 2
"""


@dataclass
class Lab:
    """What the drill needs of the loopback lab."""

    inventory: str
    cluster: PatroniClusterService
    write_port: int
    stats_socket: str

    def leader(self) -> str:
        return next(m["name"] for m in self.cluster.cluster()["members"] if m["role"] == "leader")

    def routing_settled(self) -> bool:
        """HAProxy's write backend has exactly the leader UP."""
        rows = [line.split(",") for line in haproxy_command(self.stats_socket, "show stat").splitlines()[1:] if line]
        up = [r[1] for r in rows if r[0] == "postgres_write" and r[1] != "BACKEND" and r[17].startswith("UP")]
        return up == [self.leader()]


def host_sshd(workdir: Path, patroni_base: Path | None) -> SshdService:
    """An sshd standing for one host: its sessions see that host's systemctl / systemd-run."""
    shim_dir, state = workdir / "shim", workdir / "state"
    shim_dir.mkdir(parents=True)
    state.mkdir()
    for name, text in (("systemctl", SYSTEMCTL_SHIM), ("systemd-run", SYSTEMD_RUN_SHIM)):
        shim = shim_dir / name
        shim.write_text(text.format(state=state, python=sys.executable, services=SERVICES,
                                    patroni_base=patroni_base or ""))
        shim.chmod(0o755)
    path = f"{shim_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return start_sshd(workdir / "sshd", extra_config=[f"SetEnv PATH={path}"])


def _inventory(workdir: Path, cluster: PatroniClusterService, etcd_client: int, etcd_peer: int,
               profile: Profile) -> dict[str, Any]:
    return loopback_inventory(
        NODES, lb_host="lb",
        postgres={"port": cluster.pg_port},
        etcd={"client_port": etcd_client, "peer_port": etcd_peer},
        patroni={"rest_port": cluster.rest_port, **profile.inventory_patroni},
        haproxy={
            "write_port": free_port(), "read_port": free_port(), "stats_port": free_port(),
            "config": str(workdir / "haproxy.cfg"), "state_file": str(workdir / "server-state"),
            "stats_socket": str(workdir / "admin.sock"), "inter": profile.inter, "fall": profile.fall,
            "rise": profile.rise,
        },
        drill={"probe_python": sys.executable, "state_dir": str(workdir / "drill"), "rto_slo_s": profile.rto_slo_s},
    )


def _connections(mp: pytest.MonkeyPatch, sshds: dict[str, SshdService]) -> None:
    for name, sshd in sshds.items():
        set_connection(mp, f"ssh_{name.replace('-', '_')}", **ssh_connection(sshd))
    set_connection(mp, "pgha_pg_superuser", conn_type="postgres", host="127.0.0.1", login="postgres",
                   password=PATRONI_SUPERUSER_PASSWORD)
    set_connection(mp, "pgha_airflow_db", conn_type="postgres", host="127.0.0.1", login="airflow_user",
                   password=AIRFLOW_DB_PASSWORD)
    set_connection(mp, "pgha_patroni_api", conn_type="http", login=PATRONI_REST_USER, password=PATRONI_REST_PASSWORD)


def _create_app_role(lab: Lab) -> None:
    conn = psycopg2.connect(lab.cluster.member(lab.leader()).dsn, connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE ROLE airflow_user LOGIN PASSWORD %s", (AIRFLOW_DB_PASSWORD,))
    conn.close()


def _haproxy_config(inventory: str, profile: Profile) -> Path:
    from pgha.inventory import load_inventory
    from pgha.render import haproxy_context, render

    inv = load_inventory(inventory)
    text = render("haproxy.cfg.j2", **haproxy_context(inv))
    extra = "".join(f"    {line}\n" for line in profile.write_listen_extra)
    config = Path(inv.haproxy.config)
    config.write_text(text.replace("listen postgres_write\n", "listen postgres_write\n" + extra))
    return config


def _stop_probes(state: Path) -> None:
    for pid_file in state.glob("pgha-drill-probe-*.pid"):
        pid = int(pid_file.read_text().split()[0])
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def loopback_lab(workdir: Path, mp: pytest.MonkeyPatch, profile: Profile | None = None) -> Iterator[Lab]:
    """Start the loopback lab with ``profile``'s timings; stop every service afterwards."""
    from pgha.inventory import load_inventory

    profile = profile or Profile("test")
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_probes, workdir / "lb" / "state")
        etcd = start_etcd_cluster(workdir / "etcd", members=NODES)
        stack.callback(etcd.stop)
        cluster = start_patroni_cluster(
            workdir / "patroni", etcd, NODES, PATRONI_REST_USER, PATRONI_REST_PASSWORD, PATRONI_SUPERUSER_PASSWORD,
            PATRONI_REPLICATION_PASSWORD, dcs=profile.dcs,
            # acknowledged means on the sync standby; pg_rewind needs full page writes
            parameters={"synchronous_commit": "on", "full_page_writes": "on"},
        )
        stack.callback(cluster.stop)
        sshds = {"lb": host_sshd(workdir / "lb", None)}
        sshds.update({m.name: host_sshd(workdir / m.name, m.base_dir) for m in cluster.members})
        for sshd in sshds.values():
            stack.callback(sshd.stop)
        etcd_client, etcd_peer = (int(u.rsplit(":", 1)[1]) for u in (etcd.endpoints[0], etcd.members[0].peer_url))
        inventory = write_inventory(workdir, _inventory(workdir, cluster, etcd_client, etcd_peer, profile))
        _connections(mp, sshds)
        stack.callback(start_haproxy(_haproxy_config(inventory, profile), workdir).stop)
        haproxy = load_inventory(inventory).haproxy
        lab = Lab(inventory, cluster, haproxy.write_port, haproxy.stats_socket)
        _create_app_role(lab)
        wait_until(lab.routing_settled, 30, "HAProxy to route writes to exactly the leader")
        yield lab


@dataclass
class Injector:
    inventory: str  # the lab's inventory plus drill.fault_injector and host_crash commands
    log: Path  # the fault gate's log


@contextlib.contextmanager
def fault_injector(lab: Lab, workdir: Path, mp: pytest.MonkeyPatch) -> Iterator[Injector]:
    """A fault injector reached over ssh whose key may only run include/drill/fault_gate.py."""
    workdir.mkdir(parents=True, exist_ok=True)
    fake_lab = workdir / "fake-lab"
    cases = "\n".join(f"  {m.name}) base={m.base_dir} ;;" for m in lab.cluster.members)
    fake_lab.write_text(FAKE_LAB.format(cases=cases, python=sys.executable, services=SERVICES))
    fake_lab.chmod(0o755)
    config = workdir / "fault-gate.json"
    config.write_text(json.dumps({"nodes": [n for n, _ in NODES], "log": str(workdir / "gate.log"),
                                  "verbs": {"crash": [str(fake_lab), "crash"], "start": [str(fake_lab), "start"]}}))
    sshd = start_sshd(workdir / "sshd", extra_config=[f"ForceCommand {sys.executable} {FAULT_GATE} {config}"])
    set_connection(mp, "pgha_fault_injector", **ssh_connection(sshd))
    raw = yaml.safe_load(Path(lab.inventory).read_text())
    raw["drill"].update(fault_injector={"ssh_conn_id": "pgha_fault_injector", "name": "hypervisor"},
                        inject_commands={"host_crash": {"inject": "crash {node}", "heal": "start {node}"}})
    (workdir / "inv").mkdir()
    try:
        yield Injector(write_inventory(workdir / "inv", raw), workdir / "gate.log")
    finally:
        sshd.stop()


@dataclass
class DrillRun:
    """One run of the drill DAG: its run id, every task's final state and the verdict (analyse's XCom)."""

    run_id: str
    states: dict[str, str | None]
    result: dict[str, Any] | None


@functools.cache
def airflow_metadata_db() -> None:
    """dag.test() needs a metadata DB: the throw-away SQLite one in this process's AIRFLOW_HOME. On
    Airflow 3.0 dag.test() leaves a DAG's assets inactive (a task with outlets then fails), so the DAGs
    are first serialized as the DAG processor would (`airflow dags reserialize`: it activates them)."""
    from airflow.utils.db import initdb

    initdb()
    from pgha_testing import AIRFLOW_RELEASE

    if AIRFLOW_RELEASE < (3, 1):
        import subprocess
        import sys

        subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "reserialize"], check=True,
                       capture_output=True)


def drill_dag() -> Any:
    """The drill DAG freshly parsed from dags/ (the test reuses no task object of an earlier run)."""
    from pgha_testing import DagBag

    bag = DagBag(dag_folder=str(DRILL_DAG_FILE))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["pg_ha_failover_drill"]


def drill_through_dag(inventory: str, scenario: str, target: str = "leader") -> DrillRun:
    """One drill through dags/pg_ha_failover_drill.py with ``dag.test()``: the scheduler's dependency and
    trigger-rule loop in this process, sensors rescheduling, the run's Params set to ``inventory`` (the
    loopback lab's), ``scenario`` and ``target``. Connections come from the AIRFLOW_CONN_* variables."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    airflow_metadata_db()
    dag = drill_dag()
    run = dag.test(run_conf={"inventory_path": inventory, "scenario": scenario, "target": target})
    states = {ti.task_id: (str(ti.state) if ti.state else None) for ti in run.get_task_instances()}
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id, task_ids="analyse",
                                                 key="drill")).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return DrillRun(run.run_id, states, result)


def run_drill(inventory: str, scenario: str, target: str = "leader") -> dict[str, Any]:
    """The verdict of one drill through the DAG; AirflowSkipException when its precheck skipped."""
    from pgha.compat import AirflowSkipException

    drill = drill_through_dag(inventory, scenario, target)
    if drill.states.get("precheck") == "skipped":
        raise AirflowSkipException(f"precheck skipped (see its log): {drill.states}")
    if drill.result is None:
        raise AssertionError(f"drill run {drill.run_id} left no verdict; task states: {drill.states}")
    return drill.result
