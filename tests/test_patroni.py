"""PatroniHook, PatroniLeaderSensor and its trigger against a real single-node Patroni."""

from __future__ import annotations

import asyncio
import time

import pytest
from pgha.compat import AirflowException, AirflowSensorTimeout, TaskDeferred
from fixture_secrets import PATRONI_REST_PASSWORD, PATRONI_REST_USER
from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.operators.patroni import ApplyDcsConfigOperator
from pgha_testing import loopback_inventory, set_connection, write_inventory
from pgha.sensors.patroni import PatroniLeaderSensor
from pathlib import Path

from services import PatroniService, free_port
from pgha.triggers.patroni import PatroniLeaderTrigger


def test_cluster_shows_one_leader(patroni: PatroniService) -> None:
    hook = PatroniHook([patroni.rest_url])
    cluster = hook.cluster()
    assert cluster.leaders == [patroni.name]
    assert hook.leader() == patroni.name
    assert hook.is_primary(patroni.rest_url) and not hook.is_replica(patroni.rest_url)
    assert cluster.problems(expected_replicas=0) == []


def test_cluster_asks_the_next_member_when_one_is_down(patroni: PatroniService) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert PatroniHook([dead, patroni.rest_url]).leader() == patroni.name
    with pytest.raises(AirflowException, match="no Patroni member answered"):
        PatroniHook([dead]).cluster()


def test_sensor_returns_the_leader_and_waits_for_missing_replicas(patroni: PatroniService) -> None:
    done = PatroniLeaderSensor(task_id="p", api_urls=[patroni.rest_url], expected_replicas=0, timeout=30).poke({})
    assert done.is_done and done.xcom_value == patroni.name
    for kwargs in ({"expected_replicas": 2}, {"expected_replicas": 0, "require_sync": True}):
        sensor = PatroniLeaderSensor(task_id="p", api_urls=[patroni.rest_url], timeout=30, **kwargs)
        assert not sensor.poke({}).is_done
    problems, _ = PatroniLeaderSensor(task_id="p", api_urls=[patroni.rest_url], expected_replicas=2,
                                      require_sync=True, timeout=30).make_trigger().check()
    assert problems == ["expected 2 streaming replicas, found []", "no synchronous standby is streaming yet"]


def test_lag_bound_and_roles_from_a_cluster_document() -> None:
    cluster = PatroniCluster(members=[
        {"name": "a", "role": "leader", "state": "running"},
        {"name": "b", "role": "sync_standby", "state": "streaming", "lag": 0},
        {"name": "c", "role": "replica", "state": "streaming", "lag": 50_000_000},
    ])
    assert cluster.sync_standbys == ["b"] and cluster.streaming_replicas == ["b", "c"]
    assert cluster.problems(2, require_sync=True) == []
    assert cluster.problems(2, max_lag_bytes=1024) == ["c lags 50000000 bytes (bound 1024)"]


def test_members_not_serving_are_named_with_why() -> None:
    """A degraded cluster's reason names the member at fault, not only the ones that are fine."""
    cluster = PatroniCluster(members=[
        {"name": "a", "role": "leader", "state": "running"},
        {"name": "b", "role": "replica", "state": "stopped"},
    ])
    assert cluster.not_serving(["a", "b", "c"]) == [
        "b is replica/stopped", "c is not in the Patroni cluster (is Patroni running there?)"]


def test_deferrable_sensor_trigger_fires_with_the_leader(patroni: PatroniService) -> None:
    sensor = PatroniLeaderSensor(task_id="p", api_urls=[patroni.rest_url], expected_replicas=1, deferrable=True,
                                 timeout=30, poke_interval=1)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "pgha.triggers.patroni.PatroniLeaderTrigger"
    timeout_event = asyncio.run(_first_event(PatroniLeaderTrigger(**{**kwargs, "timeout": 2})))
    assert timeout_event["status"] == "timeout"
    with pytest.raises(AirflowSensorTimeout, match="expected 1 streaming replicas"):
        sensor.execute_complete({}, timeout_event)
    ok = asyncio.run(_first_event(PatroniLeaderTrigger(**{**kwargs, "expected_replicas": 0})))
    assert ok == {"status": "success", "value": patroni.name}


