import logging
import threading

import pytest
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from proxy import logs

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJldGwifQ.c2lnbmF0dXJl"
server_log = logging.getLogger("aiohttp.server")


def log_from_aiohttp(exc: BaseException) -> None:
    """What aiohttp's RequestHandler does with an exception around a request (log_exception)."""
    try:
        raise exc
    except BaseException as raised:
        server_log.exception("Error handling request from %s", "10.1.2.3", exc_info=raised)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_parser_refusal_from_aiohttp_is_info_with_the_peer_and_without_the_bytes(json_logs):
    out = json_logs("info")
    log_from_aiohttp(BadHttpMessage(f"Invalid header value char: b'Authorization: Bearer {TOKEN}\\x01'"))
    log_from_aiohttp(LineTooLong(b"GET /" + TOKEN.encode(), "8190"))
    assert TOKEN not in out.text and "eyJ" not in out.text
    first, second = out.lines()
    assert first == {**first, "level": "info", "msg": "request refused by the HTTP parser", "peer": "10.1.2.3",
                     "refused": "BadHttpMessage"} and "exc" not in first
    assert second["refused"] == "LineTooLong" and second["level"] == "info"


@pytest.mark.parametrize("exc", [ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(),
                                 ClientConnectionResetError("Cannot write to closing transport"),
                                 ConnectionError("Connection lost")])
def test_a_client_disconnect_from_aiohttp_is_debug(json_logs, exc):
    out = json_logs("info")
    log_from_aiohttp(exc)
    assert out.text == ""                       # below info: not a line at all
    out = json_logs("debug")
    log_from_aiohttp(exc)
    [line] = out.lines()
    assert line == {**line, "level": "debug", "msg": "client disconnected", "disconnect": type(exc).__name__}
    assert "exc" not in line


def test_a_handler_crash_from_aiohttp_is_an_error_with_its_traceback_and_no_token(json_logs):
    out = json_logs("info")
    log_from_aiohttp(ValueError(f"bug with headers [('authorization', 'Bearer {TOKEN}'), "
                                f"('x-amz-security-token', 'IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH')]"))
    logging.getLogger("idgate").info("served", extra={"port": 8080})
    assert TOKEN not in out.text and "IQoJb3JpZ2lu" not in out.text
    crash, served = out.lines()
    assert crash["level"] == "error" and crash["msg"] == "Error handling request from 10.1.2.3"
    assert "Traceback (most recent call last)" in crash["exc"] and "ValueError: bug with headers" in crash["exc"]
    assert "[redacted]" in crash["exc"]
    assert served == {**served, "msg": "served", "port": 8080, "level": "info"}


def test_extra_fields_and_arguments_are_redacted_too(json_logs):
    out = json_logs("info")
    logging.getLogger("idgate").warning("refused %s", f"Authorization: Bearer {TOKEN}",
                                        extra={"header": f"Bearer {TOKEN}", "body": {"SessionToken": "FwoGZXIvYXdz"}})
    assert TOKEN not in out.text and "FwoGZXIvYXdz" not in out.text
    [line] = out.lines()
    assert line["msg"] == "refused Authorization: [redacted]" and line["header"] == "Bearer [redacted]"


@pytest.mark.parametrize(("text", "expected"), [
    (f"b'Authorization: Bearer {TOKEN}\\x01'", "b'Authorization: [redacted]\\x01'"),
    (f"{{'Authorization': 'Bearer {TOKEN}', 'Host': 'a'}}", "{'Authorization': '[redacted]', 'Host': 'a'}"),
    ("[(b'X-Amz-Security-Token', b'IQoJb3J+/==')]", "[(b'X-Amz-Security-Token', b'[redacted]')]"),
    ('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG", "AccessKeyId": "ASIA1"}',
     '{"SecretAccessKey": "[redacted]", "AccessKeyId": "ASIA1"}'),
    ("<SessionToken>FwoGZXIv</SessionToken>", "<SessionToken>[redacted]</SessionToken>"),
    ("/cb?code=c&id_token=x.y.z&client_secret=shh", "/cb?code=c&id_token=[redacted]&client_secret=[redacted]"),
    ("authorization=Basic dXNlcjpwYXNz&x=1", "authorization=[redacted]&x=1"),
    (f"token {TOKEN} in text", "token [redacted] in text"),
    ("Bearer abc.def", "Bearer [redacted]"),
    ("audit batch of 3 record(s) not written: [Errno 28] No space left on device", None),
    ("Authorization header missing", None),
])
def test_credentials_are_redacted_wherever_they_stand(text, expected):
    assert logs.redact(text) == (text if expected is None else expected)


