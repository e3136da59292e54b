"""Inventory validation: the shipped file is valid; malformed ones are rejected by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
from pgha.inventory import InventoryError, PgBouncer, load_inventory, parse_inventory
from pgha_testing import shipped_inventory


def test_shipped_inventory_reproduces_the_runbook_topology() -> None:
    inv = load_inventory()
    assert inv.database_nodes == ("psg1", "psg2", "psg3")
    assert inv.haproxy.host == "vm1" and inv.haproxy.write_port == 5433 and inv.haproxy.read_port == 5434
    assert inv.source.host == "vm1"
    assert [h.name for h in inv.hosts] == ["vm1", "psg1", "psg2", "psg3"]
    assert inv.airflow_hosts[0].units == (
        "airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer",
    )
    assert inv.patroni.loop_wait + 2 * inv.patroni.retry_timeout <= inv.patroni.ttl
    assert inv.postgres.major >= inv.source.major
    assert inv.patroni.install.method == "pip" and inv.patroni.install.venv == "/opt/patroni"


def _mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw = copy.deepcopy(shipped_inventory())
    fn(raw)
    return raw


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing hosts", lambda r: r.pop("hosts"), "hosts: is required"),
    ("host without address", lambda r: r["hosts"][1].pop("address"), "hosts[1].address: is required"),
    ("bad host name", lambda r: r["hosts"][0].update(name="VM_1"), "hosts[0].name"),
    ("duplicate host", lambda r: r["hosts"].append(dict(r["hosts"][1], address="10.9.9.9")),
     "hosts[4].name: duplicate host name 'psg1'"),
    ("duplicate address", lambda r: r["hosts"][2].update(address=r["hosts"][1]["address"]), "hosts[2].address"),
    ("unknown database node", lambda r: r["database_nodes"].__setitem__(2, "psg9"),
     "database_nodes[2]: 'psg9' is not a host"),
    ("two database nodes", lambda r: r.update(database_nodes=["psg1", "psg2"]), "database_nodes"),
    ("even number of nodes", lambda r: (r["hosts"].append({"name": "psg4", "address": "10.9.9.4", "ssh_conn_id": "s"}),
                                        r["database_nodes"].append("psg4")), "database_nodes: etcd needs an odd"),
    ("port out of range", lambda r: r["postgres"].update(port=70000), "postgres.port"),
    ("port as string", lambda r: r["haproxy"].update(write_port="5433"), "haproxy.write_port"),
    ("clashing ports", lambda r: r["haproxy"].update(read_port=5433), "haproxy.read_port: port 5433 is already used"),
    ("tarball without sha256", lambda r: r["etcd"].update(install={"method": "tarball", "version": "3.5.9",
                                                                    "url": "https://example.org/etcd.tgz"}),
     "etcd.install.sha256: is required"),
    ("unknown install method", lambda r: r["etcd"].update(install={"method": "curl-bash"}), "etcd.install.method"),
    ("patroni timing rule", lambda r: r["patroni"].update(retry_timeout=30), "patroni.retry_timeout"),
    ("ttl under 20", lambda r: r["patroni"].update(ttl=10), "patroni.ttl"),
    ("typo in a section", lambda r: r["haproxy"].update(wirte_port=1), "haproxy: unknown field(s)"),
    ("target older than source", lambda r: r["source"].update(major=16), "postgres.major: target 15 is older"),
    ("removed parameter", lambda r: r["postgres"]["parameters"].update(wal_keep_segments=100),
     "postgres.parameters.wal_keep_segments"),
    ("haproxy host unknown", lambda r: r["haproxy"].update(host="lb9"), "haproxy.host: 'lb9' is not a host"),
    ("relative airflow config", lambda r: r["airflow"]["hosts"][0].update(config="airflow.cfg"),
     "airflow.hosts[0].config"),
    ("proxy not a URL", lambda r: r["packages"].update(apt_proxy="proxy:3142"), "packages.apt_proxy"),
    ("synchronous_mode typo", lambda r: r["patroni"].update(synchronous_mode="yes"), "patroni.synchronous_mode"),
    ("IPv6 address", lambda r: r["hosts"][0].update(address="fe80::1"),
     "hosts[0].address: 'fe80::1' is not an IPv4 address"),
    ("host name as address", lambda r: r["hosts"][0].update(address="vm1.example"),
     "hosts[0].address: 'vm1.example' is not an IP address"),
    ("address with leading zeros", lambda r: r["hosts"][0].update(address="192.168.083.129"), "hosts[0].address"),
    ("proxy with credentials", lambda r: r["packages"].update(apt_proxy="http://user:pw@proxy:3142"),
     "packages.apt_proxy: 'http://user:pw@proxy:3142' is a URL with credentials"),
    ("ftp index", lambda r: r["packages"].update(pip_index_url="ftp://mirror/simple"),
     "packages.pip_index_url: 'ftp://mirror/simple' is not an http:// or https:// URL"),
    ("URL without host", lambda r: r["packages"].update(pip_find_links="http:///wheels"), "is not a URL with a host"),
    ("URL port out of range", lambda r: r["packages"].update(apt_proxy="http://proxy:99999"), "packages.apt_proxy"),
    ("path climbing out", lambda r: r["airflow"]["hosts"][0].update(config="/etc/../root/airflow.cfg"),
     "airflow.hosts[0].config: '/etc/../root/airflow.cfg' is not an absolute path without '..'"),
    ("path with a space", lambda r: r["patroni"]["install"].update(venv="/opt/my patroni"), "patroni.install.venv"),
    ("network without prefix", lambda r: r["cluster"].update(network="198.51.100.0"), "cluster.network"),
    ("database name with a dash", lambda r: r["postgres"].update(database="airflow-db"), "postgres.database"),
    ("setting name with a space", lambda r: r["postgres"]["parameters"].update({"work mem": "4MB"}),
     "postgres.parameters: 'work mem' is not a PostgreSQL setting name"),
    ("fault command with a pipe", lambda r: r.update(drill={
        "fault_injector": {"ssh_conn_id": "f"},
        "inject_commands": {"host_crash": {"inject": "crash {node} | tee log", "heal": "start {node}"}}}),
     "drill.inject_commands.host_crash.inject"),
    ("unit name starting with a dash", lambda r: r["airflow"]["hosts"][0]["units"].__setitem__(0, "-x"),
     "airflow.hosts[0].units[0]"),
    ("upper-case host name", lambda r: r["hosts"][0].update(name="VM1"), "hosts[0].name: 'VM1' is not a name"),
    ("pgbouncer port out of range", lambda r: r.update(pgbouncer={"enabled": True, "port": 70000}), "pgbouncer.port"),
    ("pgbouncer pause of no time", lambda r: r.update(pgbouncer={"pause_timeout": 0}), "pgbouncer.pause_timeout"),
    ("pgbouncer unknown key", lambda r: r.update(pgbouncer={"enable": True}), "pgbouncer"),
    ("pgbouncer pool of none", lambda r: r.update(pgbouncer={"pool_size": 0}), "pgbouncer.pool_size"),
    ("pgbouncer pools above max_connections",
     lambda r: (r.update(pgbouncer={"pool_size": 60}), r["postgres"].setdefault("parameters", {}).update(
         max_connections=100), r["airflow"]["hosts"].append(dict(r["airflow"]["hosts"][0], host=r["hosts"][1]["name"]))),
     "pgbouncer.pool_size: 60 server connections on each of 2 Airflow host(s) = 120, more than the cluster's "
     "max_connections 100 less 3 superuser_reserved_connections"),
    ("pgbouncer clients below its pool", lambda r: r.update(pgbouncer={"pool_size": 30, "max_client_conn": 10}),
     "pgbouncer.max_client_conn: 10 is below pgbouncer.pool_size 30"),
    ("pgbouncer pools above max_connections less reserved_connections (PostgreSQL 16+)",
     lambda r: (r.update(pgbouncer={"pool_size": 90}), r["postgres"]["parameters"].update(
         max_connections=100, reserved_connections=10)),
     "pgbouncer.pool_size: 90 server connections on each of 1 Airflow host(s) = 90, more than the cluster's "
     "max_connections 100 less 3 superuser_reserved_connections and 10 reserved_connections"),
    ("pgbouncer pools above max_connections given as a string",
     lambda r: (r.update(pgbouncer={"pool_size": 198}), r["postgres"]["parameters"].update(max_connections="200")),
     "= 198, more than the cluster's max_connections 200 less 3"),
    ("pgbouncer pools above max_connections given as a decimal string",
     lambda r: (r.update(pgbouncer={"pool_size": 198}), r["postgres"]["parameters"].update(max_connections="200.0")),
     "= 198, more than the cluster's max_connections 200 less 3"),
    ("pgbouncer pools above superuser_reserved_connections given as a string",
     lambda r: (r.update(pgbouncer={"pool_size": 191}), r["postgres"]["parameters"].update(
         superuser_reserved_connections="10")), "max_connections 200 less 10 superuser_reserved_connections"),
    ("max_connections not a number", lambda r: (r.update(pgbouncer={}), r["postgres"]["parameters"].update(
        max_connections="lots")), "postgres.parameters.max_connections: 'lots' is not a number"),
    ("reserved_connections not a number", lambda r: (r.update(pgbouncer={}), r["postgres"]["parameters"].update(
        reserved_connections=True)), "postgres.parameters.reserved_connections: True is not a number"),
    ("pgbouncer port on HAProxy's write port", lambda r: r.update(pgbouncer={"port": 5433}),
     "pgbouncer.port: port 5433 is already used by haproxy.write_port on vm1"),
    ("pgbouncer port on Patroni's on an Airflow host that is a database node",
     lambda r: (r.update(pgbouncer={"port": 8008}), r["airflow"]["hosts"].append(
         dict(r["airflow"]["hosts"][0], host="psg1"))),
     "pgbouncer.port: port 8008 is already used by patroni.rest_port on psg1"),
]


ACCEPTED: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("https index with port and path", lambda r: r["packages"].update(pip_index_url="https://pypi.example:8443/simple/")),
    ("proxy on an address", lambda r: r["packages"].update(apt_proxy="http://192.0.2.1:3142")),
    ("network with host bits", lambda r: r["cluster"].update(network="198.51.100.5/24")),
    ("custom setting", lambda r: r["postgres"]["parameters"].update({"auto_explain.log_min_duration": "250ms"})),
    ("setting with spaces", lambda r: r["postgres"]["parameters"].update(log_line_prefix="%m [%p] %q%u@%d ")),
    ("templated unit", lambda r: r["airflow"]["hosts"][0]["units"].append("airflow-worker@1.service")),
    ("hook-style conn id", lambda r: r["source"].update(conn_id="pgha.source-db_1")),
    ("Airflow through PgBouncer", lambda r: r.update(pgbouncer={"enabled": True, "port": 6433, "pause_timeout": 2.5})),
    ("PgBouncer pools that fit exactly", lambda r: (r.update(pgbouncer={"pool_size": 97}), r["postgres"].setdefault(
        "parameters", {}).update(max_connections=100))),
    ("PgBouncer pools that fit exactly beside reserved_connections", lambda r: (
        r.update(pgbouncer={"pool_size": 87}), r["postgres"]["parameters"].update(
            max_connections="100.0", reserved_connections="10"))),
    ("PgBouncer port that another host's service uses", lambda r: r.update(pgbouncer={"port": 5432})),
    ("no PgBouncer: max_connections PostgreSQL names", lambda r: r["postgres"]["parameters"].update(
        max_connections="lots")),
    ("no PgBouncer: its default port on HAProxy's", lambda r: r["haproxy"].update(stats_port=6432)),
]


@pytest.mark.parametrize(("case", "mutate"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_ordinary_values_are_accepted(case: str, mutate: Callable[[dict[str, Any]], None]) -> None:
    parse_inventory(_mutate(mutate), "test.yml")


@pytest.mark.parametrize(("case", "mutate", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_inventory_names_the_field(case: str, mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(_mutate(mutate), "test.yml")
    assert expected in str(caught.value), str(caught.value)


def test_not_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("hosts:\n  - {name: vm1, address: [unclosed\n")
    with pytest.raises(InventoryError, match=r"line \d+, column \d+: not valid YAML"):
        load_inventory(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(tmp_path / "nope.yml")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(InventoryError, match="expected a mapping"):
        parse_inventory(["hosts"])


def test_every_problem_is_reported_at_once() -> None:
    raw = _mutate(lambda r: (r["postgres"].update(port=0), r["haproxy"].update(fall=0)))
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw)
    assert len(caught.value.problems) == 2


def test_pgbouncer_is_off_unless_the_inventory_says_airflow_goes_through_it() -> None:
    assert parse_inventory(_mutate(lambda r: None), "test.yml").pgbouncer == PgBouncer(False, 6432, 10, 20, 500)
    on = parse_inventory(_mutate(lambda r: r.update(pgbouncer={"enabled": True})), "test.yml").pgbouncer
    assert (on.enabled, on.port) == (True, 6432)


def _six_airflow_hosts(raw: dict[str, Any]) -> None:
    """Airflow on vm1 and on five more hosts; max_connections left at PostgreSQL's default (100)."""
    raw["postgres"]["parameters"].pop("max_connections")
    for i in range(2, 7):
        raw["hosts"].append({"name": f"vm{i}", "address": f"10.83.0.{200 + i}", "ssh_conn_id": f"ssh_vm{i}"})
        raw["airflow"]["hosts"].append(dict(raw["airflow"]["hosts"][0], host=f"vm{i}"))


