"""The README's "Why was a request denied?" walkthrough, its shell block run as printed against a real idgate
(the harness's development issuer, upstream and idgate with the example policies, as `make demo` runs them):
the 403's request id leads `idgate audit query` to that request's record and to the reason idgate denied it
for, and to no other request's.  Only the demo's fixed addresses and its .demo/ directory are replaced by
this test's free ports and temporary directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from proxy.core.reasons import Reason
from tests.harness.stack import Stack

REPO = Path(__file__).resolve().parents[2]
DEMO_ISSUER, DEMO_IDGATE = "http://127.0.0.1:9400", "http://127.0.0.1:8080"


def readme_block() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    [block] = [b for b in blocks if "--request-id" in b and ".demo/audit/" in b]
    return block


async def run_shell(commands: str) -> tuple[int, str, str]:
    """bash in the checkout, as an operator's terminal (.venv/bin/idgate), without blocking idgate's loop."""
    shell = await asyncio.create_subprocess_exec("bash", "-euo", "pipefail", "-c", commands, cwd=REPO,
                                                 env=dict(os.environ), stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await shell.communicate()
    assert shell.returncode is not None
    return shell.returncode, out.decode(), err.decode()


async def test_the_readme_goes_from_a_403_to_its_audit_record_and_reason(stack: Stack, tmp_path: Path) -> None:
    # Other requests first, so that the query has something to leave out: an allow and a 401.
    assert (await stack.get("/v1/orders/7", token=stack.etl_token())).status == 200
    assert (await stack.get("/v1/orders/7")).status == 401
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    audit_dir = stack.idgate.services.config.audit.path.parent
    block = readme_block()
    assert DEMO_ISSUER in block and DEMO_IDGATE in block
    commands = (block.replace(DEMO_ISSUER, stack.issuer.issuer.issuer_url).replace(DEMO_IDGATE, stack.idgate.url)
                .replace(".demo/audit/", f"{audit_dir}/").replace(".demo/", f"{demo_dir}/"))

    code, out, err = await run_shell(commands)

    assert code == 0, err
    body_line, *table = out.splitlines()
    body = json.loads(body_line)                        # what the caller got, and quotes to the operator
    assert body["code"] == "forbidden"
    records = await stack.idgate.audit_records()
    [decision] = [r for r in records if r["request_id"] == body["request_id"] and r["event"] == "decision"]
    assert decision["decision"] == "deny" and decision["identity"]["sub"] == "svc-web-1"
    reason = decision["reasons"][0]
    assert reason == Reason.NO_MATCHING_RULE.value       # svc-web-1 has no rule for orders
    header, *rows = table
    assert header.split()[:6] == ["time", "instance", "seq", "event", "result", "rule"]
    assert rows and all(f"deny:{reason}" in row.split() for row in rows), out
    assert all("svc-web-1" in row for row in rows)
    # Exactly that request's records: its decision (and its outcome, when it has one), no other request's.
    assert len(rows) == len([r for r in records if r["request_id"] == body["request_id"]])