def test_async_cluster_is_the_sync_cluster(patroni: PatroniService) -> None:
    hook = PatroniHook([f"http://127.0.0.1:{free_port()}", patroni.rest_url])
    on_loop, sync = asyncio.run(hook.acluster()), hook.cluster()
    assert (on_loop.leaders, on_loop.source) == (sync.leaders, sync.source) == ([patroni.name], patroni.rest_url)


def test_switchover_is_authenticated(patroni: PatroniService, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "rest_ok", conn_type="http", login=PATRONI_REST_USER, password=PATRONI_REST_PASSWORD)
    set_connection(monkeypatch, "rest_bad", conn_type="http", login=PATRONI_REST_USER, password="wrong")
    # A single node has no candidate: Patroni refuses, but only after accepting the credentials.
    accepted = PatroniHook([patroni.rest_url], conn_id="rest_ok").switchover(patroni.name)
    assert accepted.status_code != 401 and accepted.status_code >= 400
    rejected = PatroniHook([patroni.rest_url], conn_id="rest_bad").switchover(patroni.name)
    assert rejected.status_code == 401
    assert PatroniHook([patroni.rest_url]).leader() == patroni.name
    with pytest.raises(AirflowException, match="'missing_conn' .*is missing|isn't defined"):
        PatroniHook([patroni.rest_url], conn_id="missing_conn").switchover(patroni.name)


def test_a_switchover_goes_to_the_leaders_own_api_first(patroni: PatroniService) -> None:
    """The member that takes POST /switchover wakes its own HA loop: the leader's own URL goes first, whatever
    the configured order; an unknown leader or an unreachable cluster keeps the configured order."""
    other = f"http://127.0.0.1:{free_port()}"
    hook = PatroniHook([other, patroni.rest_url])
    assert hook.member_first(patroni.name) == [patroni.rest_url, other]
    assert hook.member_first("not-a-member") == [other, patroni.rest_url]
    assert PatroniHook([other]).member_first(patroni.name) == [other]
    assert hook.api_url_of(patroni.name) == patroni.rest_url and hook.api_url_of("not-a-member") is None


def test_dcs_config_follows_the_inventory_once(
    patroni: PatroniService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """New failover timings in the inventory reach a running cluster (PATCH /config); a rerun changes nothing."""
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login=PATRONI_REST_USER,
                   password=PATRONI_REST_PASSWORD)
    hook = PatroniHook([patroni.rest_url], conn_id="pgha_patroni_api")
    before = hook.dynamic_config()
    rest_port = int(patroni.rest_url.rsplit(":", 1)[1])
    raw = loopback_inventory([("node1", patroni.pg_host), ("node2", "127.0.0.12"), ("node3", "127.0.0.13")], lb_host="lb",
                             patroni={"rest_port": rest_port, "ttl": 24, "loop_wait": 3, "retry_timeout": 10,
                                      "synchronous_mode": "false"})
    raw["hosts"][0]["address"] = "127.0.0.9"  # the Patroni node is on 127.0.0.1
    inventory = write_inventory(tmp_path, raw)
    keys = ["ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "primary_start_timeout",
            "synchronous_mode", "synchronous_mode_strict"]
    try:
        first = ApplyDcsConfigOperator(task_id="failover_timings", inventory_path=inventory).execute({})
        assert first["changed"] and {"ttl", "loop_wait", "retry_timeout"} <= set(first["result"]["changed_keys"])
        deadline, after = time.monotonic() + 20, {}
        while time.monotonic() < deadline:  # GET /config answers from Patroni's view of etcd: next loop or watch
            after = hook.dynamic_config()
            if (after["ttl"], after["loop_wait"], after["retry_timeout"]) == (24, 3, 10):
                break
            time.sleep(0.5)
        assert (after["ttl"], after["loop_wait"], after["retry_timeout"]) == (24, 3, 10), after
        again = ApplyDcsConfigOperator(task_id="failover_timings", inventory_path=inventory).execute({})
        assert not again["changed"] and again["result"]["changed_keys"] == []
    finally:
        hook.patch_config({key: before.get(key) for key in keys})


async def _first_event(trigger: PatroniLeaderTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")
