"""The gateway benchmark's load generator, a process of its own on the load core: GetItem calls, each signed
just before it is sent (SigV4 by botocore, through proxy.aws.sigv4.resign as the tests sign), over
keep-alive connections, `concurrency` of them each making one call after another.  Only the round trip
is timed: signing is the client's cost, not the server's.

Protocol: one JSON job on stdin ({url, credentials, seconds, warmup, concurrency}); the client warms up,
prints `warm`, waits for a line on stdin, measures for `seconds` and prints one JSON line of figures in
the shape of bench._stack.WrkResult.as_dict().
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.aws.credentials import AwsCredentials
from proxy.aws.dynamodb.calls import CONTENT_TYPE, TARGET_PREFIX
from proxy.aws.sigv4 import resign

REGION = "us-east-1"
TENANT_KEY = "acme"
USER_AGENT = "Boto3/1.43 md/Botocore#1.43 bench/idgate-gateway"


def get_item_body(sort_key: str = "1") -> bytes:
    """A GetItem of the tenant's own item in `orders` (tests/harness/gateway.py's table and policy)."""
    return json.dumps({"TableName": "orders", "Key": {"pk": {"S": TENANT_KEY}, "sk": {"S": sort_key}}}).encode()


def signed_headers(url: str, body: bytes, credentials: AwsCredentials, *, now: float | None = None,
                   ) -> list[tuple[str, str]]:
    """A GetItem's headers as boto3 sends them: Content-Type, X-Amz-Target and the SDK's invocation id and
    attempt signed (with Host, X-Amz-Date, X-Amz-Security-Token), then the unsigned User-Agent and length."""
    headers = resign("POST", url, [("Content-Type", CONTENT_TYPE), ("X-Amz-Target", TARGET_PREFIX + "GetItem"),
                                   ("amz-sdk-invocation-id", str(uuid.uuid4())), ("amz-sdk-request", "attempt=1; max=1")],
                     body, credentials, region=REGION, service="dynamodb", now=now)
    return [*headers, ("User-Agent", USER_AGENT), ("Content-Length", str(len(body)))]


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)


def send(connection: http.client.HTTPConnection, url: str, body: bytes, headers: list[tuple[str, str]],
         ) -> tuple[int, bytes]:
    connection.request("POST", urlsplit(url).path or "/", body=body, headers=dict(headers))
    response = connection.getresponse()
    return response.status, response.read()


def credentials_of(job: dict[str, Any]) -> AwsCredentials:
    given = job["credentials"]
    return AwsCredentials(given["access_key_id"], given["secret_access_key"], given.get("session_token") or "",
                          time.time() + 3600)


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _calls(url: str, credentials: AwsCredentials, connection: http.client.HTTPConnection, deadline: float,
           tally: _Tally) -> None:
    """One connection's calls, one after another, until `deadline` (list.append is atomic under the GIL)."""
    body = get_item_body()
    while time.monotonic() < deadline:
        headers = signed_headers(url, body, credentials)
        started = time.perf_counter()
        try:
            status, _ = send(connection, url, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            tally.errors[type(exc).__name__] += 1
            connection.close()      # http.client reconnects on the next request
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[status] += 1


def _phase(url: str, credentials: AwsCredentials, connections: list[http.client.HTTPConnection],
           seconds: float) -> tuple[_Tally, float]:
    tally = _Tally()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_calls, args=(url, credentials, c, deadline, tally)) for c in connections]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - started


def figures(tally: _Tally, elapsed: float) -> dict[str, Any]:
    latencies = tally.latencies
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 3) if cuts else 0.0,
        "p99_ms": round(cuts[98] * 1000, 3) if cuts else 0.0,
        "requests": len(latencies),
        "non_2xx": sum(n for status, n in tally.statuses.items() if not 200 <= status < 300),
        "socket_errors": ", ".join(f"{name} {n}" for name, n in tally.errors.items()) or None,
    }


def main() -> int:
    job = json.loads(sys.stdin.readline())
    url, credentials = job["url"], credentials_of(job)
    connections = [connect(url) for _ in range(job["concurrency"])]
    _phase(url, credentials, connections, job["warmup"])
    print("warm", flush=True)
    sys.stdin.readline()
    tally, elapsed = _phase(url, credentials, connections, job["seconds"])
    print(json.dumps(figures(tally, elapsed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
