"""The ext_authz section of idgate.yaml: off unless given, every problem reported at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load as config_module
from proxy.config import ExtAuthzGrpcConfig, ExtAuthzHttpConfig, load_config
from proxy.core.errors import ConfigError
from tests.factories import minimal_config as write



def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return [str(p) for p in caught.value.problems]


def test_both_surfaces_are_off_by_default(tmp_path):
    config = load_config(write(tmp_path, ""), env={})
    assert config.ext_authz.http is None and config.ext_authz.grpc is None
    assert config.ext_authz.forward_token is False


def test_sections_given_empty_take_the_defaults(tmp_path):
    config = load_config(write(tmp_path, """\
        ext_authz:
          http: {}
          grpc: {}
          forward_token: true
        """), env={})
    assert config.ext_authz.http == ExtAuthzHttpConfig(path_prefix="/.idgate/ext_authz")
    assert config.ext_authz.grpc == ExtAuthzGrpcConfig(host="127.0.0.1", port=9191, max_message_bytes=65536)
    assert config.ext_authz.forward_token is True


@pytest.mark.parametrize("prefix,message", [
    ("authz", "must start with '/'"),
    ("/", "must not be '/' or end with '/'"),
    ("/authz/", "must not be '/' or end with '/'"),
    ("/a/../b", "must be a normalized path"),
    ("/.idgate/auth", "must not overlap forward_auth.path"),
    ("/.idgate", "must not overlap forward_auth.path"),
])
def test_bad_http_prefix_is_reported_at_its_line(tmp_path, prefix, message):
    path = write(tmp_path, f"""\
        ext_authz:
          http:
            path_prefix: "{prefix}"
        """)
    found = problems(path)
    assert found and all(f"{path}:5:" in p for p in found)
    assert any(message in p for p in found)


def test_bad_grpc_listener_values_are_all_reported(tmp_path):
    path = write(tmp_path, """\
        listen: {host: 127.0.0.1, port: 8181}
        ext_authz:
          grpc:
            host: "not a host"
            port: 70000
            max_message_bytes: 0
        """)
    found = problems(path)
    assert len(found) == 3
    assert any(":6:" in p and "not a valid host name" in p for p in found)
    assert any(":7:" in p and "between 0 and 65535" in p for p in found)
    assert any(":8:" in p and "greater than 0" in p for p in found)


def test_grpc_port_must_differ_from_the_http_listeners(tmp_path):
    path = write(tmp_path, """\
        listen: {host: 127.0.0.1, port: 8181}
        ext_authz:
          grpc: {host: 127.0.0.1, port: 8181}
        """)
    [problem] = problems(path)
    assert "must not use the same host and port as listen or admin" in problem


def test_unknown_keys_are_errors(tmp_path):
    path = write(tmp_path, """\
        ext_authz:
          grcp: {}
        """)
    [problem] = problems(path)
    assert ":4:" in problem and "grcp" in problem


def test_grpc_without_the_envoy_extra_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "modules_installed", lambda *names: False)
    path = write(tmp_path, """\
        ext_authz:
          grpc: {}
        """)
    [problem] = problems(path)
    assert "pip install 'idgate[envoy]'" in problem
