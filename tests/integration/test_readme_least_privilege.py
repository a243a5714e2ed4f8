"""README "Least privilege in practice", run as written: its `idgate test` and `idgate diff` blocks in a
shell at the top of the checkout (only /tmp/proposed moved into the test's own directory), printing what
the README says they print."""

from __future__ import annotations

import re
import subprocess

from tests.harness.paths import REPO

SECTION = (REPO / "README.md").read_text().split("## Least privilege in practice", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", SECTION, flags=re.S | re.M)
SH_BLOCKS = [text for kind, text in BLOCKS if kind == "sh"]
PRINTED = [text for kind, text in BLOCKS if kind == ""]


def run(block: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", block.replace("/tmp/proposed", str(tmp_path / "proposed"))], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_test_block_prints_what_its_comment_says(tmp_path):
    [block] = [b for b in SH_BLOCKS if "idgate test" in b]
    done = run(block, tmp_path)
    assert done.returncode == 0, done.stderr
    promised = block.split("# ", 1)[1].strip()
    assert done.stdout.strip() == promised


def test_the_diff_block_prints_the_lines_the_readme_shows(tmp_path):
    [block] = [b for b in SH_BLOCKS if "idgate diff" in b]
    done = run(block, tmp_path)
    assert done.returncode == 1, done.stderr                    # "exit 1: access changes"
    printed = done.stdout.replace(str(tmp_path / "proposed"), "/tmp/proposed").splitlines()
    [shown] = [p for p in PRINTED if p.startswith("rules:")]
    expected = [line for line in shown.splitlines() if line.strip() != "..."]
    # The README leaves identities out ("..."): every line it shows is printed, in the same order.
    at = 0
    for line in expected:
        assert line in printed[at:], (line, printed)
        at = printed.index(line, at) + 1


def test_the_suggest_block_names_real_options(tmp_path):
    [block] = [b for b in SH_BLOCKS if "idgate suggest" in b]
    (tmp_path / "none.jsonl").touch()
    command = block.split(">")[0].replace("--audit .demo/audit/idgate-audit.jsonl", f"--audit {tmp_path / 'none.jsonl'}")
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr                     # nothing allowed in an empty window
    assert "unrecognized arguments" not in done.stderr and "Traceback" not in done.stderr
