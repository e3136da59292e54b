"""EtcdHook, EtcdHealthSensor and its trigger against a real 3-member etcd."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from pgha.compat import AirflowSensorTimeout, TaskDeferred
from pgha.hooks.etcd import EtcdHook
from pgha.hooks.patroni import PatroniCluster
from pgha.sensors.etcd import EtcdHealthSensor
from services import EtcdCluster, free_port, start_etcd_cluster
from pgha.triggers.etcd import EtcdHealthTrigger


def names(cluster: EtcdCluster) -> list[str]:
    return [m.name for m in cluster.members]


def test_report_of_a_healthy_cluster(etcd_cluster: EtcdCluster) -> None:
    report = EtcdHook(etcd_cluster.endpoints).report()
    assert report.problems(names(etcd_cluster)) == []
    assert sorted(report.members.values()) == sorted(names(etcd_cluster))
    assert report.leader_name in names(etcd_cluster)
    assert all(v.startswith("3.") for v in report.versions.values())


def test_etcd_leadership_moves_off_the_patroni_leader(etcd_cluster: EtcdCluster) -> None:
    """A Patroni leader that also leads etcd hands etcd's leadership to the async replica; then nothing to do."""
    hook = EtcdHook(etcd_cluster.endpoints)
    leader = hook.report().leader_name
    others = [n for n in names(etcd_cluster) if n != leader]
    cluster = PatroniCluster(members=[
        {"name": leader, "role": "leader", "state": "running"},
        {"name": others[0], "role": "sync_standby", "state": "streaming"},
        {"name": others[1], "role": "replica", "state": "streaming"},
    ])
    moved = hook.keep_leader_off_patroni_leader(cluster)
    assert moved and f"{leader} -> {others[1]}" in moved
    assert hook.report().leader_name == others[1]
    assert hook.keep_leader_off_patroni_leader(cluster) is None
    assert hook.move_leader(others[1]) is None  # already there
    with pytest.raises(ValueError, match="psg9"):
        hook.move_leader("psg9")


def test_membership_must_equal_the_inventory(etcd_cluster: EtcdCluster) -> None:
    problems = EtcdHook(etcd_cluster.endpoints).report().problems([*names(etcd_cluster)[:2], "psg9"])
    assert any("differ from the inventory" in p for p in problems)


def test_sensor_pokes_true_and_returns_the_leader(etcd_cluster: EtcdCluster) -> None:
    sensor = EtcdHealthSensor(task_id="etcd", endpoints=etcd_cluster.endpoints,
                              expected_members=names(etcd_cluster), timeout=30)
    result = sensor.poke({})
    assert result.is_done and result.xcom_value in names(etcd_cluster)


def test_unreachable_member_is_reported_by_endpoint(etcd_cluster: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sensor = EtcdHealthSensor(task_id="etcd", endpoints=[*etcd_cluster.endpoints, dead],
                              expected_members=names(etcd_cluster), timeout=30)
    assert not sensor.poke({}).is_done
    problems, _ = sensor.make_trigger().check()
    assert any(p.startswith(f"{dead}: unreachable") for p in problems)


def test_deferrable_sensor_defers_then_trigger_fires(etcd_cluster: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sensor = EtcdHealthSensor(task_id="etcd", endpoints=[dead], expected_members=["x"], deferrable=True,
                              timeout=5, poke_interval=1)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, EtcdHealthTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "pgha.triggers.etcd.EtcdHealthTrigger"
    timed_out = asyncio.run(_first_event(EtcdHealthTrigger(**{**kwargs, "timeout": 2})))
    assert timed_out["status"] == "timeout" and timed_out["problems"]
    with pytest.raises(AirflowSensorTimeout, match="timed out"):  # final: no retry would help
        sensor.execute_complete({}, timed_out)
    healthy = EtcdHealthTrigger(endpoints=etcd_cluster.endpoints, expected_members=names(etcd_cluster),
                                poll_interval=1, timeout=20)
    event = asyncio.run(_first_event(healthy))
    assert event["status"] == "success"
    assert sensor.execute_complete({}, event) in names(etcd_cluster)


def test_losing_quorum_then_recovering(tmp_path: Path) -> None:
    cluster = start_etcd_cluster(tmp_path, size=3)
    try:
        hook = EtcdHook(cluster.endpoints, timeout=1)
        cluster.members[2].stop()
        problems = hook.report().problems(names(cluster))
        assert any(cluster.members[2].client_url in p for p in problems)
        cluster.members[1].stop()
        problems = hook.report().problems(names(cluster))
        assert any("exactly one leader" in p or "is not true" in p for p in problems)
    finally:
        cluster.stop()


def test_a_run_with_defer_waits_defers_a_sensor_built_without_deferrable(etcd_cluster: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sensor = EtcdHealthSensor(task_id="etcd", endpoints=[dead], expected_members=["x"], timeout=5)
    with pytest.raises(TaskDeferred):
        sensor.execute({"params": {"defer_waits": True}})


def test_async_report_says_what_the_sync_report_says(etcd_cluster: EtcdCluster) -> None:
    hook = EtcdHook([*etcd_cluster.endpoints, f"http://127.0.0.1:{free_port()}"], timeout=1)
    sync, on_loop = hook.report(), asyncio.run(hook.areport())
    assert (on_loop.healthy, on_loop.leaders, on_loop.members) == (sync.healthy, sync.leaders, sync.members)
    assert on_loop.errors.keys() == sync.errors.keys()


def test_the_trigger_never_blocks_the_triggerers_event_loop() -> None:
    """An endpoint that accepts and never answers: each request waits its full timeout, which must
    not stop other triggers (here a ticker) from running."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        trigger = EtcdHealthTrigger(endpoints=[endpoint], expected_members=["x"], poll_interval=0.1, timeout=3)
        gaps = asyncio.run(_longest_tick_gap_while(_first_event(trigger)))
    assert gaps < 0.5, f"the event loop stood still for {gaps:.2f}s"


async def _longest_tick_gap_while(awaitable) -> float:
    task = asyncio.ensure_future(awaitable)
    longest, last = 0.0, time.monotonic()
    while not task.done():
        await asyncio.sleep(0.05)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    await task
    return longest


async def _first_event(trigger: EtcdHealthTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")
