"""The generic strict decoder: types from hints, unknown/duplicate/missing keys, every problem at once,
and files that cannot be read (checked in ways that fail for root too)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from proxy.core.errors import ConfigError
from proxy.config.decoder import MAX_FILE_BYTES, Decoder, Schema, Spot, read_yaml, readable_file_problem


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Inner:
    name: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Outer:
    count: int
    inner: Inner
    ratio: float = 0.5
    flag: bool = False
    path: Path | None = None
    tags: tuple[str, ...] = ()
    items: tuple[Inner, ...] = ()
    color: Color = Color.RED
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    note: str | None = None
    origin: str = ""


def decode(tmp_path: Path, text: str, schema: Schema = Schema(), **injected: Any) -> Outer:
    path = tmp_path / "conf.yaml"
    path.write_text(textwrap.dedent(text))
    node = read_yaml(path)
    assert node is not None
    decoder = Decoder(path, schema)
    value = decoder.decode(node, Outer, injected=injected)
    decoder.raise_if_problems()
    assert value is not None
    return value


def problems(tmp_path: Path, text: str, schema: Schema = Schema()) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        decode(tmp_path, text, schema)
    assert all(p.file == str(tmp_path / "conf.yaml") for p in info.value.problems)
    return [(p.line, p.message) for p in info.value.problems]


def test_every_supported_type_decodes(tmp_path: Path) -> None:
    value = decode(tmp_path, """
        count: 0x10
        inner: {name: a}
        ratio: 2
        flag: true
        path: data/file.txt
        tags: [x, y]
        items: [{name: b, weight: 2.5}]
        color: blue
        labels: {env: [prod, dev]}
        note: null
    """)
    assert value.count == 16
    assert value.inner == Inner("a")
    assert value.ratio == 2.0 and isinstance(value.ratio, float)
    assert value.flag is True
    assert value.path == tmp_path / "data/file.txt"
    assert value.tags == ("x", "y")
    assert value.items == (Inner("b", 2.5),)
    assert value.color is Color.BLUE
    assert dict(value.labels) == {"env": ("prod", "dev")}
    assert value.note is None


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    assert decode(tmp_path, "{count: 1, inner: {name: a}, path: /etc/x}").path == Path("/etc/x")


def test_relative_path_is_relative_to_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "conf.yaml").write_text("{count: 1, inner: {name: a}, path: keys/k.pem}")
    monkeypatch.chdir(tmp_path)
    node = read_yaml(Path("conf/conf.yaml"))
    assert node is not None
    value = Decoder(Path("conf/conf.yaml"), Schema()).decode(node, Outer)
    assert value is not None and value.path == sub / "keys/k.pem"


def test_all_problems_are_reported_at_once_with_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        count: true
        inner: {name: a, colour: red}
        ratio: .inf
        flag: 1
        tags: x
        color: green
        note: ""
        extra: 1
    """)
    assert found == [
        (2, "count: expected an integer, got a boolean"),
        (3, "inner.colour: unknown key; allowed: name, weight"),
        (4, "ratio: must be a finite number"),
        (5, "flag: expected a boolean, got an integer"),
        (6, "tags: expected a list, got a string"),
        (7, "color: expected one of red, blue"),
        (8, "note: must not be empty"),
        (9, "extra: unknown key; allowed: color, count, flag, inner, items, labels, note, origin, path, ratio, tags"),
    ]


def test_yaml_11_booleans_are_not_strings(tmp_path: Path) -> None:
    # `on`, `yes`, `no` are booleans in YAML 1.1: a host or tag named "no" must be quoted.
    assert problems(tmp_path, "{count: 1, inner: {name: a}, tags: [no]}") == [
        (1, "tags[0]: expected a string, got a boolean")]


def test_missing_required_keys_are_reported_at_the_mapping(tmp_path: Path) -> None:
    assert problems(tmp_path, """
        inner:
          weight: 3
    """) == [(2, "document: missing required key 'count'"), (3, "inner: missing required key 'name'")]


def test_duplicate_keys_are_errors_naming_both_lines(tmp_path: Path) -> None:
    assert problems(tmp_path, """
        count: 1
        inner: {name: a}
        count: 2
        labels: {env: [a], env: [b]}
    """) == [(4, "duplicate key 'count' (first at line 2)"), (5, "duplicate key 'env' (first at line 5)")]


