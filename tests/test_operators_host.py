"""Preflight and phase 1 operators on a recorded Debian 12 and Rocky 9 host (no SSH, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.operators.host import (
    NEIGHBOUR_SETTINGS,
    NEIGHBOUR_SYSCTL,
    HostPreflightOperator,
    InventoryHostsOperator,
    PrepareHostOperator,
    with_dnf_proxy,
)
from recording_host import DEBIAN_12, ROCKY_9, Fleet, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
CLUSTER_PORTS = [5432, 8008, 2379, 2380]


def prepare(inventory: str, host: str) -> dict:
    return PrepareHostOperator(task_id="prepare_host", host=host, inventory_path=inventory).execute({})


@pytest.mark.parametrize("os", BOTH)
def test_prepare_host_plan_on_a_database_node(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, patroni={"fast_peer_failure": True},
                                packages={"apt_proxy": "http://proxy.example:3142"})
    psg1 = fleet["psg1"]
    first = prepare(inventory, "psg1")
    assert first["changed"] and first["result"] == {"os_family": "debian" if os == DEBIAN_12 else "rhel"}
    assert psg1.hostname == "psg1"
    hosts = psg1.files["/etc/hosts"].content
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and "127.0.0.42 psg2" in hosts.replace("\t", " ")
    # neighbour timings for the interface that carries the node's address, applied now and at boot
    assert "net.ipv4.neigh.eth0.retrans_time_ms = 200" in psg1.files[NEIGHBOUR_SYSCTL].content
    assert psg1.units["pgha-neighbour.service"].enabled and psg1.ran(r"^systemctl restart pgha-neighbour.service$")
    assert psg1.ran(r"^systemctl daemon-reload$") and not psg1.warnings
    if os == ROCKY_9:
        assert psg1.firewalld_ports == set(CLUSTER_PORTS)
        assert psg1.ran(r"^firewall-cmd --reload$")
        assert "proxy=http://proxy.example:3142" in psg1.files["/etc/dnf/dnf.conf"].content.splitlines()
        assert "/etc/apt/apt.conf.d/90pgha-proxy" not in psg1.files
        # PGDG's repository (after the proxy, which it needs) and the module that would shadow it
        assert "pgdg-redhat-repo" in psg1.packages and psg1.ran(r"^dnf -qy module disable postgresql$")
        assert "state=disabled" in psg1.files["/etc/dnf/modules.d/postgresql.module"].content
        assert psg1.ran(r"^getenforce$") and psg1.ran(r"^semanage port -l$")
    else:
        assert not psg1.ran("firewall-cmd|dnf|getenforce|semanage")
        assert "http://proxy.example:3142" in psg1.files["/etc/apt/apt.conf.d/90pgha-proxy"].content
        assert "/etc/dnf/dnf.conf" not in psg1.files


@pytest.mark.parametrize("os", BOTH)
def test_prepare_host_twice_changes_nothing_the_second_time(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, patroni={"fast_peer_failure": True},
                                packages={"apt_proxy": "http://proxy.example:3142",
                                          "pip_index_url": "http://pypi.example/simple"})
    for host in ("psg1", "vm1"):
        prepare(inventory, host)
    assert fleet["psg1"].sysctl["net.ipv4.neigh.eth0.retrans_time_ms"] == str(NEIGHBOUR_SETTINGS["retrans_time_ms"])
    fleet.forget()
    for host in ("psg1", "vm1"):
        again = prepare(inventory, host)
        assert not again["changed"], again
        assert fleet[host].mutations() == []


def test_the_load_balancer_keeps_its_hostname_and_firewall(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9)
    prepare(inventory, "vm1")
    vm1 = fleet["vm1"]
    assert vm1.hostname == "localhost.localdomain" and vm1.firewalld_ports == set()
    assert not vm1.ran("firewall-cmd|hostnamectl")


def test_rocky_without_a_running_firewalld_opens_nothing(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9)
    fleet["psg1"].units["firewalld.service"].active = False
    result = prepare(inventory, "psg1")
    assert "no active firewalld: no ports to open" in result["unchanged"]
    assert not fleet["psg1"].ran("firewall-cmd")


def test_an_address_on_no_single_interface_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, patroni={"fast_peer_failure": True})
    fleet["psg1"].interfaces.clear()
    with pytest.raises(AirflowException, match=r"\[psg1\] no single interface carries 127.0.0.41"):
        prepare(inventory, "psg1")
    assert NEIGHBOUR_SYSCTL not in fleet["psg1"].files


def test_dnf_proxy_line_is_set_once_in_main() -> None:
    assert with_dnf_proxy("[main]\ngpgcheck=1\n", "http://p:1") == "[main]\nproxy=http://p:1\ngpgcheck=1\n"
    assert with_dnf_proxy("[main]\nproxy=http://old:1\n", "http://p:1") == "[main]\nproxy=http://p:1\n"
    assert with_dnf_proxy("", "http://p:1") == "[main]\nproxy=http://p:1\n"


@pytest.mark.parametrize("os", BOTH)
def test_preflight_passes_a_healthy_host_without_changing_it(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    result = HostPreflightOperator(task_id="check_host", host="psg1", inventory_path=inventory).execute({})
    assert result["result"]["os_family"] == ("debian" if os == DEBIAN_12 else "rhel")
    assert abs(result["result"]["clock_skew_s"]) < 1
    assert fleet["psg1"].mutations() == []


def test_preflight_names_every_problem(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    psg1 = fleet["psg1"]
    psg1.login = "deploy"
    psg1.free_mb = 100
    psg1.listeners = ('LISTEN 0 4096 0.0.0.0:5432 0.0.0.0:* users:(("mysqld",pid=7,fd=3))\n'
                      'LISTEN 0 4096 127.0.0.41:2379 0.0.0.0:* users:(("etcd",pid=8,fd=3))\n')
    with pytest.raises(AirflowException) as failed:
        HostPreflightOperator(task_id="check_host", host="psg1", inventory_path=inventory).execute({})
    message = str(failed.value)
    assert message.startswith("[psg1] preflight failed:")
    assert "cannot become root (id -un says 'deploy')" in message
    assert "only 100 MB free under /var, need 1024 MB" in message
    assert 'port 5432 is already in use: users:(("mysqld",pid=7,fd=3))' in message
    assert "2379" not in message  # our own etcd (a rerun) is not a foreign listener
    assert psg1.mutations() == []


def test_unsupported_os_is_named(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    fleet["psg1"].files["/etc/os-release"].content = 'ID=alpine\nPRETTY_NAME="Alpine Linux v3.19"\n'
    with pytest.raises(AirflowException, match=r"\[psg1\] unsupported operating system 'Alpine Linux v3.19'"):
        HostPreflightOperator(task_id="check_host", host="psg1", inventory_path=inventory).execute({})


def test_the_inventory_names_the_os_family_and_nothing_is_detected(fleet: Fleet, tmp_path: Path) -> None:
    from pgha_testing import loopback_inventory, write_inventory
    from recording_host import LB, NODES

    raw = loopback_inventory(NODES, lb_host=LB[0])
    raw["hosts"][0]["address"] = LB[1]
    raw["hosts"][1]["os_family"] = "rhel"
    fleet.for_inventory(raw, ROCKY_9)
    result = HostPreflightOperator(task_id="check_host", host="psg1",
                                   inventory_path=write_inventory(tmp_path, raw)).execute({})
    assert result["result"]["os_family"] == "rhel"
    assert not fleet["psg1"].ran("os-release")


def test_inventory_hosts_by_role(tmp_path: Path, fleet: Fleet) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    hosts = {role: InventoryHostsOperator(task_id=role, role=role, inventory_path=inventory).execute({})
             for role in InventoryHostsOperator.ROLES}
    assert hosts == {"database": ["psg1", "psg2", "psg3"], "managed": ["vm1", "psg1", "psg2", "psg3"],
                     "airflow": ["vm1"]}
    with pytest.raises(ValueError, match="role must be one of"):
        InventoryHostsOperator(task_id="x", role="web")
