"""Where the repository's own files are, named once: a test module that moves need not recount its
parent directories to find the shipped policies, the deploy/ examples or the test data."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
HARNESS = REPO / "tests" / "harness"
POLICIES = REPO / "policies"
DEPLOY = REPO / "deploy"
