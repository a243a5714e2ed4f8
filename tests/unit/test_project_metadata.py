"""What a packager or an operator reads about the build: the licence file, the version the CLI reports, and
`serve --help` and its refusal of a log level it does not know."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_license_file_is_the_licence_pyproject_declares() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    text = (REPO / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def _idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_idgate_version_prints_the_installed_version() -> None:
    done = _idgate("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"idgate {importlib.metadata.version('idgate')}"
    assert done.stderr == ""


def test_serve_help_shows_the_default_config_and_the_log_levels() -> None:
    done = _idgate("serve", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(default: idgate.yaml)" in text
    assert "debug, info, warning, error, critical (default: info)" in text


def test_an_unknown_log_level_is_one_line_naming_the_choices_not_a_traceback() -> None:
    done = _idgate("serve", "--log-level", "loud", "--config", "/nonexistent/idgate.yaml")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "argument --log-level: invalid choice: 'loud' (choose from 'debug', 'info', 'warning', 'error', " \
           "'critical')" in done.stderr


def test_a_log_level_in_capitals_is_accepted() -> None:
    done = _idgate("serve", "--log-level", "WARNING", "--config", "/nonexistent/idgate.yaml")
    assert "--log-level" not in done.stderr         # refused for the missing config, not for the level
    assert "/nonexistent/idgate.yaml" in done.stderr
    assert done.returncode != 0
