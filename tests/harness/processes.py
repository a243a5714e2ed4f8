"""A server subprocess for tests: its output in a log in its own temp dir, readiness polled against a
deadline (failing with the log tail if it exits or stalls), stopped with terminate, then kill."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
S = TypeVar("S", bound="ManagedServer")
POLL_INTERVAL = 0.02


class ServerProcess:
    def __init__(self, name: str, error: type[Exception], *, startup_timeout: float = 30.0) -> None:
        self.name = name
        self._error = error
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def workdir(self) -> Path:
        """A temp dir that lives as long as the process: its log, and whatever the server writes."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        return Path(self._dir.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None) -> None:
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd or self.workdir,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def wait_until(self, ready: Callable[[], T | None], what: str) -> T:
        """Poll `ready` (None or an OSError = not yet) until it answers, the process exits, or the
        startup deadline passes."""
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                answer = ready()
            except OSError:
                answer = None
            if answer is not None:
                return answer
            assert self._process is not None, "start() first"
            if self._process.poll() is not None:
                raise self._error(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise self._error(f"{self.name} not {what} in {self._startup_timeout}s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)  # polling another process for readiness, bounded by the deadline

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ManagedServer:
    """A harness around one ServerProcess: use as a context manager, or call start() and stop()."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