def test_non_string_keys_and_merge_keys_are_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        base: &base {name: a}
        count: 1
        inner:
          <<: *base
        7: x
    """)
    assert (2, "base: unknown key; allowed: color, count, flag, inner, items, labels, note, origin, path, ratio, tags") \
        in found
    assert (5, "keys must be strings, got a merge key '<<' (not supported) (quote it)") in found
    assert (6, "keys must be strings, got an integer (quote it)") in found
    assert (5, "inner: missing required key 'name'") in found   # the mapping under `inner` starts there
    assert len(found) == 4


def test_aliases_decode_like_their_anchor(tmp_path: Path) -> None:
    value = decode(tmp_path, """
        count: 1
        inner: &a {name: shared}
        items: [*a, *a]
    """)
    assert value.items == (Inner("shared"), Inner("shared"))


@dataclass(frozen=True, slots=True)
class Bomb:
    data: tuple[tuple[tuple[tuple[tuple[tuple[tuple[str, ...], ...], ...], ...], ...], ...], ...]


def test_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ndata: *a6\n")   # composes to 70 nodes, decodes to 10**7
    node = read_yaml(path)
    assert node is not None
    decoder = Decoder(path, Schema())
    assert decoder.decode(node, Bomb) is None
    messages = [p.message for p in decoder.problems]
    assert any("document expands to more than" in m for m in messages)


def test_scalar_is_a_one_element_list_only_where_the_schema_says(tmp_path: Path) -> None:
    lenient = Schema(one_or_many=frozenset({(Outer, "tags"), (Outer, "labels")}))
    value = decode(tmp_path, "{count: 1, inner: {name: a}, tags: x, labels: {env: prod}}", lenient)
    assert value.tags == ("x",) and dict(value.labels) == {"env": ("prod",)}
    assert problems(tmp_path, "{count: 1, inner: {name: a}, items: {name: b}}", lenient) == [
        (1, "items: expected a list, got a mapping")]


def test_empty_lists_can_be_refused(tmp_path: Path) -> None:
    strict = Schema(empty_lists=False)
    assert problems(tmp_path, "{count: 1, inner: {name: a}, tags: [], labels: {}}", strict) == [
        (1, "tags: an empty list is not allowed here (omit the key instead)"),
        (1, "labels: an empty mapping is not allowed here (omit the key instead)"),
    ]


def test_renamed_keys_and_internal_fields(tmp_path: Path) -> None:
    schema = Schema(keys={Outer: {"tags": "tag"}}, internal=frozenset({(Outer, "origin")}))
    value = decode(tmp_path, "{count: 1, inner: {name: a}, tag: [x]}", schema, origin="loader")
    assert value.tags == ("x",) and value.origin == "loader"
    found = problems(tmp_path, "{count: 1, inner: {name: a}, tags: [x], origin: yaml}", schema)
    assert [m.split(";")[0] for _, m in found] == ["tags: unknown key", "origin: unknown key"]


def test_validators_report_at_the_field_and_may_normalize(tmp_path: Path) -> None:
    def check_inner(inner: Inner, spot: Spot) -> Inner:
        if inner.weight > 10:
            spot.report("too heavy", "weight")
        return replace(inner, name=inner.name.lower())

    schema = Schema(validators={Inner: check_inner})
    assert decode(tmp_path, "{count: 1, inner: {name: ABC}}", schema).inner.name == "abc"
    assert problems(tmp_path, """
        count: 1
        inner: {name: a}
        items:
          - name: b
          - name: c
            weight: 11
    """, schema) == [(7, "items[1].weight: too heavy")]


def test_empty_document_composes_to_none(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert read_yaml(path) is None


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(path), 3)
    assert problem.message.startswith("YAML syntax error:")


def test_several_documents_in_one_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert info.value.problems[0].line == 2
    assert "expected a single document" in info.value.problems[0].message


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml(path)


def test_file_size_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(path)


def test_invalid_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_yaml(path)


def unreadable(tmp_path: Path, kind: str) -> Path:
    """A path that cannot be read as a config file even by root (chmod 000 does not stop root)."""
    path = tmp_path / "conf.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)   # no writer: a blocking open would hang forever
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere.yaml")
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dangling-symlink"])
def test_unreadable_file_is_a_config_error_naming_it(tmp_path: Path, kind: str) -> None:
    path = unreadable(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    (problem,) = info.value.problems
    assert problem.file == str(path) and problem.line is None
    assert problem.message.startswith("cannot read:")
    assert readable_file_problem(path) == problem.message


def test_readable_file_has_no_problem(tmp_path: Path) -> None:
    path = tmp_path / "ok.pem"
    path.write_text("x")
    assert readable_file_problem(path) is None
