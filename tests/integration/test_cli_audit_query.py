"""`idgate audit query` as an investigator runs it (a subprocess): exit statuses, the table and the exact
lines, the route from the configuration, and every bad option value, source or line answered with one
clear line on stderr and never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import gateway_decision, gateway_outcome, http_decision
from tests.harness.moto import MotoServer
from tests.harness.processes import free_port
from tests.harness.segments import sealed_lines
from tests.harness.servers import write_config

REPO = Path(__file__).resolve().parents[2]
PRINTABLE = re.compile(r"[ -~\n]*")


def query(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "audit", "query", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def aws_env(moto_url: str | None, **extra: str) -> dict[str, str]:
    """boto3's settings and nothing else of the runner's AWS environment: moto's test keys, its endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1", **extra)
    if moto_url is not None:
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   # boto3 names a service's endpoint variable by its service id: "CloudWatch Logs", not "logs".
                   AWS_ENDPOINT_URL_S3=moto_url, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=moto_url)
    return env


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2, and the one line on stderr says `message`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    """A segment of two gateway calls (acme's, globex's) and a reverse-proxy request to each route."""
    records = [gateway_decision("r1", sub="svc-etl-acme", keys=("acme",)), gateway_outcome("r1"),
               gateway_decision("r2", sub="svc-etl-globex", keys=("globex",)), gateway_outcome("r2", items=(("globex", "1"),)),
               http_decision("h1", host="orders.internal"), http_decision("h2", host="reports.internal")]
    path = tmp_path / "audit" / "idgate-audit.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"".join(line + b"\n" for line in sealed_lines(records)))
    return path


def test_matches_are_a_table_by_default_and_the_exact_lines_as_jsonl(audit: Path) -> None:
    result = query(str(audit), "--key", "acme")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["time", "instance", "seq", "event", "result", "rule", "identity", "surface", "target", "keys"]
    assert len(rows) == 2 and all("svc-etl-acme" in row and "GetItem orders" in row for row in rows)
    assert result.stderr == "audit query: 2 record(s) shown of 6 read from 1 chain(s)\n"
    lines = query(str(audit), "--key", "acme", "--format", "jsonl").stdout.encode().splitlines()
    assert lines == audit.read_bytes().splitlines()[:2]


def test_no_match_is_exit_status_1_and_no_header(audit: Path) -> None:
    result = query(str(audit), "--subject", "nobody")
    assert (result.returncode, result.stdout) == (1, "")
    assert "0 record(s) shown of 6" in result.stderr


def test_route_is_resolved_with_the_configuration(audit: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, issuer="http://127.0.0.1:9400", audience="a", upstream_port=1,
                          policies=REPO / "policies")
    result = query(str(audit), "-c", str(config), "--route", "reports", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["request_id"] for line in result.stdout.splitlines()] == ["h2"]


def test_a_malformed_line_is_reported_at_its_line_and_the_rest_still_answers(audit: Path) -> None:
    lines = audit.read_bytes().splitlines()
    audit.write_bytes(b"\n".join([lines[0], b'{"torn', *lines[1:]]) + b"\n")
    result = query(str(audit), "--key", "acme", "--format", "jsonl")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert result.stderr.splitlines() == [f"{audit}:2: bad JSON (Unterminated string starting at: line 1 column 2 (char 1))",
                                          "audit query: 2 record(s) shown of 6 read from 1 chain(s), "
                                          "1 malformed line(s) skipped"]


def test_a_hostile_record_cannot_reach_the_terminal_raw(tmp_path: Path) -> None:
    path = tmp_path / "idgate-audit.jsonl"
    evil = gateway_decision(sub="\x1b]0;pwned\x07\x1b[2J\r\u202eadmin", keys=("acme\x1b[8m",))
    path.write_bytes(sealed_lines([evil])[0] + b"\n" + b"\x1b[31m\r\n")
    result = query(str(path))
    assert result.returncode == 0
    assert PRINTABLE.fullmatch(result.stdout) and PRINTABLE.fullmatch(result.stderr)
    assert "\\x1b]0;pwned\\x07" in result.stdout and f"{path}:2: bytes outside printable ASCII" in result.stderr


