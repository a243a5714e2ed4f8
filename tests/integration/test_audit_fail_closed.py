"""If the audit record cannot be made durable, nothing moves: 503 and no upstream call."""

from __future__ import annotations

import resource
import signal
from contextlib import contextmanager


@contextmanager
def file_size_limit(limit: int):
    """A real write failure that root cannot override: the kernel refuses writes past RLIMIT_FSIZE
    with EFBIG (SIGXFSZ ignored so the test process is not killed)."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


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
