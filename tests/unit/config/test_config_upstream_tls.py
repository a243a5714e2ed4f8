"""A route's `tls` section (https:// upstreams): the CA bundle, the client certificate and key, the
server name; each file checked as the proxy will load it, each problem at its line, naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import UpstreamTlsConfig, load_config
from proxy.core.errors import ConfigError
from tests.factories import minimal_config as write


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("idgate.internal")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other-key.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "encrypted-key.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    (tmp_path / "not-pem.pem").write_text("not a certificate\n")
    return tmp_path


def route(*tls: str, upstream: str = "https://orders.upstream.internal:8443") -> str:
    """A config body whose one route has these `tls` items, from line 7 on."""
    lines = ["routes:", "  - name: orders", f"    upstream: {upstream}", "    tls:", *(f"      {item}" for item in tls)]
    return "\n".join(lines) + "\n"


def problems(path: Path) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return [(p.line, p.message) for p in info.value.problems]


def test_no_tls_section_means_the_system_cas(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "routes: [{name: orders, upstream: 'https://orders.internal'}]\n"), env={})
    assert config.routes[0].tls is None


def test_every_option_loads_relative_to_the_config(files: Path) -> None:
    config = load_config(write(files, route("ca_file: ca.pem", "cert_file: client.pem", "key_file: client-key.pem",
                                            "server_name: Orders.Upstream.Internal")), env={})
    assert config.routes[0].tls == UpstreamTlsConfig(
        ca_file=files / "ca.pem", cert_file=files / "client.pem", key_file=files / "client-key.pem",
        server_name="orders.upstream.internal")


def test_a_missing_or_unreadable_file_is_reported_with_its_path(files: Path) -> None:
    (files / "dir.pem").mkdir()
    path = write(files, route("ca_file: missing-ca.pem", "cert_file: dir.pem", "key_file: client-key.pem"))
    assert problems(path) == [
        (7, f"routes[0].tls.ca_file: {files / 'missing-ca.pem'}: cannot read: No such file or directory"),
        (8, f"routes[0].tls.cert_file: {files / 'dir.pem'}: cannot read: not a regular file"),
    ]


@pytest.mark.parametrize("tls,line,message", [
    (["cert_file: client.pem"], 7, "routes[0].tls.key_file: give cert_file and key_file together"),
    (["key_file: client-key.pem"], 7, "routes[0].tls.cert_file: give cert_file and key_file together"),
    (["ca_file: not-pem.pem"], 7, "not-pem.pem: not a PEM bundle of CA certificates"),
    (["cert_file: client.pem", "key_file: other-key.pem"], 7,
     "not a PEM certificate chain and its private key (KEY_VALUES_MISMATCH)"),
    (["cert_file: not-pem.pem", "key_file: client-key.pem"], 7, "not a PEM certificate chain"),
    (["cert_file: client.pem", "key_file: encrypted-key.pem"], 8,
     "encrypted-key.pem: an encrypted private key is not supported"),
    (["server_name: 'bad name'"], 7, "routes[0].tls.server_name: 'bad name' is not a valid host name"),
    (["ca_flie: ca.pem"], 7, "routes[0].tls.ca_flie: unknown key; did you mean 'ca_file'?"),
])
def test_each_bad_value_is_reported_at_its_line(files: Path, tls: list[str], line: int, message: str) -> None:
    [(got_line, got)] = problems(write(files, route(*tls)))
    assert got_line == line and message in got, got


def test_tls_is_only_for_an_https_upstream(files: Path) -> None:
    path = write(files, route("ca_file: ca.pem", upstream="http://orders.upstream.internal:8080"))
    assert problems(path) == [(6, "routes[0].tls: only for an https:// upstream")]
