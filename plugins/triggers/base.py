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
    problems, or ``{"status": "timeout", "problems": [...]}`` ``timeout``
    seconds after it started or at ``deadline`` (epoch seconds), whichever
    comes first. The deferring sensor sets ``deadline`` (its timeout counts
    from its first poke), so a restarted triggerer does not wait again.
    """

    def __init__(self, poll_interval: float, timeout: float, deadline: float | None = None) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deadline = deadline

    @abstractmethod
    def check(self) -> tuple[list[str], Any]:
        """Return (problems, value); no problems means done."""

    @abstractmethod
    async def acheck(self) -> tuple[list[str], Any]:
        """``check()`` for the event loop."""

    tls_conn_id: str | None = None  # the cluster CA's connection, for a trigger whose service speaks TLS

    def client_tls(self) -> Any:
        """pgha's TLS client credentials from ``tls_conn_id`` (None without one)."""
        from pgha.runtime import client_tls

        return client_tls(self.tls_conn_id) if self.tls_conn_id else None

    async def aclient_tls(self) -> Any:
        """``client_tls()`` off the event loop (reading a Connection blocks)."""
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.client_tls)() if self.tls_conn_id else None

    def common_kwargs(self) -> dict[str, Any]:
        return {"poll_interval": self.poll_interval, "timeout": self.timeout, "deadline": self.deadline}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = min(time.time() + self.timeout, self.deadline if self.deadline is not None else float("inf"))
        while True:  # checks at least once, also when the deadline passed while the triggerer was down
            try:
                problems, value = await self.acheck()
            except Exception as exc:  # an unreachable service is a problem to wait out, not a crash
                problems, value = [f"{type(exc).__name__}: {exc}"], None
            if not problems:
                yield TriggerEvent({"status": "success", "value": value})
                return
            if time.time() >= deadline:
                yield TriggerEvent({"status": "timeout", "problems": problems})
                return
            self.log.info("waiting: %s", "; ".join(problems))
            await asyncio.sleep(max(0.0, min(self.poll_interval, deadline - time.time())))
