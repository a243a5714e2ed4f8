"""Red team: audit shipping (issue 11).  Each test is one attack on the shipper, the sinks or
`idgate audit verify/query`, with real components (a running idgate, a moto server as CloudWatch
Logs and S3, the CLI as a subprocess) wherever the attack goes through them.  A test fails while
the weakness it names is there.  What was tried and held is listed in the red-team report."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.credentials import ReadOnlyCredentials

from proxy.audit import segment_files
from proxy.audit.aws_json import AwsJsonApi, ShipError
from proxy.audit.shipping import Shipper
from proxy.audit.chain import canonical
from proxy.audit.ship_state import load_ship_state
from proxy.audit.tail import ChainTail, ChainBreak, Position
from proxy.config import load_config
from proxy.core.errors import ConfigError
from tests.factories import minimal_config
from tests.harness.paths import REPO
from tests.harness.processes import HOST, eventually
from tests.harness.servers import serve_app, tcp_server
from tests.harness.shipping import (
    BUCKET, LOG_GROUP, ShippingTarget, prewrite_chain, write_anchor_key, write_rotated_segment,
)
from tests.harness.stack import Stack


# --- helpers ------------------------------------------------------------------------------------------

def idgate_cli(*args: str, moto_url: str) -> subprocess.CompletedProcess[str]:
    """`idgate audit ...` as an investigator runs it, against moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_ENDPOINT_URL_S3=moto_url, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=moto_url)
    return subprocess.run([sys.executable, "-m", "proxy", "audit", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def seal(record: dict[str, Any]) -> bytes:
    """A record line with its own hash recomputed: what anyone can do, the chain being unkeyed."""
    body = {k: v for k, v in record.items() if k != "hash"}
    digest = hashlib.sha256(body["prev"].encode() + canonical(body)).hexdigest()
    return canonical(body)[:-1] + b',"hash":"' + digest.encode() + b'"}'


def jws_payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def shipper(stack: Stack) -> Shipper:
    running = stack.idgate.services.shipper
    assert running is not None
    return running


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.idgate.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def readiness(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with stack.http.get(stack.idgate.admin_url + "/readyz") as response:
        return response.status, await response.json()


async def requests(stack: Stack, count: int) -> None:
    token = stack.etl_token()
    for i in range(count):
        assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
    await stack.idgate.settled()


def state_dir(audit_path: Path) -> Path:
    return audit_path.with_name(audit_path.name + ".shipping")


# --- 1. tampering that verify --anchors misses -------------------------------------------------------

async def test_s3_delete_markers_hide_a_cut_tail_and_its_anchors_from_verify(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """HIGH.  Object Lock protects object *versions*, not keys: s3:DeleteObject without a VersionId
    (which Object Lock allows) only adds a delete marker, and the locked version stays.  The S3 source
    lists current objects only (list_objects_v2, get_object), so hiding the newest segments and the
    newest anchors behind delete markers cuts the tail, and `verify --anchors` from S3 says ok."""
    shipping_target.create_bucket(object_lock=True)
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit={
        **shipping_target.audit_section(audit_path, cloudwatch=False, object_lock={"mode": "COMPLIANCE", "days": 1}),
        "rotate_bytes": 2048})
    await requests(stack, 24)
    rotated = segment_files(audit_path)[:-1]
    assert len(rotated) >= 3

    def segment_keys() -> list[str]:
        return sorted(k for k in shipping_target.keys() if k.endswith(".jsonl"))

    await eventually(lambda: len(segment_keys()) == len(rotated), "every rotated segment in S3")
    await shipper(stack).close()           # ships what is left (the live segment rotated too), anchors the last record
    rotated = segment_files(audit_path)[:-1]
    folder = f"s3://{BUCKET}/audit/node-1/"
    key = str(shipping_target.anchor_key)
    s3 = shipping_target.moto.client("s3")
    kept_last = int(segment_keys()[0].rsplit("-", 1)[1].split(".")[0])
    anchors = {k: jws_payload(shipping_target.object(k).decode())["seq"]
               for k in shipping_target.keys() if "/anchors/" in k}
    assert any(seq <= kept_last for seq in anchors.values()) and any(seq > kept_last for seq in anchors.values())
    # The intruder, with s3:DeleteObject only (no bypass, no version ids): delete markers.
    for k in segment_keys()[1:]:
        s3.delete_object(Bucket=BUCKET, Key=k)
    for k, seq in anchors.items():
        if seq > kept_last:
            s3.delete_object(Bucket=BUCKET, Key=k)
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="audit/node-1/")
    assert len(versions["Versions"]) == len(rotated) + len(anchors)     # every locked version is still there
    found = idgate_cli("verify", "--anchors", folder, "--anchor-key", key, folder, moto_url=shipping_target.moto.url)
    assert found.returncode == 1, (
        f"verify --anchors from S3 passed on a tail cut with delete markers (records after seq {kept_last} and "
        f"their anchors hidden, still locked as versions):\n{found.stdout}{found.stderr}")


async def test_query_shows_a_record_injected_into_the_stream_and_hides_the_genuine_one(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """MEDIUM.  An attacker with logs:PutLogEvents on the stream (no other right) puts a rewritten copy
    of a genuine record (other subject, hash recomputed, same seq and prev) with a timestamp 1 ms before
    it.  `audit query` checks each line's own hash only, never its link: the forgery is shown as the
    record, and the genuine one is dropped as a 'conflict'."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit=shipping_target.audit_section(audit_path, s3=False))
    await requests(stack, 3)
    durable = stack.idgate.services.audit.durable.seq
    await eventually(lambda: len(shipping_target.messages("node-1")) == durable, "every record in CloudWatch")
    logs = shipping_target.moto.client("logs")
    events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName="node-1", startFromHead=True)["events"]
    target = next(e for e in events if json.loads(e["message"])["event"] == "decision")
    genuine = json.loads(target["message"])
    forged = json.loads(target["message"])
    forged["identity"]["sub"] = "svc-intruder"
    line = seal(forged)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName="node-1",
                        logEvents=[{"timestamp": target["timestamp"] - 1, "message": line.decode()}])
    found = idgate_cli("query", f"cloudwatch://{LOG_GROUP}/node-1", "--request-id", genuine["request_id"],
                       "--event", "decision", "--format", "jsonl", moto_url=shipping_target.moto.url)
    shown = found.stdout.splitlines()
    # query reads records, it does not verify the chain: it cannot tell which of the two is the record,
    # so it hides neither and says so; verify --anchors tells (below).
    assert target["message"] in shown, f"query hides the genuine record:\n{found.stdout}{found.stderr}"
    assert "conflict" in found.stderr and "verify --anchors" in found.stderr
    stream = f"cloudwatch://{LOG_GROUP}/node-1"
    await shipper(stack).close()
    checked = idgate_cli("verify", "--anchors", stream, "--anchor-key", str(shipping_target.anchor_key), stream,
                         moto_url=shipping_target.moto.url)
    assert checked.returncode == 1, checked.stdout + checked.stderr


async def test_query_attributes_a_record_in_another_stream_to_the_instance_it_names(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """MEDIUM.  A stream of the attacker's own (logs:CreateLogStream + PutLogEvents in the group) holds a
    self-consistent record that says `"instance":"node-1"` and reuses a genuine seq.  Querying the group,
    the record is attributed to node-1 by its own field, its stream sorts first, so it is shown and
    node-1's genuine record of that seq is hidden as a conflict."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit=shipping_target.audit_section(audit_path, s3=False))
    await requests(stack, 2)
    durable = stack.idgate.services.audit.durable.seq
    await eventually(lambda: len(shipping_target.messages("node-1")) == durable, "every record in CloudWatch")
    genuine_line = shipping_target.messages("node-1")[0]
    forged = json.loads(genuine_line)
    forged["identity"]["sub"] = "svc-intruder"
    forged["prev"] = "0" * 64
    line = seal(forged)
    logs = shipping_target.moto.client("logs")
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName="a-intruder")
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName="a-intruder",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": line.decode()}])
    found = idgate_cli("query", f"cloudwatch://{LOG_GROUP}/", "--request-id", forged["request_id"],
                       "--event", "decision", "--format", "jsonl", moto_url=shipping_target.moto.url)
    shown = found.stdout.splitlines()
    assert line.decode() not in shown and genuine_line in shown, (
        f"a record from stream a-intruder is shown as node-1's, and node-1's own is hidden:\n{found.stdout}{found.stderr}")


# --- 2. CloudWatch timestamps and refused records -----------------------------------------------------

async def test_a_clock_step_forward_gets_every_later_record_refused_by_cloudwatch(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """MEDIUM-HIGH.  The host clock ran 3 h fast for a moment (then NTP stepped it back): the few records
    written meanwhile are legitimately 'too new'.  But the timestamp floor (made non-decreasing across
    batches and restarts) is now 3 h ahead, so every record written after the clock is right again is
    stamped 3 h ahead too and refused, for as long as the step was, each one into the gap ledger."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    write_rotated_segment(audit_path, 3, time.time() + 3 * 3600)
    stack: Stack = await make_stack(audit=shipping_target.audit_section(audit_path, s3=False))
    await requests(stack, 3)
    durable = stack.idgate.services.audit.durable.seq
    try:
        await eventually(lambda: {r["seq"] for r in shipping_target.records()} >= set(range(4, durable + 1)),
                         "the records written with a right clock in CloudWatch", timeout=8)
    except AssertionError as exc:
        gaps = (state_dir(audit_path) / "gaps.jsonl").read_text() if (state_dir(audit_path) / "gaps.jsonl").exists() else ""
        raise AssertionError(f"{exc}; CloudWatch holds seqs {[r['seq'] for r in shipping_target.records()]}, "
                             f"gap ledger:\n{gaps}") from None


async def test_retention_deletes_records_cloudwatch_refused_that_no_sink_holds(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """HIGH.  CloudWatch refuses records (too old here; too new after a clock step, above) and the
    shipper moves its checkpoint past them into the gap ledger: to `may_delete` they count as shipped.
    With CloudWatch as the only sink, retention then deletes the only copy of records that were never
    shipped anywhere (DESIGN/issue: 'deleted only when shipped and anchored')."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    old = write_rotated_segment(audit_path, 5, time.time() - 20 * 86400)
    stack: Stack = await make_stack(audit={**shipping_target.audit_section(audit_path, s3=False),
                                           "rotate_bytes": 2048, "max_segments": 1})
    await requests(stack, 8)
    await eventually(lambda: (state_dir(audit_path) / "gaps.jsonl").exists(), "the refused records in the ledger")
    await eventually(lambda: any(jws_payload(t)["seq"] > 5 for t in shipping_target.messages("node-1.anchors")),
                     "an anchor past them stored")
    await requests(stack, 12)                  # rotations: retention gets its chances
    ledger = [json.loads(g) for g in (state_dir(audit_path) / "gaps.jsonl").read_text().splitlines()]
    assert (ledger[0]["first_seq"], ledger[0]["last_seq"]) == (1, 5)
    assert {r["seq"] for r in shipping_target.records()}.isdisjoint(range(1, 6))   # in no sink
    assert old.exists(), ("retention deleted the segment of seqs 1..5, which CloudWatch refused "
                          f"(gap ledger {ledger[0]}) and no sink holds")


# --- 3. sinks that answer badly -----------------------------------------------------------------------

async def test_a_200_answer_that_is_no_putlogevents_answer_is_taken_as_acknowledged(
        make_stack: Any, aws_env: None, tmp_path: Path) -> None:
    """MEDIUM.  A CloudWatch endpoint that answers 200 with a body that is not a JSON object (a wrong
    endpoint, a captive or intercepting proxy's page) is taken as PutLogEvents' acknowledgement: the
    checkpoint moves past records that no CloudWatch holds, and retention may then delete them."""
    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with serve_app(app) as port:
        target = ShippingTarget(None, write_anchor_key(tmp_path))         # type: ignore[arg-type]
        audit_path = tmp_path / "audit" / "audit.jsonl"
        section = target.audit_section(audit_path, cloudwatch=False, s3=False)
        section["shipping"]["cloudwatch"] = {"log_group": LOG_GROUP, "endpoint": f"http://{HOST}:{port}"}
        stack: Stack = await make_stack(audit=section)
        await requests(stack, 3)
        await eventually(lambda: metric(stack, "idgate_audit_ship_failures_total", sink="cloudwatch",
                                        code="BadAnswer") >= 2, "the page refused as an answer, twice")
        checkpoint = state_dir(audit_path) / "cloudwatch.json"
        position = json.loads(checkpoint.read_text())["position"] if checkpoint.exists() else None
        assert position is None, f"records taken as shipped to CloudWatch by an HTML page: checkpoint {position}"


class DripServer:
    """An HTTP endpoint that starts a 200 answer and then sends one byte every half second: never idle
    for a read timeout, never done."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._stop = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
                         b"Content-Length: 1000000\r\n\r\n{")
            while not self._stop.is_set():
                writer.write(b" ")
                await writer.drain()
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.5)
                except TimeoutError:
                    pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self._stop.set()
        for writer in self._writers:
            writer.close()


@asynccontextmanager
async def drip_server() -> AsyncIterator[DripServer]:
    drip = DripServer()
    async with tcp_server(drip._serve) as drip.port:
        try:
            yield drip
        finally:
            drip.stop()


async def test_a_sink_that_drips_its_answer_holds_shutdown_past_every_bound(
        make_stack: Any, aws_env: None, tmp_path: Path) -> None:
    """MEDIUM.  audit.shipping.timeout is urllib3's per-read timeout: an endpoint that sends a byte
    every 0.5 s never trips it, and the shipper's close() first waits, unbounded, for the round in
    flight (asyncio.gather on the task stuck in the thread call), before CLOSE_TIMEOUT applies to
    anything.  Shutdown (SIGTERM) hangs as long as the endpoint likes."""
    async with drip_server() as drip:
        target = ShippingTarget(None, write_anchor_key(tmp_path))         # type: ignore[arg-type]
        audit_path = tmp_path / "audit" / "audit.jsonl"
        section = target.audit_section(audit_path, cloudwatch=False, s3=False, timeout=1)
        section["shipping"]["cloudwatch"] = {"log_group": LOG_GROUP, "endpoint": f"http://{HOST}:{drip.port}"}
        stack: Stack = await make_stack(audit=section)
        await requests(stack, 1)
        await eventually(lambda: drip.connections >= 1, "the shipper calling the endpoint")
        started = time.monotonic()
        closing = asyncio.ensure_future(shipper(stack).close())
        done, _ = await asyncio.wait({closing}, timeout=20)
        elapsed = time.monotonic() - started
        drip.stop()                            # let the stuck call end, so the test can tear down
        await closing
        assert done, f"the shipper's close() was still waiting after {elapsed:.0f}s (CLOSE_TIMEOUT 10 s, timeout 1 s)"


class _HugeAnswer(BaseHTTPRequestHandler):
    SIZE = 64 << 20

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(self.SIZE))
        self.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(self.SIZE >> 20):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def huge_answer_server() -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, 0), _HugeAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_huge_sink_answer_is_read_whole_into_memory() -> None:
    """LOW.  AwsJsonApi reads `response.content` and only then keeps MAX_ANSWER_BYTES (1 MiB) of it:
    an endpoint (or a proxy on its path) answering 64 MiB puts 64 MiB in the shipper's memory per
    call, and as much as it likes."""
    with huge_answer_server() as url:
        api = AwsJsonApi(service="logs", target_prefix="Logs_20140328", endpoint_url=url, region="us-east-1",
                         credentials=lambda: ReadOnlyCredentials("AKIDEXAMPLE", "secret", None), timeout=10)
        tracemalloc.start()
        try:
            with pytest.raises(ShipError, match="AnswerTooLarge"):
                api.call("PutLogEvents", b"{}")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            api.close()
    assert peak < 16 << 20, f"one answer took {peak >> 20} MiB of memory (MAX_ANSWER_BYTES is 1 MiB)"


# --- 4. the shipper's own state -----------------------------------------------------------------------

def test_an_anchors_file_over_64_mib_loses_its_newest_anchors_at_restart(tmp_path: Path) -> None:
    """MEDIUM.  Every anchor ever signed stays in anchors.jsonl and in memory; at start the file is read
    only up to MAX_ANCHORS_FILE_BYTES (64 MiB, ~120k anchors: ~80 days at the default 60 s interval) and
    the rest silently ignored.  The shipper then numbers its next anchor after an old one: S3 holds that
    number already (Conflict: S3 shipping halts) and the anchor chain no longer verifies."""
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"k","typ":"idgate-anchor+jws"}').rstrip(b"=")
    lines: list[bytes] = []
    size, prev, number = 0, "", 0
    while size <= (64 << 20) + 4096:                 # past what the shipper once read of the file
        number += 1
        payload = json.dumps({"hash": secrets.token_hex(32), "instance": "node-1", "n": number, "prev": prev,
                              "seq": number * 10, "time": "2026-01-01T00:00:00.000000Z"},
                             sort_keys=True, separators=(",", ":")).encode()
        signature = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=")
        line = header + b"." + base64.urlsafe_b64encode(payload).rstrip(b"=") + b"." + signature + b"\n"
        lines.append(line)
        size += len(line)
        prev = signature.decode()
    (tmp_path / "anchors.jsonl").write_bytes(b"".join(lines))
    state = load_ship_state(tmp_path)
    assert state.last_anchor is not None
    assert state.last_anchor.number == number, (
        f"the shipper resumes after anchor {state.last_anchor.number}, not {number}: its next anchor reuses "
        f"number {state.last_anchor.number + 1}")


def test_a_checkpoint_whose_seq_and_hash_disagree_is_not_trusted(tmp_path: Path) -> None:
    """LOW.  A checkpoint is located by its hash, but its seq is taken on trust: with seq 2 and the hash
    of record 5, the tail yields record 6 labelled seq 3 (records 3..5 silently skipped, every later
    seq off by 3, in the checkpoints and for may_delete).  With the seq too high instead, may_delete
    counts records as shipped that are not."""
    audit_path = tmp_path / "audit.jsonl"
    prewrite_chain(audit_path, 10, lambda i: {"event": "decision", "i": i})
    lines = audit_path.read_bytes().splitlines(keepends=True)
    fifth = json.loads(lines[4])
    crafted = Position(audit_path.name, sum(len(x) for x in lines[:5]), 2, fifth["hash"])
    try:
        records = ChainTail(audit_path).read(crafted, 10, max_records=100, max_bytes=1 << 20)
    except ChainBreak:
        return                                  # refused: what it should do
    first = records[0]
    assert first.seq == json.loads(first.line)["seq"], (
        f"the tail labels the record {json.loads(first.line)['seq']} as seq {first.seq}")


async def test_a_checkpoint_with_a_huge_offset_stops_idgate_at_start_naming_the_file(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """An offset past what seek() takes (2**70) once raised ValueError in every round, stopping S3 and the
    anchors too while /readyz said ready.  A checkpoint that is not one idgate writes now stops the start,
    with the file named: guessing a position could lose records or flood a sink with copies."""
    shipping_target.create_bucket()
    audit_path = tmp_path / "audit" / "audit.jsonl"
    prewrite_chain(audit_path, 5, lambda i: {"event": "decision", "i": i})
    fifth = json.loads(audit_path.read_bytes().splitlines()[4])
    state_dir(audit_path).mkdir()
    (state_dir(audit_path) / "cloudwatch.json").write_text(json.dumps({
        "position": {"segment": audit_path.name, "offset": 2 ** 70, "seq": 5, "hash": fifth["hash"]},
        "floor_ms": 0, "anchor_floor_ms": 0, "anchor": 0}))
    with pytest.raises(ConfigError) as refused:
        await make_stack(audit={**shipping_target.audit_section(audit_path), "rotate_bytes": 2048})
    assert "cloudwatch.json" in str(refused.value.problems[0]) and "not a shipping position" in str(refused.value.problems[0])


async def test_a_record_too_large_for_cloudwatch_at_the_tail_spins_the_shipper(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """LOW (needs a record over 256 KiB: not one a client can make, caps hold, but a local writer or a
    later record type can).  When the newest record is too large for an event, no batch is sent, the
    checkpoint stays, and the round says 'more to do': the shipper re-reads it at once, forever, writing
    (and fsyncing) a gap-ledger entry and a warning each time, until some other record comes."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    prewrite_chain(audit_path, 3, lambda i: {"event": "decision", "i": i, **({"blob": "x" * 300_000} if i == 2 else {})})
    stack: Stack = await make_stack(audit=shipping_target.audit_section(audit_path, s3=False))
    # The checkpoint must move past the record once it is in the ledger (then the shipper goes idle).
    await eventually(lambda: shipper(stack).status()["sinks"]["cloudwatch"]["lag_records"] == 0,
                     "the checkpoint past the too-large record")
    await requests(stack, 1)                   # later records still ship, past it
    await eventually(lambda: len(shipping_target.messages("node-1")) == stack.idgate.services.audit.durable.seq - 1,
                     "every other record in CloudWatch")
    ledger = (state_dir(audit_path) / "gaps.jsonl").read_text().splitlines()
    assert [(json.loads(g)["first_seq"], json.loads(g)["reason"]) for g in ledger] == [(3, "too_large")]


# --- 5. configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("instance", "prefix", "why"), [
    ("node-1.anchors", "audit/", "its record stream is node-1's anchors stream, and verify refuses to read it"),
    ("anchors", "audit/", "its S3 segments are read back as the anchors of a chain named after the prefix"),
    ("node-1", "audit/anchors/", "every instance's S3 segments are read back as anchors"),
])
def test_names_that_collide_with_the_anchor_layout_are_refused(tmp_path: Path, instance: str, prefix: str,
                                                               why: str) -> None:
    """LOW.  The instance id and S3 prefix checks allow names that the anchor layout uses: a stream
    `<instance>.anchors` and an S3 folder `anchors/`."""
    key = write_anchor_key(tmp_path)
    path = minimal_config(tmp_path, f"""\
        audit:
          instance: {instance}
          shipping:
            anchors: {{key_file: {key}}}
            cloudwatch: {{log_group: /idgate/audit}}
            s3: {{bucket: idgate-audit, prefix: "{prefix}"}}
        """)
    with pytest.raises(ConfigError):
        load_config(path, env={})
        pytest.fail(f"instance {instance!r} with prefix {prefix!r} accepted: {why}")


async def test_an_anchor_overwritten_by_a_new_version_is_reported_and_the_first_version_read(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """Object Lock keeps the first version; a PutObject over the key adds a newer one that a reader of
    current objects would take.  The S3 source reads the first version and says the key was written twice."""
    shipping_target.create_bucket(object_lock=True)
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit={
        **shipping_target.audit_section(audit_path, cloudwatch=False, object_lock={"mode": "COMPLIANCE", "days": 1}),
        "rotate_bytes": 2048})
    await requests(stack, 12)
    await eventually(lambda: len([k for k in shipping_target.keys() if "/anchors/" in k]) >= 2, "anchors in S3")
    await shipper(stack).close()
    anchors = sorted(k for k in shipping_target.keys() if "/anchors/" in k)
    s3 = shipping_target.moto.client("s3")
    s3.put_object(Bucket=BUCKET, Key=anchors[-1], Body=shipping_target.object(anchors[0]),
                  ChecksumAlgorithm="SHA256")      # an old anchor's token under the newest number
    folder = f"s3://{BUCKET}/audit/node-1/"
    found = idgate_cli("verify", "--anchors", folder, "--anchor-key", str(shipping_target.anchor_key),
                       *[str(p) for p in segment_files(audit_path)], moto_url=shipping_target.moto.url)
    assert found.returncode == 1
    assert "2 versions of a key idgate writes once" in found.stderr
