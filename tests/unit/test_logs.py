import io
import json
import logging

from proxy import logs


def test_parser_errors_are_logged_without_the_offending_bytes():
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        raise ValueError("Invalid header value char: b'Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig\\x01'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    logging.getLogger("idgate").info("served", extra={"port": 8080})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "eyJ" not in stream.getvalue()
    assert lines[0]["msg"] == "request refused by the HTTP parser" and lines[0]["refused"] == "ValueError"
    assert lines[1] == {**lines[1], "msg": "served", "port": 8080, "level": "info"}


def test_debug_level_never_lets_aws_libraries_log_bodies():
    stream = io.StringIO()
    logs.configure("debug", stream)
    logging.getLogger("botocore.parsers").debug("Response body: <SecretAccessKey>wJalrXUtnFEMI</SecretAccessKey>")
    logging.getLogger("urllib3.connectionpool").debug("https://sts.amazonaws.com:443 \"POST / HTTP/1.1\" 200")
    logging.getLogger("idgate").debug("idgate debug line")
    assert "wJalrXUtnFEMI" not in stream.getvalue() and "sts.amazonaws.com" not in stream.getvalue()
    assert "idgate debug line" in stream.getvalue()
