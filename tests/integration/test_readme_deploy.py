"""The README's "Deploy" section: one subsection per folder of deploy/, every file it names there, and the
blocks that can run on this machine run as printed: the configuration put in place with its keys and checked
the way the systemd unit checks it, and the Envoy pair validated.  The system paths (/etc/idgate,
/var/lib/idgate, /opt/idgate/.venv) are redirected into a temporary directory and to this checkout's .venv;
nothing else in a block is changed.  The systemd, container, nginx, Traefik and Kubernetes commands need
root on a real host or a cluster and are not run here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import load_config

REPO = Path(__file__).resolve().parents[2]


def deploy_section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## Deploy\n")
    return readme[start:readme.index("\n## ", start + 1)]


def block_with(text: str) -> str:
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", deploy_section(), flags=re.S) if text in b]
    return block


def test_every_deploy_folder_has_its_subsection() -> None:
    headings = re.findall(r"^### (.*)$", deploy_section(), flags=re.M)
    for folder in sorted(p.name for p in (REPO / "deploy").iterdir() if p.is_dir()):
        assert [h for h in headings if f"`deploy/{folder}`" in h], folder


def test_every_file_the_section_names_is_in_the_checkout() -> None:
    named = set(re.findall(r"deploy/[\w./-]+\.(?:yaml|yml|conf|service|env|py)\b|deploy/container/Containerfile",
                           deploy_section()))
    assert "deploy/config/idgate.yaml" in named and "deploy/systemd/idgate.service" in named
    assert sorted(n for n in named if not (REPO / n).is_file()) == []


def _run(block: str, cwd: Path, *replacements: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    for old, new in replacements:
        block = block.replace(old, new)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_configuration_block_puts_a_config_in_place_that_check_config_accepts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    redirect = (("/etc/idgate", f"{root}/etc/idgate"), ("/var/lib/idgate", f"{root}/var/lib/idgate"),
                ("/opt/idgate/.venv", str(REPO / ".venv")))
    clone = tmp_path / "clone"                     # the block's relative paths: a checkout's deploy/ and policies/
    (clone / "deploy" / "config").mkdir(parents=True)
    shipped = (REPO / "deploy" / "config" / "idgate.yaml").read_text()
    for old, new in redirect:
        shipped = shipped.replace(old, new)
    (clone / "deploy" / "config" / "idgate.yaml").write_text(shipped)
    shutil.copytree(REPO / "policies", clone / "policies")
    # What the block leaves to the operator: the listener's certificate and key from their CA.
    (root / "etc" / "idgate").mkdir(parents=True)
    cert = trustme.CA().issue_cert("idgate.internal")
    cert.cert_chain_pems[0].write_to_path(str(root / "etc" / "idgate" / "tls.crt"))
    cert.private_key_pem.write_to_path(str(root / "etc" / "idgate" / "tls.key"))

    done = _run(block_with("check-config --config /etc/idgate/idgate.yaml"), clone, *redirect)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{root}/etc/idgate/idgate.yaml: ok ")
    # The only warnings: the demo's policies name the demo's issuer, which the README says to change.
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert warnings and all("names issuer(s) the config does not trust" in line for line in warnings)
    etc = root / "etc" / "idgate"
    for name in ("assertion-key.pem", "anchor-key.pem"):
        key = serialization.load_pem_private_key((etc / name).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
        assert (etc / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    public = serialization.load_pem_public_key((etc / "anchor-public.pem").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    config = load_config(etc / "idgate.yaml", env={})
    assert config.assertion.key_file == etc / "assertion-key.pem"
    assert (root / "var" / "lib" / "idgate").is_dir()


def test_the_envoy_block_validates_both_files() -> None:
    done = _run(block_with("--mode validate"), REPO, ("/opt/idgate/.venv", str(REPO / ".venv")))
    assert done.returncode == 0, done.stderr
    assert "configuration 'deploy/envoy/envoy-grpc.yaml' OK" in done.stdout
    assert "deploy/envoy/idgate.yaml: ok (offline)" in done.stdout
