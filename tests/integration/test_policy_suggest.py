"""`idgate suggest` on the audit of a real idgate serving real traffic: the proposed policy loads, allows
exactly what was allowed (paths generalized only where the observations justify it, with their
evidence), nothing the traffic did not do, and the rules and grants the window never used are listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.core.paths import normalize_path
from proxy.policy.store import compile_directory
from proxy.policy.testing import CaseIdentity
from tests.harness.paths import REPO
from tests.harness.stack import Stack


async def serve_traffic(stack: Stack) -> None:
    etl, web = stack.etl_token(), stack.web_token()
    for order in ("1", "2", "3", "4"):                   # four different orders: /v1/orders/* is justified
        async with await stack.get(f"/v1/orders/{order}", token=etl) as response:
            assert response.status == 200
    async with await stack.get("/v1/orders", token=etl) as response:
        assert response.status == 200
    async with await stack.get("/v1/orders/1", token=web) as response:    # denied: not a suggestion
        assert response.status == 403


def suggest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "suggest", *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


async def test_the_proposal_allows_exactly_the_observed_traffic(stack: Stack, tmp_path: Path) -> None:
    await serve_traffic(stack)
    await stack.idgate.settled()
    audit = stack.idgate.services.config.audit.path
    done = suggest("--audit", audit, "--policies", stack.idgate.services.config.policies_dir)
    assert done.returncode == 0, done.stderr
    proposed = tmp_path / "proposed"
    proposed.mkdir()
    (proposed / "suggested.yaml").write_text(done.stdout)
    policy = compile_directory(proposed)                       # what check-config would load
    [rule] = policy.rules
    issuer = stack.issuer.issuer.issuer_url
    assert rule.who.issuers == (issuer,) and rule.who.subjects == ("svc-etl-7",)
    assert [(g.hosts, g.methods, g.paths) for g in rule.http] == [
        (("orders.internal",), ("GET",), ("/v1/orders", "/v1/orders/*"))]
    assert '"/v1/orders/*"    # 4 request(s)' in done.stdout

    etl = CaseIdentity(issuer, "svc-etl-7").identity()
    web = CaseIdentity(issuer, "svc-web-1").identity()

    def allowed(identity, method: str, path: str) -> bool:
        return policy.decide_http(identity, method, "orders.internal", normalize_path(path)).allowed

    assert allowed(etl, "GET", "/v1/orders/99") and allowed(etl, "GET", "/v1/orders")
    assert not allowed(etl, "POST", "/v1/orders") and not allowed(etl, "GET", "/v1/orders/1/items")
    assert not allowed(etl, "HEAD", "/v1/orders/1") and not allowed(web, "GET", "/v1/orders/1")
    # The window's report: the reports rule was never used, nor the orders rule's HEAD grants.
    assert "rule 'data-eng-read-reports': not used in the window" in done.stderr
    # No worker took AWS credentials in the window: both AWS rules are candidates too.
    assert "rule 'etl-orders-table': not used in the window: aws role/etl orders GetItem,Query,PutItem,UpdateItem" \
        in done.stderr
    assert "rule 'etl-orders-gateway': not used in the window" in done.stderr
    assert "rule 'etl-read-orders': grants not used in the window: HEAD orders.internal /v1/orders; " \
           "HEAD orders.internal /v1/orders/**" in done.stderr


async def test_few_observations_are_not_generalized(stack: Stack) -> None:
    etl = stack.etl_token()
    for order in ("1", "2"):                                 # two values: below --min-distinct 3
        async with await stack.get(f"/v1/orders/{order}", token=etl) as response:
            assert response.status == 200
    await stack.idgate.settled()
    done = suggest("--audit", stack.idgate.services.config.audit.path)
    assert done.returncode == 0, done.stderr
    assert '"/v1/orders/1"' in done.stdout and '"/v1/orders/2"' in done.stdout and "*" not in done.stdout.split("rules:")[1]


def test_a_window_without_allowed_traffic_proposes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "audit.jsonl"
    empty.write_text("")
    done = suggest("--audit", empty)
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr


async def test_diff_with_an_audit_window_names_the_identities_seen(stack: Stack, tmp_path: Path) -> None:
    await serve_traffic(stack)                                   # svc-etl-7 and svc-web-1 (groups web) asked
    await stack.idgate.settled()
    old = stack.idgate.services.config.policies_dir
    new = tmp_path / "new"
    new.mkdir()
    for source in old.glob("*.yaml"):
        (new / source.name).write_text(source.read_text().replace("groups: [data-eng]", "groups: [data-eng, web]"))
    done = subprocess.run([sys.executable, "-m", "proxy", "diff", str(old), str(new), "--audit",
                           str(stack.idgate.services.config.audit.path), "--since", "1h"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    issuer = stack.issuer.issuer.issuer_url
    assert f"  issuer={issuer} subject=svc-web-1 groups=web client_id=idgate-demo" in lines, done.stdout
    seen = lines.index(f"  issuer={issuer} subject=svc-web-1 groups=web client_id=idgate-demo")   # from the audit, not from a rule
    assert "      + allow GET reports.internal /v1/reports" in lines[seen + 1:seen + 4]
