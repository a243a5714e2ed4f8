"""The soak's figures from what it recorded (pure functions, plus reading the files it names): each wrk
chunk's answers and errors, RSS slope per worker from /proc samples, open descriptors, and the
reconciliation of the request ids the upstream received with the audit's decision records."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Counts each answer's status per wrk thread (wrk gives only "Non-2xx" otherwise) and paces each
# connection by the delay given after `--` (0: as fast as it can).  done() prints one line for parse_chunk.
WRK_SCRIPT = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; pause = tonumber(args[1] or "0") end
function delay() return pause end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d": %d', status, n)) end
  io.write("STATUSES {" .. table.concat(parts, ", ") .. "}\\n")
end
"""
SOCKET_ERROR_KINDS = ("connect", "read", "write", "timeout")


@dataclass(frozen=True)
class Chunk:
    """One wrk run of the soak: from `start_s` to `end_s` (seconds since the load began); a kill chunk has
    a worker SIGKILLed `lead_s` into it."""
    start_s: int
    seconds: int
    kill_worker: int | None = None
    lead_s: int = 0

    @property
    def end_s(self) -> int:
        return self.start_s + self.seconds


def schedule(total_s: int, kills: int, workers: int, chunk_s: int, window_s: int, lead_s: int) -> list[Chunk]:
    """wrk runs covering `total_s`: steady chunks of at most `chunk_s`, and for each of `kills` evenly spaced
    kills (worker 0, 1, ... in turn) a chunk of `window_s` whose errors are the kill window's."""
    kill_at = [round(total_s * (k + 1) / (kills + 1)) for k in range(kills)]
    chunks: list[Chunk] = []
    now = 0

    def steady_until(end: int) -> None:
        nonlocal now
        while now < end:
            seconds = min(chunk_s, end - now)
            chunks.append(Chunk(now, seconds))
            now += seconds

    for k, at in enumerate(kill_at):
        steady_until(max(now, at - lead_s))
        chunks.append(Chunk(now, window_s, kill_worker=k % workers, lead_s=lead_s))
        now += window_s
    steady_until(total_s)
    return chunks


def parse_chunk(output: str) -> dict[str, Any]:
    """wrk's request count, rate, latency, socket errors by kind and the statuses WRK_SCRIPT counted."""
    def number(pattern: str, cast: type = int) -> Any:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{output}")
        return cast(match[1])

    errors = dict.fromkeys(SOCKET_ERROR_KINDS, 0)
    line = re.search(r"Socket errors:(.+)$", output, re.MULTILINE)
    if line:
        errors.update({kind: int(n) for kind, n in re.findall(r"(\w+) (\d+)", line[1])})
    statuses = re.search(r"^STATUSES (\{.*\})$", output, re.MULTILINE)
    return {
        "requests": number(r"^\s*(\d+) requests in"),
        "requests_per_s": number(r"^Requests/sec:\s*([0-9.]+)", float),
        "latency_p50": number(r"^\s*50%\s+(\S+)", str),
        "latency_p99": number(r"^\s*99%\s+(\S+)", str),
        "statuses": {int(k): v for k, v in json.loads(statuses[1]).items()} if statuses else {},
        "socket_errors": errors,
    }


