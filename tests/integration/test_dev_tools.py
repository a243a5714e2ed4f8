"""The development tools behind `make demo`: the dev issuer, `idgate token`, and the demo's config and
printed commands (the demo itself binds fixed ports, so its pieces are tested here, and its broker
one-liner in test_demo_broker.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import load_config
from proxy.dev.demo import AWS_PORT, ISSUER_PORT, PROXY_PORT, instructions, write_demo_config
from proxy.dev.local_aws import LocalAws
from proxy.dev.issuer import require_loopback
from proxy.core.errors import ConfigError
from proxy.policy.store import compile_directory
from tests.harness.servers import local_issuer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::"])
def test_dev_servers_refuse_non_loopback_addresses(host):
    with pytest.raises(ConfigError) as err:
        require_loopback(host)
    assert "loopback only" in str(err.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_dev_servers_accept_loopback(host):
    require_loopback(host)


async def test_dev_issuer_mints_for_demo_identities_only():
    async with local_issuer("idgate-demo") as issuer, aiohttp.ClientSession() as http:
        base = issuer.issuer.issuer_url
        async with http.get(base + "/.well-known/openid-configuration") as discovery:
            assert (await discovery.json())["issuer"] == base
        async with http.get(base + "/token?sub=svc-etl-7") as minted:
            token = (await minted.text()).strip()
        async with http.get(base + "/jwks") as jwks:
            key = jwt.PyJWK((await jwks.json())["keys"][0]).key
        claims = jwt.decode(token, key, algorithms=["ES256"], audience="idgate-demo", issuer=base)
        assert claims["sub"] == "svc-etl-7" and claims["groups"] == ["data-eng"] and claims["tenant"] == "acme"
        assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
        async with http.get(base + "/token?sub=root") as refused:
            assert refused.status == 404


def test_idgate_token_mints_a_verifiable_token_from_a_key_file(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "dev.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    result = subprocess.run([sys.executable, "-m", "proxy", "token", "--key", str(key_file), "--issuer",
                             "http://127.0.0.1:9400", "--audience", "orders-api", "--subject", "svc-x",
                             "--groups", "a,b"], capture_output=True, text=True, timeout=60, check=True)
    claims = jwt.decode(result.stdout.strip(), key.public_key(), algorithms=["ES256"], audience="orders-api")
    assert claims["sub"] == "svc-x" and claims["groups"] == ["a", "b"] and claims["exp"] - claims["iat"] == 900


def test_demo_config_made_in_a_relative_workdir_loads(tmp_path, monkeypatch):
    """As `make demo` makes it: `--workdir .demo`, relative to the checkout, with the local AWS.  Paths in a
    config are relative to the config's own directory, so every file the demo writes must be named
    absolutely (the gateway's key ring once was not: .demo/.demo/gateway-keys.json, and make demo stopped)."""
    monkeypatch.chdir(tmp_path)
    config = load_config(write_demo_config(Path(".demo"), REPO / "policies", LocalAws("127.0.0.1", AWS_PORT)))
    assert config.aws.gateway.key_file == (tmp_path / ".demo" / "gateway-keys.json")


def test_demo_config_loads_with_the_example_policies_and_prints_working_commands(tmp_path):
    config = load_config(write_demo_config(tmp_path / ".demo", REPO / "policies"))
    assert config.dev_mode and config.listen.port == PROXY_PORT
    assert config.issuers[0].issuer == f"http://127.0.0.1:{ISSUER_PORT}"
    assert {r.id for r in compile_directory(config.policies_dir).rules} >= {"etl-read-orders", "nobody-touches-admin"}
    text = instructions(config.audit.path)
    assert f"http://127.0.0.1:{ISSUER_PORT}/token?sub=svc-etl-7" in text
    assert f"idgate audit verify {config.audit.path}" in text