@pytest.mark.parametrize(("records", "reader", "lines"), [(5000, "head -n 2", 2), (20, "true", 0)])
def test_a_reader_that_stops_early_is_no_error(tmp_path: Path, records: int, reader: str, lines: int) -> None:
    """While rows are being written, or at the last flush (a few rows, a reader that reads nothing)."""
    path = tmp_path / "idgate-audit.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in sealed_lines([http_decision(f"h{i}") for i in range(records)])))
    result = subprocess.run(f"{sys.executable} -m proxy audit query {path} | {reader}", shell=True, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == lines and result.stderr == ""


# --- each bad input: one line -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("--decision", "maybe"), "argument --decision: invalid choice: 'maybe' (choose from 'allow', 'deny') (see --help)"),
    (("--surface", "ftp"), "argument --surface: invalid choice: 'ftp'"),
    (("--event", "both"), "argument --event: invalid choice: 'both'"),
    (("--format", "xml"), "argument --format: invalid choice: 'xml'"),
    (("--since", "yesterday"), "--since/--until: 'yesterday' is not an ISO 8601 date or timestamp, nor a duration"),
    (("--until", "7 days"), "'7 days' is not an ISO 8601 date or timestamp"),
    (("--route", "orders"), "--route needs the configuration (-c idgate.yaml)"),
])
def test_a_bad_option_value_is_one_line(audit: Path, args: tuple[str, ...], message: str) -> None:
    refused(query(str(audit), *args), message)


def test_no_source_is_one_line() -> None:
    refused(query(), "the following arguments are required: SOURCE")


def test_an_unknown_route_is_one_line(audit: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, issuer="http://127.0.0.1:9400", audience="a", upstream_port=1,
                          policies=REPO / "policies")
    refused(query(str(audit), "-c", str(config), "--route", "billing"), f"--route: no route named 'billing' in {config}")


def test_a_configuration_that_does_not_load_names_its_file(audit: Path, tmp_path: Path) -> None:
    result = query(str(audit), "-c", str(tmp_path / "missing.yaml"), "--key", "acme")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(tmp_path / "missing.yaml") in result.stderr


@pytest.mark.parametrize(("source", "message"), [
    ("gs://bucket/audit", "gs://bucket/audit: unknown kind of source"),
    ("/nonexistent/idgate-audit.jsonl", "/nonexistent/idgate-audit.jsonl: no such file or directory"),
    ("/proc/self/mem", "/proc/self/mem: cannot read (Input/output error)"),
    ("s3://", "s3://: an S3 source is s3://BUCKET[/PREFIX]"),
])
def test_a_bad_local_source_is_one_line(source: str, message: str) -> None:
    refused(query(source), message)


def test_an_empty_directory_is_one_line(tmp_path: Path) -> None:
    refused(query(str(tmp_path)), f"{tmp_path}: no audit segments here")


def test_a_bad_source_is_refused_before_anything_is_shown(audit: Path) -> None:
    result = query(str(audit), "/nonexistent")
    assert result.stdout == ""
    refused(result, "/nonexistent: no such file or directory")


def test_s3_and_cloudwatch_failures_are_one_line(moto: MotoServer) -> None:
    refused(query("s3://no-such-bucket-here/audit/", env=aws_env(moto.url)),
            "s3://no-such-bucket-here/audit/: NoSuchBucket: The specified bucket does not exist")
    refused(query("cloudwatch:///idgate/audit/host-a", env=aws_env(moto.url)),
            "cloudwatch:///idgate/audit/host-a: ResourceNotFoundException: The specified log group does not exist.")


def test_missing_aws_credentials_are_one_line() -> None:
    refused(query("s3://idgate-audit/audit/", env=aws_env(None)), "s3://idgate-audit/audit/: Unable to locate credentials")


def test_an_unreachable_endpoint_is_one_line() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = query("s3://idgate-audit/audit/", env=aws_env(None, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
                                                               AWS_ENDPOINT_URL_S3=closed))
    refused(result, f's3://idgate-audit/audit/: Could not connect to the endpoint URL: "{closed}/idgate-audit')


def test_an_s3_prefix_answers_like_the_files(moto: MotoServer, audit: Path) -> None:
    s3 = moto.client("s3")
    s3.create_bucket(Bucket="idgate-audit")
    s3.put_object(Bucket="idgate-audit", Key="audit/idgate-audit/000000000001-000000000006.jsonl", Body=audit.read_bytes())
    local = query(str(audit), "--key", "acme", "--format", "jsonl")
    remote = query("s3://idgate-audit/audit/", "--key", "acme", "--format", "jsonl", env=aws_env(moto.url))
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and len(local.stdout.splitlines()) == 2
    both = query(str(audit), "s3://idgate-audit/audit/", "--key", "acme", "--format", "jsonl", env=aws_env(moto.url))
    assert both.stdout == local.stdout                                   # shipped copies dropped
    assert "6 duplicate(s) dropped" in both.stderr
