"""The audit log's one thread for file work (write + fsync, rotation, retention, open and close): it
runs what it is handed in order, off the event loop, and reports each result back with one
call_soon_threadsafe.

Cheaper than run_in_executor, which adds a concurrent future, an asyncio future chained to it and
the executor's thread bookkeeping to every handoff (bench/bench_audit.py --handoff measures both).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

# Told on the loop: the work's result, or None and the exception it raised.
Done = Callable[[Any, BaseException | None], None]


class FileThread:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Done] | None] = SimpleQueue()
        # A daemon: a log that was never closed must not keep the process from exiting.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], Any], done: Done) -> None:
        """Run `work` after everything submitted before it; `done` is then called on the loop."""
        self._jobs.put((work, done))

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """`work`'s result as a future (for the rare jobs that a coroutine waits for)."""
        future: asyncio.Future[T] = self._loop.create_future()

        def settle(result: T, error: BaseException | None) -> None:
            if future.done():                    # the waiter was cancelled
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self.submit(work, settle)
        return future

    def stop(self) -> None:
        """Finish what was submitted, then end the thread."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, done = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:         # every job is answered, or its caller waits forever
                error = exc
            try:
                self._loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:                 # the loop is closed: nobody is left to tell
                return
