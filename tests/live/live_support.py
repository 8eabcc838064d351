"""Helpers of the live (event-driven) tests: a trigger's ``run()`` driven on an event loop against the emulators.

The unit-level tests run the trigger without a triggerer, so it gets the asset state store the triggerer would
inject as a dict with the same ``aget`` / ``aset`` calls; the end-to-end test under ``airflow standalone`` uses
Airflow's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from airflow_provider_didomi_dynamics.triggers.dataverse_changes import STATE_KEY, DataverseChangesTrigger


class MemoryStateStore:
    """The asset state store's async accessor calls, kept in a dict that outlives one trigger (a restart)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))  # what a JSON column keeps

    @property
    def state(self) -> dict[str, Any] | None:
        return self.values.get(STATE_KEY)


class DrivenTrigger:
    """One trigger's ``run()`` in a task, as the triggerer drives it: each event is taken at once."""

    def __init__(self, trigger: DataverseChangesTrigger, store: MemoryStateStore) -> None:
        self.trigger = trigger
        trigger.asset_state_store = store
        self.store = store
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._drive())

    async def _drive(self) -> None:
        async for event in self.trigger.run():
            await self.events.put(event.payload)

    async def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event within ``timeout`` seconds, else None (a failed trigger raises its error)."""
        getter = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait({getter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            self.task.result()
            raise AssertionError("the trigger stopped without an error")
        return None

    async def polls(self, count: int, timeout: float = 30) -> None:
        """Wait until the trigger has sent ``count`` more requests (polls) than now."""
        target = self.trigger.requests + count
        await until(lambda: self.trigger.requests >= target, timeout, self.task)

    async def started(self, timeout: float = 30) -> None:
        """Wait until the trigger stored its first state (the baseline token)."""
        await until(lambda: self.store.state is not None, timeout, self.task)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def until(condition: Callable[[], bool], timeout: float, task: asyncio.Task[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if task is not None and task.done():
            task.result()
            raise AssertionError("the trigger stopped")
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)
