"""A trigger that polls an asynchronous check until it passes or time runs out."""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PollingTrigger(BaseTrigger):
    """
    Awaits ``acheck()`` every ``poll_interval`` seconds in the triggerer's event
    loop (the hooks' async clients: nothing blocks the loop). ``check()`` is the
    same check, synchronous, for a sensor that pokes or reschedules.

    Fires ``{"status": "success", "value": ...}`` when the check reports no
    problems, or ``{"status": "timeout", "problems": [...]}`` at the deadline.
    """

    def __init__(self, poll_interval: float, timeout: float) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.timeout = timeout

    @abstractmethod
    def check(self) -> tuple[list[str], Any]:
        """Return (problems, value); no problems means done."""

    @abstractmethod
    async def acheck(self) -> tuple[list[str], Any]:
        """``check()`` for the event loop."""

    def common_kwargs(self) -> dict[str, Any]:
        return {"poll_interval": self.poll_interval, "timeout": self.timeout}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            try:
                problems, value = await self.acheck()
            except Exception as exc:  # an unreachable service is a problem to wait out, not a crash
                problems, value = [f"{type(exc).__name__}: {exc}"], None
            if not problems:
                yield TriggerEvent({"status": "success", "value": value})
                return
            self.log.info("waiting: %s", "; ".join(problems))
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent({"status": "timeout", "problems": problems})
