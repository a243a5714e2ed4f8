"""The README's "Configuration reference" names every key idgate.yaml may hold, and no key it may not.

The key paths come from where the strict decoder gets them: the schema's dataclasses (their type hints),
spelled as the config schema spells them (`Schema.key`), without the fields the loader injects
(`Schema.internal`).  The README's side is its YAML blocks in that section, parsed as YAML, so a key
counts as documented only where a reader sees it as a key, not because its word occurs in some prose."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.decoder import Schema
from proxy.config.load import _SCHEMA, load_config
from proxy.config.schema import Config, IssuerConfig

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Configuration reference"


@dataclass(frozen=True, slots=True)
class KeyPath:
    path: str           # issuers[].max_stale, audit.shipping.cloudwatch.log_group
    free_form: bool     # a mapping whose keys the operator chooses (tracing.resource_attributes)


def _unwrap(hint: Any) -> Any:
    """X for `X | None`: the decoder accepts only that union."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (inner,) = (a for a in typing.get_args(hint) if a is not type(None))
        return inner
    return hint


def schema_keys(cls: type, schema: Schema, prefix: str = "") -> Iterator[KeyPath]:
    """Every key path the decoder accepts under `cls`, sections included; a list of mappings is `[]`."""
    for field, hint in typing.get_type_hints(cls).items():
        if (cls, field) in schema.internal:
            continue
        path = prefix + schema.key(cls, field)
        inner = _unwrap(hint)
        yield KeyPath(path, typing.get_origin(inner) is Mapping)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            yield from schema_keys(inner, schema, path + ".")
        elif typing.get_origin(inner) is tuple:
            item = typing.get_args(inner)[0]
            if dataclasses.is_dataclass(item) and isinstance(item, type):
                yield from schema_keys(item, schema, path + "[].")


def reference_blocks(readme: str) -> list[str]:
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```yaml\n(.*?)```", readme[start:end if end != -1 else None], flags=re.S)
    assert blocks, f"no ```yaml block under {SECTION!r}"
    return blocks


def documented_keys(readme: str) -> set[str]:
    """The key paths of the YAML blocks in the README's configuration reference."""
    found: set[str] = set()

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                found.add(prefix + str(key))
                walk(inner, f"{prefix}{key}.")
        elif isinstance(value, list):
            for item in value:
                walk(item, prefix[:-1] + "[].")   # prefix ends in "."

    for block in reference_blocks(readme):
        walk(yaml.safe_load(block), "")
    return found


def undocumented(cls: type, schema: Schema, readme: str) -> list[str]:
    documented = documented_keys(readme)
    return [key.path for key in schema_keys(cls, schema) if key.path not in documented]


def unknown(cls: type, schema: Schema, readme: str) -> list[str]:
    """Keys the README shows that the decoder would refuse (a free-form mapping's own keys aside)."""
    keys = list(schema_keys(cls, schema))
    known = {key.path for key in keys}
    free = tuple(key.path + "." for key in keys if key.free_form)
    return sorted(path for path in documented_keys(readme) if path not in known and not path.startswith(free))


def test_every_key_of_the_config_schema_is_in_the_readme_reference() -> None:
    assert undocumented(Config, _SCHEMA, README.read_text()) == []


def test_the_readme_reference_shows_no_key_the_decoder_refuses() -> None:
    assert unknown(Config, _SCHEMA, README.read_text()) == []


def test_the_readme_reference_is_a_config_the_strict_loader_accepts(tmp_path: Path) -> None:
    """Offline, as `idgate check-config --offline` in CI: the files it names are not here, every other check
    runs, so a value of the wrong type or out of its range in the reference is caught too."""
    [block] = reference_blocks(README.read_text())
    (tmp_path / "idgate.yaml").write_text(block)
    config = load_config(tmp_path / "idgate.yaml", env={}, offline=True)
    assert [route.name for route in config.routes] == ["orders", "billing"]
    assert config.login is not None and config.issuers[0].client is not None


def test_the_walk_reaches_nested_sections_and_lists_of_mappings() -> None:
    paths = {key.path for key in schema_keys(Config, _SCHEMA)}
    assert {"dev_mode", "issuers[].max_age", "issuers[].max_stale", "audit.shipping.cloudwatch.log_group",
            "audit.shipping.s3.object_lock.days", "routes[].tls.server_name", "tracing.sampling_ratio",
            "aws.gateway.redact_keys"} <= paths
    assert "source" not in paths                     # injected by the loader, never read from YAML


# A schema one key larger than idgate's, the way a new key arrives: in a nested list section and at the top.
@dataclass(frozen=True)
class _IssuerWithNewKey(IssuerConfig):
    require_nonce: bool = False


@dataclass(frozen=True)
class _ConfigWithNewKeys(Config):
    issuers: tuple[_IssuerWithNewKey, ...]
    strict_mode: bool = False


_SYNTHETIC_SCHEMA = dataclasses.replace(_SCHEMA, internal=_SCHEMA.internal | {(_ConfigWithNewKeys, "source")})


def test_a_key_added_to_the_schema_but_not_to_the_readme_is_reported() -> None:
    text = README.read_text()
    added = set(undocumented(_ConfigWithNewKeys, _SYNTHETIC_SCHEMA, text)) - set(undocumented(Config, _SCHEMA, text))
    assert added == {"issuers[].require_nonce", "strict_mode"}


@pytest.mark.parametrize(("line", "missing"), [
    ("    max_stale: 86400", "issuers[].max_stale"),
    ("dev_mode: false", "dev_mode"),
])
def test_a_key_dropped_from_the_readme_is_reported(line: str, missing: str) -> None:
    text = README.read_text()
    [original] = [ln for ln in text.splitlines() if ln.startswith(line)]
    assert missing in undocumented(Config, _SCHEMA, text.replace(original + "\n", ""))


def test_a_key_the_readme_invents_is_reported() -> None:
    text = README.read_text().replace("    groups_claim: groups\n", "    groups_claim: groups\n    group_claim: x\n", 1)
    assert unknown(Config, _SCHEMA, text) == ["issuers[].group_claim"]
