"""Holds the compiled policy and swaps it on reload (SIGHUP or a file change): the new policy is
built off to the side and replaces one reference; a bad file keeps the old policy running."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from proxy.errors import ConfigError
from proxy.metrics import Metrics
from proxy.policy.engine import CompiledPolicy
from proxy.policy.loader import load_policies

log = logging.getLogger("idgate.policy")


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
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


class PolicyStore:
    def __init__(self, directory: Path, metrics: Metrics) -> None:
        self.directory = directory
        self._metrics = metrics
        self.current: CompiledPolicy = compile_directory(directory)
        self.last_error: str | None = None
        self._fingerprint = _fingerprint(directory)

    def reload(self) -> bool:
        """Rebuild from disk; on any problem keep serving the previous policy and report why."""
        try:
            # Remember what was tried even when it fails, so the watcher reports a bad file once.
            self._fingerprint = _fingerprint(self.directory)
            compiled = compile_directory(self.directory)
        except (ConfigError, OSError) as exc:
            self.last_error = str(exc)
            self._metrics.policy_reloads.labels("error").inc()
            log.error("policy reload failed, keeping the previous policy", extra={"error": str(exc)})
            return False
        self.current = compiled
        self.last_error = None
        self._metrics.policy_reloads.labels("ok").inc()
        log.info("policy reloaded", extra={"rules": len(compiled.rules)})
        return True

    async def watch(self, interval: float) -> None:
        """Poll the directory (stdlib only, works on every filesystem) and reload when it changes."""
        while True:
            await asyncio.sleep(interval)
            try:
                changed = _fingerprint(self.directory) != self._fingerprint
            except OSError as exc:
                log.error("cannot read policy directory", extra={"error": str(exc)})
                continue
            if changed:
                self.reload()
