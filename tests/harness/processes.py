"""Server subprocesses for the tests and the benchmarks: each in its own session with its output in a log,
readiness polled against a deadline (failing with the log tail if it exits or stalls), stopped with
terminate, then kill, and killed by the kernel if whoever started it dies without stopping it."""

from __future__ import annotations

import asyncio

import ctypes
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

HOST = "127.0.0.1"
POLL_INTERVAL = 0.02
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1
T = TypeVar("T")
S = TypeVar("S", bound="ManagedServer")

# Looked up before any fork: the child, between fork and exec, should only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def free_port() -> int:
    """A loopback port free at the moment of asking, for servers that cannot bind port 0 and report it."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test run or benchmark is killed outright (no finally), the
    # kernel still sends its servers SIGTERM.  (It fires when the starting thread ends: start servers
    # from the main thread.)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerError(RuntimeError):
    """A server could not be started; the message carries its log tail."""


class ServerProcess:
    """One server subprocess.  Its log and whatever else it writes go to `workdir`: the directory given,
    or a temp dir of its own that stop() removes."""

    def __init__(self, name: str, error: type[Exception] = ServerError, *, startup_timeout: float = 30.0,
                 workdir: Path | None = None) -> None:
        self.name = name
        self._error = error
        self._startup_timeout = startup_timeout
        self._given_workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def workdir(self) -> Path:
        if self._given_workdir is not None:
            return self._given_workdir
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        return Path(self._dir.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        """Start `argv` (environment: `env`, or this process's own) in `cwd`, or the workdir."""
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C reaches only the test run or benchmark, which then stops its servers in order.
            self._process = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                             cwd=cwd or self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_die_with_parent)

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
            self.check_alive()
            if time.monotonic() > deadline:
                raise self._error(f"{self.name} not {what} in {self._startup_timeout}s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)  # polling another process for readiness, bounded by the deadline

    def check_alive(self) -> None:
        assert self._process is not None, "start() first"
        if self._process.poll() is not None:
            raise self._error(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ProcessGroup:
    """Every server a benchmark starts, logging into one workdir and started in one cwd; stop_all()
    stops them in reverse order (also on Ctrl-C, from the caller's finally)."""

    def __init__(self, workdir: Path, *, cwd: Path | None = None) -> None:
        self._workdir = workdir
        self._cwd = cwd
        self._processes: list[ServerProcess] = []

    def start(self, name: str, argv: Sequence[str], *, startup_timeout: float = 30.0) -> ServerProcess:
        process = ServerProcess(name, workdir=self._workdir, startup_timeout=startup_timeout)
        process.start(argv, cwd=self._cwd)
        self._processes.append(process)
        return process

    def stop(self, process: ServerProcess) -> None:
        process.stop()
        if process in self._processes:
            self._processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._processes)):
            self.stop(process)


class ManagedServer:
    """A harness around one ServerProcess (`_server`): use as a context manager, or call start() and stop()."""

    _server: ServerProcess

    @property
    def process(self) -> ServerProcess:
        """The server's process (for the benchmarks: its pid to pin, its CPU to read)."""
        return self._server

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._server.stop()

    def log_tail(self, lines: int = 40) -> str:
        return self._server.log_tail(lines)

    @contextmanager
    def _stopped_on_failure(self) -> Iterator[None]:
        """Around start()'s readiness waits: a server that does not come up is not left running."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def __enter__(self: S) -> S:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()



class ServerUrls:
    """`url` and `admin_url` of a server whose main and admin listeners are on HOST at `port` and
    `admin_port` (fields or properties of the class that mixes this in)."""

    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` on the test's loop until it holds (another task or process makes it true),
    failing after `timeout`: the async counterpart of ServerProcess.wait_until."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        await asyncio.sleep(POLL_INTERVAL)   # polling a condition, bounded by the deadline


async def eventually_true(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """`eventually` for a condition that must itself await (an HTTP probe)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        await asyncio.sleep(POLL_INTERVAL)   # polling a condition, bounded by the deadline


async def steady(value: Callable[[], int], what: str, polls: int = 25, timeout: float = 10.0) -> int:
    """The value once it has stopped changing for `polls` polls in a row (back-pressure holding), failing
    after `timeout` if it never does."""
    deadline = time.monotonic() + timeout
    last, same = value(), 0
    while same < polls:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still changing after {timeout}s")
        await asyncio.sleep(POLL_INTERVAL)   # polling a counter another task advances, bounded by the deadline
        current = value()
        last, same = current, same + 1 if current == last else 0
    return last