def errors_by_kind(chunks: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Non-2xx answers by status ("status 503") and socket errors by kind, summed over `chunks`."""
    total: Counter[str] = Counter()
    for chunk in chunks:
        total.update({f"status {status}": n for status, n in chunk["statuses"].items() if not 200 <= status < 300})
        total.update({f"socket {kind}": n for kind, n in chunk["socket_errors"].items() if n})
    return dict(sorted(total.items()))


# -- RSS and descriptors ------------------------------------------------------------------------------


def _slope(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares Sxy and Sxx of `points` about their own means (a life's contribution to the fit)."""
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    return (sum((t - mean_t) * (v - mean_v) for t, v in points), sum((t - mean_t) ** 2 for t, _ in points))


def rss_slopes(samples: Sequence[dict[str, Any]], warmup_s: float, min_points: int = 3) -> dict[str, Any]:
    """Per role (supervisor, worker N): the RSS slope in KiB/min, one least-squares line fitted through
    every life of that role at once (each life about its own mean, so a restart's drop is not a slope),
    leaving out each life's first `warmup_s` seconds; each life's own slope, and RSS first/last/max."""
    lives: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for sample in samples:
        for role, proc in sample["processes"].items():
            lives.setdefault(role, {}).setdefault(proc["pid"], []).append((sample["t"], float(proc["rss_kib"])))
    figures: dict[str, Any] = {}
    for role, by_pid in sorted(lives.items()):
        sxy = sxx = 0.0
        per_life = []
        for pid, points in by_pid.items():
            born = points[0][0]
            kept = [(t, v) for t, v in points if t - born >= warmup_s]
            life = {"pid": pid, "from_s": round(points[0][0], 1), "to_s": round(points[-1][0], 1),
                    "points_fitted": len(kept), "slope_kib_per_min": None}
            if len(kept) >= min_points:
                xy, xx = _slope(kept)
                sxy, sxx = sxy + xy, sxx + xx
                life["slope_kib_per_min"] = round(xy / xx * 60, 1) if xx else None
            per_life.append(life)
        every = [v for points in by_pid.values() for _, v in points]
        figures[role] = {
            "slope_kib_per_min": round(sxy / sxx * 60, 1) if sxx else None,
            "rss_first_kib": int(next(iter(by_pid.values()))[0][1]), "rss_last_kib": int(every[-1]),
            "rss_max_kib": int(max(every)), "lives": per_life,
        }
    return figures


def fd_figures(idle_before: dict[str, Any], idle_after: dict[str, Any],
               samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per role: open descriptors idle before the load, idle after it, and the most seen under load."""
    roles = sorted({*idle_before["processes"], *idle_after["processes"]})
    under_load: dict[str, int] = {}
    for sample in samples:
        for role, proc in sample["processes"].items():
            under_load[role] = max(under_load.get(role, 0), proc["fds"])
    return {role: {"idle_before": idle_before["processes"].get(role, {}).get("fds"),
                   "idle_after": idle_after["processes"].get(role, {}).get("fds"),
                   "max_under_load": under_load.get(role)} for role in roles}


# -- reconciliation ---------------------------------------------------------------------------------


def reconcile(upstream_ids_file: Path, segments: Iterable[Path], sample: int = 10) -> dict[str, Any]:
    """Every request id the upstream received must have an allow decision record carrying it: the
    audit record is durable before the upstream sees the request, SIGKILL or not.  Decision records with no
    upstream hit are counted apart (denials, and allows whose worker died before forwarding)."""
    received = Counter(upstream_ids_file.read_text().split()) if upstream_ids_file.exists() else Counter()
    allowed: set[str] = set()
    denied = unparsable = 0
    events: Counter[str] = Counter()
    for path in segments:
        with path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    unparsable += 1
                    continue
                events[record.get("event", "?")] += 1
                if record.get("event") == "decision":
                    if record.get("decision") == "allow":
                        allowed.add(record["request_id"])
                    else:
                        denied += 1
    unreconciled = sorted(rid for rid in received if rid not in allowed)
    return {
        "upstream_requests": sum(received.values()),
        "upstream_unique_ids": len(received),
        "upstream_duplicate_ids": sum(n - 1 for n in received.values() if n > 1),
        "upstream_without_request_id": received.get("-", 0),
        "allow_records": len(allowed),
        "deny_records": denied,
        "records_by_event": dict(sorted(events.items())),
        "unparsable_lines": unparsable,
        "unreconciled": len(unreconciled),
        "unreconciled_sample": unreconciled[:sample],
        "allow_records_without_upstream_hit": len(allowed - received.keys()),
    }
