"""Operators that only talk to the cluster's REST APIs (Patroni /config, etcd leadership), against
real-HTTP stand-ins on the database nodes' addresses; the fake hosts show they touch no host."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pgha.compat import AirflowException
from fixture_secrets import PATRONI_REST_PASSWORD
from pgha.operators.etcd import EtcdLeaderPlacementOperator
from pgha.operators.patroni import ApplyDcsConfigOperator
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ClusterApis, Fleet, fleet_inventory


@pytest.fixture
def rest_login(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password=PATRONI_REST_PASSWORD)


def apply_dcs(inventory: str) -> dict:
    return ApplyDcsConfigOperator(task_id="apply_dcs_config", inventory_path=inventory).execute({})


def place_etcd_leader(inventory: str) -> dict:
    return EtcdLeaderPlacementOperator(task_id="etcd_leader_placement", inventory_path=inventory).execute({})


def no_host_touched(fleet: Fleet) -> bool:
    return all(host.commands == [] for host in fleet.hosts.values())


# ------------------------------------------------------------------ ApplyDcsConfigOperator


def test_dcs_config_patches_only_what_differs(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                              rest_login: None) -> None:
    sections = apis.sections()
    sections["patroni"].update(ttl=20, loop_wait=5, retry_timeout=5)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **sections)
    result = apply_dcs(inventory)
    [patch] = apis.changes()
    assert (patch.node, patch.method, patch.path) == ("psg1", "PATCH", "/config")
    assert patch.body == {"ttl": 20, "loop_wait": 5, "retry_timeout": 5}  # nothing else, nothing unrelated
    assert patch.auth == "Basic " + base64.b64encode(f"patroni:{PATRONI_REST_PASSWORD}".encode()).decode()
    assert result["changed"] and result["result"]["changed_keys"] == ["loop_wait", "retry_timeout", "ttl"]
    assert result["changes"] == ["Patroni DCS config: ttl 30 -> 20, loop_wait 10 -> 5, retry_timeout 10 -> 5"]
    assert apis.config["postgresql"] == {"parameters": {"max_connections": 100}}  # merged, not replaced
    assert no_host_touched(fleet)


def test_dcs_config_a_second_run_sends_no_patch(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                rest_login: None) -> None:
    sections = apis.sections()
    sections["patroni"].update(ttl=20, loop_wait=5, retry_timeout=5, synchronous_mode="false")
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **sections)
    apply_dcs(inventory)
    assert apis.config["synchronous_mode"] is False  # the inventory's string spelled as Patroni's boolean
    apis.requests.clear()
    again = apply_dcs(inventory)
    assert not again["changed"] and again["result"]["changed_keys"] == []
    assert apis.changes() == [] and [r.path for r in apis.requests] == ["/config"]


def test_dcs_config_refused_names_the_member_and_its_answer(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                            rest_login: None) -> None:
    sections = apis.sections()
    sections["patroni"].update(ttl=40)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **sections)
    apis.patch_answer = (403, "Access is denied")
    with pytest.raises(AirflowException, match=rf"PATCH /config refused by http://127.0.0.41:{apis.patroni_port}: "
                                               r"HTTP 403 Access is denied"):
        apply_dcs(inventory)
    assert apis.config["ttl"] == 30


def test_dcs_config_without_the_rest_login_sends_nothing(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sections = apis.sections()
    sections["patroni"].update(ttl=40)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **sections)
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni")
    with pytest.raises(AirflowException, match="connection 'pgha_patroni_api' must have login and password"):
        apply_dcs(inventory)
    assert apis.changes() == []


# ------------------------------------------------------------------ EtcdLeaderPlacementOperator


def test_etcd_leader_moves_off_the_patroni_leader_to_the_async_replica(fleet: Fleet, tmp_path: Path,
                                                                       apis: ClusterApis) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **apis.sections())
    result = place_etcd_leader(inventory)
    [transfer] = apis.changes()
    # asked of the current etcd leader (psg1), for psg3: not the sync standby psg2 that a crash of psg1 promotes
    assert (transfer.node, transfer.api, transfer.path) == ("psg1", "etcd", "/v3/maintenance/transfer-leadership")
    assert transfer.body == {"targetID": apis.member_id("psg3")}
    assert result["changes"] == ["etcd leader moved psg1 -> psg3 (off the Patroni leader psg1)"]
    assert result["result"] == {"etcd_leader": "psg3", "patroni_leader": "psg1"}
    assert no_host_touched(fleet)


def test_etcd_leader_already_apart_is_left_alone(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **apis.sections())
    place_etcd_leader(inventory)
    apis.requests.clear()
    again = place_etcd_leader(inventory)
    assert not again["changed"] and apis.changes() == []
    assert again["unchanged"] == ["etcd leader psg3, Patroni leader ['psg1']: apart"]


def test_etcd_leader_placement_names_the_members_patroni_did_not_answer_on(fleet: Fleet, tmp_path: Path,
                                                                           apis: ClusterApis) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **apis.sections())
    for node in ("psg1", "psg2", "psg3"):
        apis.stop_patroni(node)
    with pytest.raises(AirflowException, match=rf"no Patroni member answered GET /cluster: "
                                               rf"http://127.0.0.41:{apis.patroni_port}: .*127.0.0.43"):
        place_etcd_leader(inventory)
    assert apis.changes() == [] and apis.etcd_leader == "psg1"


def test_etcd_leader_placement_without_a_patroni_leader_says_so_and_moves_nothing(fleet: Fleet, tmp_path: Path,
                                                                                   apis: ClusterApis) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **apis.sections())
    apis.members = [{**m, "role": "replica"} if m["role"] == "leader" else m for m in apis.members]
    with pytest.raises(AirflowException, match=r"Patroni has no single leader \(none\)"):
        place_etcd_leader(inventory)
    assert apis.changes() == [] and apis.etcd_leader == "psg1"
