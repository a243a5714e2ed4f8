"""Holds the compiled policy and swaps it on reload (SIGHUP or a file change): the new policy is
built in a worker thread off to the side and replaces one reference; a bad file keeps the old one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from proxy.core.errors import ConfigError, IdgateError
from proxy.metrics import Metrics
from proxy.policy.diff import PolicyDiff, diff
from proxy.policy.engine import CompiledPolicy
from proxy.policy.loader import load_policies

log = logging.getLogger("idgate.policy")

Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(directory: Path) -> Fingerprint:
    entries = []
    for path in sorted(directory.iterdir()):
        if path.suffix in (".yaml", ".yml"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(entries)


def compile_directory(directory: Path) -> CompiledPolicy:
    return CompiledPolicy.compile(load_policies(directory))


# Up to this many rules a reload's record also says which identities gain and lose what (rules x
# identities work, in the reload's thread); above it, which rules changed and how.
PER_IDENTITY_MAX_RULES = 500

OnChange = Callable[[PolicyDiff, CompiledPolicy], Awaitable[None]]


class PolicyStore:
    def __init__(self, directory: Path, metrics: Metrics, on_change: OnChange | None = None) -> None:
        self.directory = directory
        self._metrics = metrics
        # Told of a change before it is swapped in (the audit's policy_change record): when it raises, the
        # old policy stays, so no policy serves that the audit does not know of.
        self.on_change = on_change
        self.current: CompiledPolicy = compile_directory(directory)
        self.last_error: str | None = None
        self._fingerprint = _fingerprint(directory)
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        """Rebuild from disk (10,000 rules take ~1 s: in a thread, never on the loop); on any problem
        keep serving the previous policy and report why."""
        async with self._lock:
            try:
                # Remember what was tried even when it fails, so the watcher reports a bad file once.
                self._fingerprint = await asyncio.to_thread(_fingerprint, self.directory)
                compiled = await asyncio.to_thread(compile_directory, self.directory)
                change = await asyncio.to_thread(
                    diff, self.current, compiled, per_identity=len(compiled.rules) <= PER_IDENTITY_MAX_RULES)
                if self.on_change is not None and not change.empty:
                    await self.on_change(change, compiled)
            except (ConfigError, OSError, IdgateError) as exc:
                self.last_error = str(exc)
                self._metrics.policy_reloads.labels("error").inc()
                log.error("policy reload failed, keeping the previous policy", extra={"error": str(exc)})
                return False
            self.current = compiled
            self.last_error = None
            self._metrics.policy_reloads.labels("ok").inc()
            log.info("policy reloaded", extra={"rules": len(compiled.rules)})
            return True

    def request_reload(self) -> None:
        """For signal handlers: schedule a reload and keep a reference to it until it is done."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload_if_changed(self) -> bool:
        """Reload when a policy file was added, removed or changed since the last (attempted) load."""
        try:
            changed = await asyncio.to_thread(_fingerprint, self.directory) != self._fingerprint
        except OSError as exc:
            log.error("cannot read policy directory", extra={"error": str(exc)})
            return False
        return await self.reload() if changed else False

    async def watch(self, interval: float) -> None:
        """Poll the directory (stdlib only, works on every filesystem) and reload when it changes."""
        while True:
            await asyncio.sleep(interval)
            await self.reload_if_changed()
