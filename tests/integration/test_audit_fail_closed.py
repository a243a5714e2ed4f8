"""If the audit record cannot be made durable, nothing moves: 503 and no upstream call."""

from __future__ import annotations

from tests.harness.faults import file_size_limit


async def test_audit_write_failure_fails_closed_then_recovers(stack):
    assert (await stack.get("/v1/orders/1", token=stack.etl_token())).status == 200
    audit_path = stack.idgate.services.config.audit.path
    before = len(stack.upstream.received)
    with file_size_limit(audit_path.stat().st_size + 10):
        response = await stack.get("/v1/orders/2", token=stack.etl_token())
        assert response.status == 503
        assert (await response.json())["code"] == "unavailable"
        assert len(stack.upstream.received) == before
        async with stack.http.get(stack.idgate.admin_url + "/readyz") as ready:
            assert ready.status == 503
    # Disk back: requests flow again and the chain is intact.
    assert (await stack.get("/v1/orders/3", token=stack.etl_token())).status == 200
    from proxy.audit import verify_files
    report = verify_files([audit_path])
    assert report.ok, report.problems
    assert "/v1/orders/2" not in audit_path.read_text()
