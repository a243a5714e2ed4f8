"""A TCP relay between idgate and a real server that can hold back the server's answers: what the client
sends is delivered and acted on, while the client never hears back (a request that succeeded, its
acknowledgement lost).  Deterministic fault injection for "sent but not acknowledged"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from tests.harness.processes import HOST
from tests.harness.servers import tcp_server


class HoldingRelay:
    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.port = 0
        self._released = asyncio.Event()
        self._released.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def hold(self) -> None:
        """From now on the server's answers wait in the relay."""
        self._released.clear()

    def drop_all(self) -> None:
        """Close every relayed connection (what was held is never delivered) and pass answers again."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        answers = asyncio.ensure_future(self._pump(upstream_reader, writer, held=True))
        requests = asyncio.ensure_future(self._pump(reader, upstream_writer, held=False))
        self._tasks.update((answers, requests))
        try:
            await asyncio.wait((answers, requests), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answers, requests):
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, upstream_writer):
                w.close()
                self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool) -> None:
        with suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if held:
                    await self._released.wait()
                    if writer.is_closing():
                        return
                writer.write(data)
                await writer.drain()


@asynccontextmanager
async def holding_relay(target_port: int) -> AsyncIterator[HoldingRelay]:
    relay = HoldingRelay(target_port)
    async with tcp_server(relay._serve) as relay.port:
        try:
            yield relay
        finally:
            relay.drop_all()
            for task in list(relay._tasks):
                task.cancel()
