"""`idgate check` builds the identity it explains with the server's own claim mapping, so a decision it
prints is the decision the server would make for the same verified claims; `audit verify`'s progress line."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from proxy.app.supervisor import worker_config
from proxy.cli import explained_identity
from proxy.cli_audit import TerminalProgress, progress_for
from proxy.config import Config, IssuerConfig, load_config
from proxy.core.errors import AuthenticationError
from proxy.oidc.claims import MAX_GROUPS, identity_from_claims
from tests.factories import minimal_config

ISSUER = "http://127.0.0.1:9400"
OTHER = "https://login.example.com"


def config() -> Config:
    return Config(source=Path("idgate.yaml"), policies_dir=Path("policies"), issuers=(
        IssuerConfig(issuer=ISSUER, audiences=("idgate-demo",)),
        IssuerConfig(issuer=OTHER, audiences=("api",), groups_claim="roles"),
    ))


def server_identity(claims: dict[str, object]):
    issuer = next(i for i in config().issuers if i.issuer == claims["iss"])
    now = time.time()
    return identity_from_claims({}, {"aud": issuer.audiences[0], "exp": now + 300, **claims}, issuer, now)


@pytest.mark.parametrize("claims", [
    {"iss": ISSUER, "sub": "svc-etl-7", "groups": ["data-eng", "ops"]},
    {"iss": ISSUER, "sub": "svc-etl-7", "groups": "data-eng"},             # a string is one group, not none
    {"iss": ISSUER, "sub": "svc-etl-7"},
    {"iss": OTHER, "sub": "alice", "roles": ["admins"], "groups": ["ignored"]},   # the issuer's groups_claim
    {"iss": ISSUER, "sub": "svc-etl-7", "azp": "etl-client"},
    {"iss": ISSUER, "sub": "svc-etl-7", "client_id": "etl-client"},
], ids=["list", "string", "none", "groups-claim", "azp", "client-id"])
def test_check_maps_claims_exactly_as_the_server(claims):
    explained, served = explained_identity(config(), dict(claims)), server_identity(dict(claims))
    assert (explained.issuer, explained.subject, explained.client_id, explained.groups) == \
           (served.issuer, served.subject, served.client_id, served.groups)


def test_a_string_groups_claim_is_one_group():
    assert explained_identity(config(), {"iss": ISSUER, "sub": "s", "groups": "data-eng"}).groups == ("data-eng",)


@pytest.mark.parametrize("claims, reason", [
    ({"iss": "https://unknown.example", "sub": "s"}, "unknown_issuer"),
    ({"iss": ISSUER}, "missing_claim"),
    ({"iss": ISSUER, "sub": ""}, "invalid_claim"),
    ({"iss": ISSUER, "sub": "s", "groups": [f"g{i}" for i in range(MAX_GROUPS + 1)]}, "too_many_groups"),
    ({"iss": ISSUER, "sub": "s", "azp": "a", "client_id": "b"}, "invalid_claim"),
    ({"iss": ISSUER, "sub": "s", "groups": ["data-eng", 7]}, "invalid_claim"),   # never silently no groups
])
def test_check_refuses_what_the_server_refuses(claims, reason):
    with pytest.raises(AuthenticationError) as explained:
        explained_identity(config(), claims)
    assert explained.value.reason == reason
    if reason != "unknown_issuer":
        with pytest.raises(AuthenticationError) as served:
            server_identity(claims)
        assert served.value.reason == reason


# --- audit verify's progress line ----------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_verify_progress_is_rewritten_in_place_at_most_every_half_second_and_erased() -> None:
    now = [100.0]
    stream = FakeTerminal(True)
    progress = TerminalProgress(stream, clock=lambda: now[0])
    for t, records in [(100.0, 0), (100.2, 5000), (100.5, 9000), (100.9, 12000), (101.1, 15000)]:
        now[0] = t
        progress(Path("a.jsonl"), records)
    progress.clear()
    assert stream.getvalue() == ("\r\x1b[Kaudit verify: a.jsonl: 0 record(s) so far"
                                 "\r\x1b[Kaudit verify: a.jsonl: 9000 record(s) so far"
                                 "\r\x1b[Kaudit verify: a.jsonl: 15000 record(s) so far"
                                 "\r\x1b[K")


def test_verify_progress_only_on_a_terminal() -> None:
    assert progress_for(FakeTerminal(False)) is None
    assert isinstance(progress_for(FakeTerminal(True)), TerminalProgress)
    stream = FakeTerminal(True)
    TerminalProgress(stream).clear()               # nothing drawn, nothing to erase
    assert stream.getvalue() == ""


def test_each_worker_is_its_own_audit_instance(tmp_path: Path) -> None:
    """`--workers N`: a chain, a CloudWatch stream and an S3 folder per worker."""
    config = load_config(minimal_config(tmp_path, "audit: {instance: web-1}\n"), env={})
    worker = worker_config(config, 2)
    assert worker.audit.instance == "web-1.w2"
    assert worker.audit.path.name == f"{config.audit.path.stem}.w2{config.audit.path.suffix}"
