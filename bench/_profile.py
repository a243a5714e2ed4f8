"""A short sampling profile of one server process under load (py-spy, from the `bench` extra), apart from
the measured runs: the top entries by own time, and the hottest idgate frames inclusive of callees."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE_HZ = 97  # off the 100 Hz tick so samples do not alias with timers
TOP = 5


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _event_loop_stacks(folded: Path) -> list[tuple[list[str], int]]:
    """(frames root first, samples) of the main thread: other threads (the audit fsync thread) sleep in the kernel."""
    stacks = []
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames and "run_module_as_main" in frames[0]:
            stacks.append((frames, int(count)))
    return stacks


def top_entries(folded: Path, prefix: str = "proxy/", top: int = TOP) -> dict[str, Any]:
    """Shares of the event loop's busy samples: the `top` functions by own time (any code), and the `top`
    frames of files under `prefix` by inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    stacks = _event_loop_stacks(folded)
    total = sum(count for _, count in stacks)
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            if f"({prefix}" in frame and "__main__" not in frame and "cli.py" not in frame:
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"share": round(n / total, 3), "frame": frame} for frame, n in counter.most_common(top)]

    return {"samples": total, "top_own_time": shares(own), "top_idgate_inclusive": shares(inclusive)} if total \
        else {"samples": 0}


def profiled(pid: int, name: str, seconds: int, load: Callable[[int], object], directory: Path) -> dict[str, Any]:
    """Sample `pid` for `seconds` while `load(seconds)` runs; its top entries, or why there are none."""
    if seconds <= 0:
        return {"skipped": "--no-profile"}
    tool = py_spy()
    if tool is None:
        return {"skipped": "py-spy is not installed (pip install -e '.[bench]')"}
    output = directory / f"{slug(name)}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen([tool, "record", "-p", str(pid), "-d", str(seconds), "-r", str(RATE_HZ), "--nolineno",
                                 "-f", "raw", "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load(seconds)
    finally:
        _, errors = recorder.communicate(timeout=seconds + 30)
    if recorder.returncode != 0 or not output.exists():
        return {"skipped": f"py-spy failed: {errors.decode(errors='replace').strip()[-300:]}"}
    entries = top_entries(output)
    print(f"  profile of {name} ({entries['samples']} samples), top by own time: "
          + "; ".join(f"{e['share']:.0%} {e['frame']}" for e in entries.get("top_own_time", [])), flush=True)
    return {"seconds": seconds, "rate_hz": RATE_HZ, "folded": output.name, **entries}
