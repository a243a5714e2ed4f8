"""The `audit` section's retention keys: off by default (nothing is deleted unless configured), strict
values, and each problem at its file and line, as `idgate check-config` prints it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import AuditConfig, check_config, load_config
from proxy.core.errors import ConfigError


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "idgate.yaml"
    path.write_text("issuers: [{issuer: http://127.0.0.1:9400, audiences: [orders-api]}]\n"
                    "policies_dir: policies\n" + textwrap.dedent(body))
    return path


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


@pytest.mark.parametrize(("body", "line", "message"), [
    ("audit: {max_segments: 0}", 3, "audit.max_segments: must be greater than 0"),
    ("audit: {max_segments: -2}", 3, "audit.max_segments: must be greater than 0"),
    ("audit: {max_bytes: 0}", 3, "audit.max_bytes: must be greater than 0"),
    ("audit:\n  rotate_bytes: 1000\n  max_bytes: 999", 5, "audit.max_bytes: must be at least rotate_bytes (1000)"),
    ("audit: {max_segments: many}", 3, "audit.max_segments: expected"),
    ("audit: {max_bytes: 1.5e9}", 3, "audit.max_bytes: expected"),
    ("audit: {max_segments: true}", 3, "audit.max_segments: expected"),
    ("audit: {keep_segments: 3}", 3, "keep_segments"),
])
def test_a_bad_retention_value_is_reported_at_its_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert [(p.file, p.line) for p in info.value.problems] == [(str(path), line)]
    assert message in info.value.problems[0].message
    [printed] = check_config(path, env={})             # what `idgate check-config` prints
    assert printed.startswith(f"{path}:{line}: ") and message in printed


def test_both_retention_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "audit:\n  max_segments: 0\n  rotate_bytes: 4096\n  max_bytes: 100\n")
    assert [p.split(": ", 1)[0] for p in check_config(path, env={})] == [f"{path}:4", f"{path}:6"]
