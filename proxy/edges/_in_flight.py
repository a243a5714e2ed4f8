"""Requests inside the handlers, counted so that shutdown and tests can wait until every one has
finished and queued its outcome record."""

from __future__ import annotations

import asyncio


class InFlight:
    """Counts requests inside the handlers, so a caller can wait until every one has finished
    (and so has queued its outcome record)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()
