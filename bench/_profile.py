"""Optional sampling profile of a server process during a measured run (py-spy, if installed:
`.venv/bin/pip install py-spy`), summarized as the hottest idgate frames, inclusive of callees."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 97  # off the 100 Hz tick so samples do not alias with timers


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    tool = py_spy()
    if tool is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return subprocess.Popen([tool, "record", "-p", str(pid), "-d", str(seconds), "-r", str(RATE_HZ),
                             "-f", "raw", "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hottest(folded: Path, prefix: str = "proxy/", top: int = 25) -> list[tuple[float, str]]:
    """(share of the event-loop thread's busy samples, frame) for frames in files under `prefix`."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "run_module_as_main" not in frames[0]:
            continue  # other threads (the audit fsync thread sleeps in the kernel)
        total += int(count)
        for frame in set(frames):
            if f"({prefix}" in frame and "__main__" not in frame and "cli.py" not in frame:
                inclusive[frame] += int(count)
    return [(n / total, frame) for frame, n in inclusive.most_common(top)] if total else []
