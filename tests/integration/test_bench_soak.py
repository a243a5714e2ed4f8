"""bench/soak.py end to end on a short run (12 s of load, one worker SIGKILLed in it): the supervisor
restarts the worker, every worker's audit chain verifies, and every request id the upstream received has
its allow record in the audit.  Real processes throughout (dev issuer, recording upstream, idgate
--workers 2, wrk)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness.paths import REPO


def test_a_short_soak_with_a_kill_reconciles_every_upstream_request_with_its_allow_record(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.2", "--kills", "1",
                           "--chunk-seconds", "3", "--window-seconds", "6", "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    [kill] = result["kills"]
    assert kill["recovered_s"] is not None and kill["new_pid"] != kill["pid"], kill
    assert result["worker_restarts_total"] == 1
    assert {role: chain["ok"] for role, chain in result["audit_chains"].items()} == \
        {"worker 0": True, "worker 1": True}, result["audit_chains"]
    reconciled = result["reconciliation"]
    # The upstream got the load (not a run that reconciles nothing), every id once, each with its allow record.
    assert reconciled["upstream_unique_ids"] >= result["requests"] > 0, reconciled
    assert reconciled["unreconciled"] == 0, reconciled
    assert reconciled["upstream_duplicate_ids"] == 0 and reconciled["upstream_without_request_id"] == 0
    assert result["errors"]["outside_kill_windows"] == {}, result["chunks"]
    assert result["clean"], result["verdict"]
