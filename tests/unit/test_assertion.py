import jwt
import pytest

from proxy.assertion import AssertionSigner, load_signing_key
from proxy.core.errors import ConfigError
from tests.factories import make_identity


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def verify(signer, token, audience):
    key = jwt.PyJWK(signer.jwks()["keys"][0]).key
    return jwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer="idgate")


def test_assertion_verifies_with_the_published_jwks():
    signer = AssertionSigner(load_signing_key(None), ttl=60)
    identity = make_identity(groups=("data-eng",), client_id="cli")
    claims = verify(signer, signer.sign(identity, "orders"), "orders")
    assert claims["sub"] == "svc-etl-7" and claims["groups"] == ["data-eng"] and claims["idp"] == identity.issuer
    assert claims["exp"] - claims["iat"] <= 60


def test_assertion_audience_is_the_route():
    signer = AssertionSigner(load_signing_key(None), ttl=60)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(signer, signer.sign(make_identity(), "orders"), "billing")


def test_cached_assertion_reused_only_in_first_half_of_life():
    import time
    clock = Clock(time.time())
    signer = AssertionSigner(load_signing_key(None), ttl=60, clock=clock)
    identity = make_identity(expires_in=3600)
    first = signer.sign(identity, "orders")
    clock.now += 20
    assert signer.sign(identity, "orders") == first
    clock.now += 15
    assert signer.sign(identity, "orders") != first


def test_assertion_never_outlives_the_callers_token():
    signer = AssertionSigner(load_signing_key(None), ttl=600)
    identity = make_identity(expires_in=30)
    claims = verify(signer, signer.sign(identity, "orders"), "orders")
    assert claims["exp"] <= int(identity.expires_at)


def test_bad_key_file_is_a_config_error(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError) as err:
        load_signing_key(path)
    assert str(path) in str(err.value)


def test_cached_assertion_never_speaks_for_another_token_of_the_same_subject():
    import dataclasses
    signer = AssertionSigner(load_signing_key(None), ttl=60)
    batch = make_identity(client_id="etl-batch", expires_in=3600)
    ui = dataclasses.replace(batch, client_id="billing-ui", expires_at=batch.expires_at - 3560)
    first = verify(signer, signer.sign(batch, "orders"), "orders")
    second = verify(signer, signer.sign(ui, "orders"), "orders")
    assert first["client_id"] == "etl-batch" and second["client_id"] == "billing-ui"
    assert second["exp"] <= int(ui.expires_at)


def test_audiences_of_different_surfaces_never_collide():
    """A route and a host can share a name: an assertion minted by forward auth for host `orders` must not
    verify where the reverse proxy's route `orders` is expected, nor an ext_authz one where either is."""
    from proxy.assertion import audience
    from proxy.core.model import Surface

    minted = {surface: audience(surface, "orders") for surface in Surface
              if surface not in (Surface.CREDENTIALS, Surface.DYNAMODB, Surface.LOGIN)}
    assert minted[Surface.PROXY] == "route:orders"
    assert minted[Surface.FORWARD_AUTH] == "forward-auth:orders"
    assert minted[Surface.EXT_AUTHZ_HTTP] == minted[Surface.EXT_AUTHZ_GRPC] == "ext-authz:orders"
    assert len({minted[Surface.PROXY], minted[Surface.FORWARD_AUTH], minted[Surface.EXT_AUTHZ_HTTP]}) == 3
