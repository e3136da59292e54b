"""A deferred pgha sensor times out as a rescheduling one does: once, finally (AirflowSensorTimeout is not
retried by the Task SDK), counted from its first poke, whichever way the time runs out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
from pgha.compat import AirflowSensorTimeout, TaskDeferred
from pgha.sensors.base import CheckSensor
from pgha.triggers.base import PollingTrigger


class Waiting(PollingTrigger):
    """A check that reports ``problems`` until ``passes`` is set."""

    checks = 0
    passes = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.Waiting", self.common_kwargs()

    def check(self) -> tuple[list[str], Any]:
        Waiting.checks += 1
        return ([], "ready") if Waiting.passes else (["the replica is not streaming"], None)

    async def acheck(self) -> tuple[list[str], Any]:
        return self.check()


class WaitingSensor(CheckSensor):
    def make_trigger(self) -> PollingTrigger:
        return Waiting(poll_interval=self.poke_interval, timeout=self.timeout)


@pytest.fixture(autouse=True)
def not_yet() -> None:
    Waiting.checks, Waiting.passes = 0, False


def first_event(trigger: PollingTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger fired nothing")

    return asyncio.run(first())


def deferred(timeout: float = 300) -> tuple[WaitingSensor, TaskDeferred, float]:
    sensor = WaitingSensor(task_id="wait", deferrable=True, timeout=timeout, poke_interval=0.05)
    started = time.time()
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute({})
    return sensor, caught.value, started


def test_the_deferred_wait_keeps_the_sensors_deadline_from_its_first_poke() -> None:
    sensor, defer, started = deferred()
    assert Waiting.checks == 1  # poked once before deferring
    assert started <= defer.trigger.deadline <= time.time() + 300
    assert defer.trigger.serialize()[1]["deadline"] == defer.trigger.deadline  # survives a triggerer restart
    assert defer.timeout.total_seconds() == 300 + 60  # the deferral's own timeout comes after the trigger's
    assert defer.method_name == "execute_complete"


def test_a_trigger_timeout_fails_the_sensor_finally_with_what_it_waited_for() -> None:
    sensor, defer, _ = deferred()
    _, kwargs = defer.trigger.serialize()
    event = first_event(Waiting(**{**kwargs, "deadline": time.time() + 0.2}))
    assert event == {"status": "timeout", "problems": ["the replica is not streaming"]}
    with pytest.raises(AirflowSensorTimeout, match=r"wait timed out after 300s: the replica is not streaming"):
        sensor.resume_execution("execute_complete", {"event": event}, {})


def test_a_deadline_that_passed_while_the_triggerer_was_down_is_checked_once_then_final() -> None:
    sensor, defer, _ = deferred()
    _, kwargs = defer.trigger.serialize()
    restarted = Waiting(**{**kwargs, "deadline": time.time() - 1})  # a full timeout left, but not by the clock
    started = time.monotonic()
    assert first_event(restarted)["status"] == "timeout" and time.monotonic() - started < 1
    Waiting.passes = True  # the condition came true meanwhile: one last check still sees it
    assert first_event(restarted) == {"status": "success", "value": "ready"}


def test_a_deferral_timeout_is_a_sensor_timeout_not_a_retried_error() -> None:
    """The triggerer never answered: the scheduler resumes the task to fail it; the sensor makes that final."""
    sensor, _, _ = deferred()
    with pytest.raises(AirflowSensorTimeout):
        sensor.resume_execution(TRIGGER_FAIL_REPR, {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, {})

