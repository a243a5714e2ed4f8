"""The `audit` section's retention keys: off by default (nothing is deleted unless configured), strict
values, and each problem at its file and line, as `idgate check-config` prints it."""

from __future__ import annotations

from pathlib import Path


from proxy.config import AuditConfig, check_config, load_config
from tests.factories import minimal_config as write



def test_retention_is_off_by_default(tmp_path: Path) -> None:
    audit = load_config(write(tmp_path, ""), env={}).audit
    assert (audit.max_segments, audit.max_bytes) == (None, None)
    assert AuditConfig().max_segments is None and AuditConfig().max_bytes is None


def test_retention_keys_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        audit:
          path: audit/a.jsonl
          rotate_bytes: 1048576
          max_segments: 30
          max_bytes: 10485760
        """), env={})
    audit = config.audit
    assert (audit.rotate_bytes, audit.max_segments, audit.max_bytes) == (1048576, 30, 10485760)
    assert load_config(write(tmp_path, "audit: {max_segments: null, max_bytes: null}\n"), env={}).audit.max_bytes is None


def test_both_retention_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "audit:\n  max_segments: 0\n  rotate_bytes: 4096\n  max_bytes: 100\n")
    assert [p.split(": ", 1)[0] for p in check_config(path, env={})] == [f"{path}:4", f"{path}:6"]
