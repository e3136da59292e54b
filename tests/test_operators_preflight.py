"""The first tasks of the migration: the inventory and its connections, and the host lists mapped tasks
expand over. They read the inventory and the connections only: the fake hosts show no host is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.inventory import InventoryError
from pgha.operators.host import InventoryHostsOperator, ValidateInventoryOperator
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, Fleet, fleet_inventory

CONNECTIONS = ["ssh_lb", "ssh_psg1", "ssh_psg2", "ssh_psg3", "pgha_source_db", "pgha_pg_superuser",
               "pgha_pg_replication", "pgha_airflow_db", "pgha_patroni_api"]


def connections(monkeypatch: pytest.MonkeyPatch, *conn_ids: str) -> None:
    for conn_id in conn_ids:
        set_connection(monkeypatch, conn_id, conn_type="generic", login="someone", password="secret")


def validate(inventory: str) -> dict:
    return ValidateInventoryOperator(task_id="validate_inventory", inventory_path=inventory).execute({})


@pytest.mark.parametrize("os", [DEBIAN_12, ROCKY_9])
def test_validate_inventory_lists_the_hosts_and_touches_none(fleet: Fleet, tmp_path: Path, os: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    connections(monkeypatch, *CONNECTIONS)
    first = validate(inventory)
    assert first["result"] == {"hosts": ["vm1", "psg1", "psg2", "psg3"], "database_nodes": ["psg1", "psg2", "psg3"]}
    again = validate(inventory)
    assert not first["changed"] and not again["changed"] and again["result"] == first["result"]
    assert all(host.commands == [] for host in fleet.hosts.values())


def test_validate_inventory_names_every_missing_connection_and_its_purpose(fleet: Fleet, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    connections(monkeypatch, *(c for c in CONNECTIONS if c not in {"ssh_psg2", "pgha_pg_replication"}))
    with pytest.raises(AirflowException) as failed:
        validate(inventory)
    assert str(failed.value) == ("missing Airflow connections: ssh_psg2 (SSH to psg2), "
                                 "pgha_pg_replication (replication user)")
    assert all(host.commands == [] for host in fleet.hosts.values())


def test_validate_inventory_names_the_broken_field(fleet: Fleet, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, haproxy={"host": "vm9"})
    connections(monkeypatch, *CONNECTIONS)
    with pytest.raises(InventoryError, match=r"haproxy.host: 'vm9' is not a host in 'hosts'"):
        validate(inventory)


def add_airflow_web_host(raw: dict) -> None:
    raw["hosts"].append({"name": "web1", "address": "127.0.0.44", "ssh_conn_id": "ssh_web1"})
    raw["airflow"]["hosts"].append({"host": "web1", "config": "/etc/airflow/airflow.cfg",
                                    "units": ["airflow-api-server"]})


def test_inventory_hosts_follow_the_inventory(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9, edit=add_airflow_web_host)
    hosts = {role: InventoryHostsOperator(task_id=role, role=role, inventory_path=inventory).execute({})
             for role in InventoryHostsOperator.ROLES}
    assert hosts == {"database": ["psg1", "psg2", "psg3"], "managed": ["vm1", "psg1", "psg2", "psg3", "web1"],
                     "airflow": ["vm1", "web1"]}
    assert all(host.commands == [] for host in fleet.hosts.values())


def test_inventory_hosts_with_a_missing_inventory_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yml"
    with pytest.raises(Exception, match=str(missing)):
        InventoryHostsOperator(task_id="database", role="database", inventory_path=str(missing)).execute({})
