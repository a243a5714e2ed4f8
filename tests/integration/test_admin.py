"""Admin listener: health, readiness, metrics, assertion JWKS."""

from __future__ import annotations


async def test_health_ready_and_metrics(stack):
    async with stack.http.get(stack.idgate.admin_url + "/healthz") as response:
        assert response.status == 200
    async with stack.http.get(stack.idgate.admin_url + "/readyz") as response:
        body = await response.json()
        assert response.status == 200 and body["checks"] == {"policy": True, "issuers": True, "audit": True}
    token = stack.etl_token()
    await stack.get("/v1/orders/7", token=token)
    await stack.get("/v1/orders/7", token=token)  # same token: served from the verified-token cache
    await stack.get("/v1/orders/7", token=stack.web_token())
    async with stack.http.get(stack.idgate.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'idgate_requests_total{decision="allow",status="200",surface="proxy"} 2.0' in text
    assert 'idgate_requests_total{decision="deny",status="403",surface="proxy"} 1.0' in text
    assert 'idgate_token_cache_total{result="hit"} 1.0' in text
    assert "idgate_audit_append_seconds_count" in text
    assert "idgate_upstream_seconds_count" in text


async def test_admin_is_not_on_the_main_listener(stack):
    response = await stack.get("/metrics", token=stack.etl_token())
    assert response.status in (403, 404)
    assert "idgate_requests_total" not in await response.text()


async def test_metrics_show_audit_bytes_written_and_free_space(stack):
    await stack.get("/v1/orders/7", token=stack.etl_token())
    await stack.get("/v1/orders/" + "a" * 5000)              # a refusal: capped, so a small record
    await stack.idgate.settled()
    async with stack.http.get(stack.idgate.admin_url + "/metrics") as response:
        text = await response.text()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("idgate_audit_"))
    audit = stack.idgate.services.config.audit.path
    assert float(samples["idgate_audit_bytes_written_total"]) == audit.stat().st_size
    assert float(samples["idgate_audit_free_bytes"]) > 0


async def _error_shape(response) -> dict:
    body = await response.json()
    assert response.headers["Server"] == "idgate"
    assert response.content_type == "application/json"
    assert set(body) == {"code", "message", "request_id"}
    assert response.headers["X-Request-Id"] == body["request_id"]
    return body


async def test_admin_errors_have_the_main_listeners_shape_and_server_header(stack):
    main = await stack.get("/v1/orders/7")                        # no token: the main listener's 401
    assert main.status == 401
    await _error_shape(main)
    async with stack.http.get(stack.idgate.admin_url + "/no-such-page") as response:
        assert response.status == 404
        assert (await _error_shape(response))["code"] == "not_found"
    async with stack.http.post(stack.idgate.admin_url + "/metrics") as response:
        assert response.status == 405
        assert (await _error_shape(response))["code"] == "method_not_allowed"
    async with stack.http.get(stack.idgate.admin_url + "/healthz") as response:
        assert response.status == 200 and response.headers["Server"] == "idgate"
