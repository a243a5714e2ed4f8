"""The deploy/ examples stay valid: the example config loads, the systemd unit runs real subcommands."""

from __future__ import annotations

import shutil

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.cli import _parser
from proxy.config import load_config
from proxy.keys import new_private_key_pem
from tests.harness.paths import DEPLOY, POLICIES



def test_example_config_loads_when_its_files_exist(tmp_path):
    """Point the production paths at real files in a temp dir: then the example must load cleanly."""
    ca = trustme.CA()
    cert = ca.issue_cert("idgate.internal")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "assertion-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "anchor-key.pem").write_bytes(new_private_key_pem())
    shutil.copytree(POLICIES, tmp_path / "policies")
    text = (DEPLOY / "config" / "idgate.yaml").read_text()
    text = text.replace("/etc/idgate/", f"{tmp_path}/").replace("/var/lib/idgate/", f"{tmp_path}/")
    (tmp_path / "idgate.yaml").write_text(text)
    config = load_config(tmp_path / "idgate.yaml")
    assert [r.name for r in config.routes] == ["orders", "reports"]
    assert config.listen.tls is not None and config.trusted_proxies == ("10.0.0.0/8",)
    shipping = config.audit.shipping
    assert shipping is not None and shipping.cloudwatch is not None and shipping.s3 is not None
    assert shipping.s3.object_lock is not None and shipping.s3.object_lock.mode == "COMPLIANCE"


def test_systemd_unit_runs_real_subcommands():
    unit = (DEPLOY / "systemd" / "idgate.service").read_text()
    parser = _parser()
    for line in unit.splitlines():
        if line.startswith(("ExecStart=", "ExecStartPre=")):
            argv = line.split("=", 1)[1].split()[1:]
            parser.parse_args(argv)  # raises SystemExit on an unknown option