# -- the rate limit ------------------------------------------------------------------------------------

audit_log = logging.getLogger("proxy.audit.log")


def test_a_thousand_identical_failures_are_a_handful_of_lines_and_one_count(json_logs):
    clock = Clock()
    out = json_logs("info", limit=logs.RateLimit(burst=5, interval=10.0, clock=clock))
    for _ in range(1000):
        audit_log.error("audit batch of %d record(s) not written: %s", 1, OSError(28, "No space left on device"))
    assert len(out.lines()) == 5
    clock.now += 10
    audit_log.error("audit batch of %d record(s) not written: %s", 1, OSError(28, "No space left on device"))
    lines = out.lines()
    assert len(lines) == 7
    summary = lines[5]
    assert summary == {**summary, "level": "error", "logger": "proxy.audit.log", "suppressed": 995}
    assert summary["msg"].startswith("995 identical log line(s) suppressed") and "not written" in summary["msg"]
    assert lines[6]["msg"].startswith("audit batch of 1 record(s) not written")


def test_a_window_that_ended_is_counted_on_any_later_line(json_logs):
    clock = Clock()
    out = json_logs("info", limit=logs.RateLimit(burst=2, interval=10.0, clock=clock))
    for _ in range(50):
        audit_log.error("audit log cannot be opened: %s", "disk full")
    clock.now += 11
    logging.getLogger("idgate").info("reloaded")
    assert [line["msg"] for line in out.lines()] == [
        "audit log cannot be opened: disk full", "audit log cannot be opened: disk full",
        "48 identical log line(s) suppressed in 10 s: audit log cannot be opened: %s", "reloaded"]


def test_different_keys_are_not_suppressed_together(json_logs):
    out = json_logs("info", limit=logs.RateLimit(burst=3, interval=10.0, clock=Clock()))
    idgate = logging.getLogger("idgate")
    for _ in range(100):
        audit_log.error("audit write failed")
        audit_log.warning("audit write failed")                 # another level
        idgate.error("audit write failed")                      # another logger
        audit_log.error("audit rotation failed")                # another template
        try:
            raise KeyError("k")
        except KeyError:
            audit_log.exception("audit write failed")           # another exception type
    assert len(out.lines()) == 5 * 3


def test_the_rate_limit_counts_every_line_from_many_threads(json_logs):
    clock = Clock()
    out = json_logs("info", limit=logs.RateLimit(burst=5, interval=10.0, clock=clock))

    def fail() -> None:
        for _ in range(500):
            audit_log.error("audit batch of %d record(s) not written: %s", 1, "full")

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clock.now += 10
    logging.getLogger("idgate").info("later")
    lines = out.lines()
    assert len(lines) == 7 and lines[5]["suppressed"] == 8 * 500 - 5


def test_debug_level_never_lets_aws_libraries_log_bodies(json_logs):
    out = json_logs("debug")
    logging.getLogger("botocore.parsers").debug("Response body: <SecretAccessKey>wJalrXUtnFEMI</SecretAccessKey>")
    logging.getLogger("urllib3.connectionpool").debug("https://sts.amazonaws.com:443 \"POST / HTTP/1.1\" 200")
    logging.getLogger("idgate").debug("idgate debug line")
    assert "wJalrXUtnFEMI" not in out.text and "sts.amazonaws.com" not in out.text
    assert "idgate debug line" in out.text


def test_a_crash_raised_while_handling_a_disconnect_is_still_a_crash(json_logs):
    out = json_logs("info")
    try:
        try:
            raise ConnectionResetError("upstream reset")
        except ConnectionResetError as reset:
            raise KeyError("a bug in the handler") from reset
    except KeyError as crash:
        log_from_aiohttp(crash)
    [line] = out.lines()
    assert line["level"] == "error" and "KeyError: 'a bug in the handler'" in line["exc"]