def test_the_pools_are_sized_only_when_the_inventory_has_a_pgbouncer_section() -> None:
    without = _mutate(_six_airflow_hosts)
    assert "pgbouncer" not in without
    assert len(parse_inventory(without, "test.yml").airflow_hosts) == 6  # no PgBouncer: no pool to fit
    with pytest.raises(InventoryError) as caught:
        parse_inventory(_mutate(lambda r: (_six_airflow_hosts(r), r.update(pgbouncer={"port": 6432}))), "test.yml")
    assert caught.value.problems == [
        "pgbouncer.pool_size: 20 server connections on each of 6 Airflow host(s) = 120, more than the cluster's "
        "max_connections 100 less 3 superuser_reserved_connections: lower it or raise "
        "postgres.parameters.max_connections"]


def test_every_pool_problem_is_reported_at_once() -> None:
    raw = _mutate(lambda r: (r.update(pgbouncer={"pool_size": 60, "max_client_conn": 10}),
                             r["postgres"]["parameters"].update(max_connections="lots",
                                                                superuser_reserved_connections="3.5.1")))
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw, "test.yml")
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["postgres.parameters.max_connections",
                                                   "postgres.parameters.superuser_reserved_connections",
                                                   "pgbouncer.max_client_conn"], problems
    raw = _mutate(lambda r: (r.update(pgbouncer={"pool_size": 60, "max_client_conn": 10}),
                             r["airflow"]["hosts"].append(dict(r["airflow"]["hosts"][0], host="psg1")),
                             r["postgres"]["parameters"].update(max_connections=100)))
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw, "test.yml")
    assert [p.split(":")[0] for p in caught.value.problems] == ["pgbouncer.pool_size", "pgbouncer.max_client_conn"]
