"""load_config: strict decode plus validation, every problem with file and line, all at once.

Bad-input fixtures in tests/data/config mark each expected problem on its line with
`# ERROR: <text>`; a test passes only if exactly those problems, at exactly those lines, are reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from proxy.config import AuditConfig, Config, IssuerConfig, check_config, load_config
from proxy.config.audit_checks import default_instance
from proxy.config.schema import ENV_ASSERTION_KEY_FILE, ENV_AUDIT_PATH
from proxy.core.hosts import is_loopback
from proxy.core.errors import ConfigError, ConfigProblem
from tests.harness.paths import POLICIES, TEST_DATA
from tests.factories import minimal_config as write_config

DATA = TEST_DATA / "config"
_MARK = re.compile(r"ERROR(?:\(([^)]*)\))?:\s*(.*?)\s*(?=ERROR|$)")


def expected_marks(path: Path) -> list[tuple[int, str]]:
    """(line, text) for every `# ERROR: text` marker in a fixture file."""
    marks = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if "# ERROR" in line:
            marks += [(number, m.group(2)) for m in _MARK.finditer(line.split("# ", 1)[1])]
    return marks


def assert_exactly(problems: tuple[ConfigProblem, ...], path: Path) -> None:
    remaining = list(problems)
    for line, text in expected_marks(path):
        match = next((p for p in remaining if p.line == line and text in p.message), None)
        assert match is not None, f"no problem at {path.name}:{line} containing {text!r} in {remaining}"
        assert match.file == str(path)
        assert f"{path}:{line}:" in str(match)
        remaining.remove(match)
    assert remaining == [], f"unexpected problems: {remaining}"



def test_full_example_loads_with_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ASSERTION_KEY_FILE, raising=False)
    monkeypatch.delenv(ENV_AUDIT_PATH, raising=False)
    path = DATA / "full.yaml"
    config = load_config(path)
    assert config.source == path
    assert (config.listen.host, config.listen.port, config.listen.tls) == ("127.0.0.1", 8080, None)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9090)
    assert config.limits.header_timeout == 10.0 and isinstance(config.limits.header_timeout, float)
    demo, prod = config.issuers
    assert demo == IssuerConfig(
        issuer="http://127.0.0.1:9400", audiences=("orders-api", "reports-api"), algorithms=("RS256", "ES256"),
        leeway=30.0, require_typ="at+jwt", allowed_client_ids=("svc-etl-7", "svc-web-1"), groups_claim="groups",
        max_token_bytes=8192, max_age=3600.0, refresh_interval=300.0, unknown_kid_min_interval=60.0,
        max_stale=86400.0)
    assert prod.jwks_uri == "https://login.example.com/realms/prod/protocol/openid-connect/certs"
    assert prod.algorithms == ("PS256", "EdDSA") and prod.max_age is None
    assert config.policies_dir.resolve() == POLICIES.resolve()
    orders, reports = config.routes
    assert orders.hosts == ("orders.internal",)   # lower-cased
    assert (orders.upstream, orders.path_prefix, orders.connect_timeout) == ("http://127.0.0.1:8001", "/v1/orders", 5.0)
    assert reports.websocket is True and reports.path_prefix == "/"
    assert config.forward_auth.path == "/.idgate/auth"
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert config.audit.path == DATA.absolute() / "audit/idgate-audit.jsonl"
    assert config.audit.group_commit_max_delay == 0.002
    assert config.assertion.key_file is None and config.assertion.ttl == 60.0
    assert config.token_cache_size == 10000 and config.dev_mode is True


def test_defaults_fill_everything_optional(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""), env={})
    # The one default that is not a constant: the audit's instance id is the host name.
    assert config == Config(source=tmp_path / "idgate.yaml", issuers=config.issuers,
                            policies_dir=tmp_path / "policies", audit=AuditConfig(instance=default_instance()))


@pytest.mark.parametrize("name", [
    "unknown-keys.yaml", "wrong-types.yaml", "issuer-without-audiences.yaml", "duplicate-key.yaml",
    "bad-syntax.yaml", "invalid-values.yaml", "invalid-listeners.yaml", "invalid-gateway.yaml",
    "invalid-shipping.yaml", "invalid-tracing.yaml",
])
def test_bad_config_reports_every_marked_problem_with_file_and_line(name: str) -> None:
    path = DATA / name
    assert expected_marks(path), "a bad fixture must mark at least one expected problem"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert_exactly(info.value.problems, path)


def test_three_mistakes_give_three_problems() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "unknown-keys.yaml", env={})
    assert [p.line for p in info.value.problems] == [3, 7, 9]


def test_empty_file_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "empty.yaml", env={})
    assert [str(p) for p in info.value.problems] == [f"{DATA / 'empty.yaml'}: file is empty"]


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_unreadable_config_names_the_file(tmp_path: Path, make: Callable[[Path], None]) -> None:
    # chmod 000 does not stop root (tests may run as root); a directory or a FIFO is unreadable for anyone.
    path = tmp_path / "idgate.yaml"
    make(path)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    (problem,) = info.value.problems
    assert problem.file == str(path) and "cannot read" in problem.message
    assert check_config(path, env={}) == [str(problem)]


def test_check_config_lists_problems_or_nothing() -> None:
    assert check_config(DATA / "full.yaml", env={}) == []
    lines = check_config(DATA / "issuer-without-audiences.yaml", env={})
    assert lines == [
        f"{DATA / 'issuer-without-audiences.yaml'}:2: issuers[0]: missing required key 'audiences'",
        f"{DATA / 'issuer-without-audiences.yaml'}:5: issuers[1].audiences: an issuer must name at least one audience",
    ]


def test_tls_files_must_exist_and_be_readable(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    good = write_config(tmp_path, "listen: {port: 8443, tls: {cert_file: cert.pem, key_file: key.pem}}\n")
    tls = load_config(good, env={}).listen.tls
    assert tls is not None and tls.cert_file == tmp_path / "cert.pem" and tls.key_file == tmp_path / "key.pem"

    (tmp_path / "dir.pem").mkdir()
    bad = write_config(tmp_path, """
        listen:
          tls:
            cert_file: missing.pem
            key_file: dir.pem
    """)
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert [(p.line, p.message) for p in info.value.problems] == [
        (6, f"listen.tls.cert_file: {tmp_path / 'missing.pem'}: cannot read: No such file or directory"),
        (7, f"listen.tls.key_file: {tmp_path / 'dir.pem'}: cannot read: not a regular file"),
    ]


@pytest.mark.parametrize(("body", "line", "message"), [
    ("listen: {port: 70000}", 3, "listen.port: must be between 0 and 65535"),
    ("admin: {port: -1}", 3, "admin.port: must be between 0 and 65535"),
    ("listen: {host: 'bad host'}", 3, "listen.host: 'bad host' is not a valid host name"),
    ("token_cache_size: 0", 3, "token_cache_size: must be greater than 0"),
    ("admin: {host: 10.0.0.1}\ndev_mode: true", 4, "dev_mode: only allowed when"),
    ("routes: [{name: r, upstream: 'http://127.0.0.1:80?x=1'}]", 3, "routes[0].upstream: must be scheme://host"),
    ("routes: [{name: r, upstream: 'http://127.0.0.1:99999'}]", 3, "routes[0].upstream: is not a valid URL"),
    ("routes: [{name: r, upstream: 'http://h', hosts: ['*.example.com']}]", 3, "not a valid host name"),
    ("audit: {max_segments: 0}", 3, "audit.max_segments: must be greater than 0"),
    ("audit: {max_segments: -2}", 3, "audit.max_segments: must be greater than 0"),
    ("audit: {max_bytes: 0}", 3, "audit.max_bytes: must be greater than 0"),
    ("audit:\n  rotate_bytes: 1000\n  max_bytes: 999", 5, "audit.max_bytes: must be at least rotate_bytes (1000)"),
    ("audit: {max_segments: many}", 3, "audit.max_segments: expected"),
    ("audit: {max_bytes: 1.5e9}", 3, "audit.max_bytes: expected"),
    ("audit: {max_segments: true}", 3, "audit.max_segments: expected"),
    ("audit: {keep_segments: 3}", 3, "keep_segments"),
])
def test_single_bad_value_is_reported_at_its_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert [(p.file, p.line) for p in info.value.problems] == [(str(path), line)]
    assert message in info.value.problems[0].message
    [printed] = check_config(path, env={})             # what `idgate check-config` prints
    assert printed.startswith(f"{path}:{line}: ") and message in printed


def test_at_least_one_issuer_is_required(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    path = tmp_path / "idgate.yaml"
    path.write_text("policies_dir: policies\nissuers: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert [(p.line, p.message) for p in info.value.problems] == [(2, "issuers: at least one issuer is required")]


def test_port_zero_may_be_shared_and_loopback_allows_dev_mode(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, """
        listen: {host: localhost, port: 0}
        admin: {host: "::1", port: 0}
        dev_mode: true
    """), env={})
    assert (config.listen.port, config.admin.port, config.dev_mode) == (0, 0, True)


def test_jwks_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    path = write_config(tmp_path, "")
    path.write_text(path.read_text().replace("audiences: [orders-api]", "audiences: [a], jwks_file: jwks.json"))
    assert load_config(path, env={}).issuers[0].jwks_file == tmp_path / "jwks.json"


def test_environment_overrides_secrets_and_audit_path(tmp_path: Path) -> None:
    key = tmp_path / "assertion.pem"
    key.write_text("not parsed here")
    path = write_config(tmp_path, "audit: {path: audit/a.jsonl}\n")
    env = {ENV_ASSERTION_KEY_FILE: str(key), ENV_AUDIT_PATH: "/var/log/idgate/audit.jsonl"}
    config = load_config(path, env=env)
    assert config.assertion.key_file == key
    assert config.audit.path == Path("/var/log/idgate/audit.jsonl")
    unset = load_config(path, env={ENV_ASSERTION_KEY_FILE: "", ENV_AUDIT_PATH: ""})   # empty = unset
    assert unset.assertion.key_file is None and unset.audit.path == tmp_path / "audit/a.jsonl"


def test_environment_is_read_from_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_AUDIT_PATH, str(tmp_path / "from-env.jsonl"))
    assert load_config(write_config(tmp_path, "")).audit.path == tmp_path / "from-env.jsonl"


def test_missing_assertion_key_is_reported_where_it_came_from(tmp_path: Path) -> None:
    path = write_config(tmp_path, "token_cache_size: -1\nassertion:\n  key_file: missing.pem\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert [(p.file, p.line, p.message) for p in info.value.problems] == [
        (str(path), 3, "token_cache_size: must be greater than 0"),
        (str(path), 5, f"assertion.key_file: {tmp_path / 'missing.pem'}: cannot read: No such file or directory"),
    ]
    with pytest.raises(ConfigError) as info:
        load_config(path, env={ENV_ASSERTION_KEY_FILE: str(tmp_path / "env-missing.pem")})
    assert [(p.file, p.line) for p in info.value.problems] == [(f"${ENV_ASSERTION_KEY_FILE}", None), (str(path), 3)]
    assert "env-missing.pem: cannot read" in info.value.problems[0].message


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("localhost.example.com", False), ("::", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
