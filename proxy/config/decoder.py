"""Strict YAML → frozen dataclasses, driven by the dataclasses' type hints (config and policy files).
Unknown keys, wrong types, duplicate keys and missing fields are problems with file:line, all collected."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import math
import os
import stat
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxy.core.errors import ConfigError, ConfigProblem

MAX_FILE_BYTES = 1024 * 1024
# Values decoded per file.  A 1 MiB file holds fewer than this without aliases; with aliases it bounds the
# fan-out of an alias bomb ("billion laughs") that composes small but decodes huge.
MAX_NODES = 1_000_000

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_TYPE_NAMES = {_STR: "a string", _INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean", _NULL: "null",
               _TAG + "merge": "a merge key '<<' (not supported)", _TAG + "timestamp": "a date"}
_EMPTY: Mapping[Any, Any] = types.MappingProxyType({})

T = TypeVar("T")
Validator = Callable[[Any, "Spot"], Any]   # check (reporting via the Spot) and return the value, maybe normalized


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """How one family of dataclasses is spelled in YAML, beyond what the type hints say."""

    keys: Mapping[type, Mapping[str, str]] = dataclasses.field(default_factory=dict)  # field → YAML key
    one_or_many: frozenset[tuple[type, str]] = frozenset()  # a scalar is accepted as a 1-tuple here
    internal: frozenset[tuple[type, str]] = frozenset()   # set by the loader (injected), never from YAML
    validators: Mapping[type, Validator] = dataclasses.field(default_factory=dict)    # run on each built instance
    empty_lists: bool = True                               # False: `[]` / `{}` are errors (omit the key)

    def key(self, cls: type, field: str) -> str:
        renamed = self.keys.get(cls)
        return renamed.get(field, field) if renamed else field


class _TooLarge(Exception):
    pass


class _Invalid:
    """Marks a value that could not be decoded (already reported)."""


_INVALID = _Invalid()


def _open_regular(path: Path) -> int:
    """A read-only fd for a regular file, else OSError.  O_NONBLOCK: opening a FIFO must not hang us;
    checking the opened fd (not the name) leaves no gap for a swap between check and read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def readable_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file, or None.  Opens it, so the answer holds for root too."""
    try:
        os.close(_open_regular(path))
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    return None


def read_yaml(path: Path) -> yaml.Node | None:
    """Compose one YAML document (SafeLoader) from a regular file of at most MAX_FILE_BYTES."""
    name = str(path)
    try:
        with os.fdopen(_open_regular(path), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, f"cannot read: {exc.strerror}")]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([ConfigProblem(name, None, f"file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(name, None, "file is not valid UTF-8")]) from exc
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigProblem(name, line, f"YAML syntax error: {what}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(name, None, f"YAML error: {exc}")]) from exc
    except RecursionError as exc:
        raise ConfigError([ConfigProblem(name, None, "YAML is nested too deeply")]) from exc


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _TYPE_NAMES.get(node.tag, f"a value tagged {node.tag}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass inside `X`, `X | None` or `tuple[X, ...]`, if any."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Spot:
    """Where a decoded dataclass instance sits in its file: lets validators report at the right line."""

    decoder: Decoder
    cls: type
    node: yaml.Node
    where: str                                      # dotted path for messages, e.g. "routes[1]"
    fields: Mapping[str, tuple[yaml.Node, yaml.Node]]   # field name → (key, value) nodes, for keys present

    def key(self, field: str) -> str:
        return self.decoder.schema.key(self.cls, field)

    def line(self, field: str | None = None, index: int | None = None) -> int:
        """The line of a field's key, of one item of a list field, or of this mapping."""
        if field is None or field not in self.fields:
            return line_of(self.node)
        key, value = self.fields[field]
        if index is not None and isinstance(value, yaml.SequenceNode) and index < len(value.value):
            return line_of(value.value[index])
        return line_of(key)

    def child(self, field: str, index: int | None = None) -> Spot:
        """The Spot of a nested dataclass (or of a list item); falls back to this node when absent."""
        cls = _dataclass_in(_hints(self.cls)[field]) or self.cls
        node = self.fields[field][1] if field in self.fields else None
        if isinstance(node, yaml.SequenceNode) and index is not None and index < len(node.value):
            node = node.value[index]
        where = self.path(field) + (f"[{index}]" if index is not None else "")
        if node is None:   # absent in the YAML (defaults): point at the parent, claim no fields
            return Spot(self.decoder, cls, self.node, where, _EMPTY)
        return self.decoder.spot(node, cls, where)

    def path(self, field: str) -> str:
        return f"{self.where}.{self.key(field)}" if self.where else self.key(field)

    def report(self, message: str, field: str | None = None, index: int | None = None) -> None:
        where = self.path(field) if field is not None else self.where
        if index is not None:
            where += f"[{index}]"
        self.decoder.report(self.line(field, index), f"{where}: {message}" if where else message)

    def report_unreadable(self, path: Path | None, field: str) -> bool:
        """Report a file the config names that cannot be read, naming its path; True when reported.
        Offline (a config linted away from the machine that runs it) the file is not opened."""
        if path is None or self.decoder.offline:
            return False
        why = readable_file_problem(path)
        if why:
            self.report(f"{path}: {why}", field)
        return why is not None


class Decoder:
    """Decodes the nodes of one file; collects problems instead of stopping at the first."""

    def __init__(self, file: Path, schema: Schema, *, offline: bool = False) -> None:
        self.name = str(file)
        self.offline = offline                   # check-config --offline: the runtime files are not here
        self.base_dir = file.absolute().parent   # relative Paths in the file are relative to the file
        self.schema = schema
        self.problems: list[ConfigProblem] = []
        self.rule_id: str | None = None          # attached to problems while the loader decodes one rule
        self._budget = MAX_NODES
        self._constructor = yaml.constructor.SafeConstructor()

    def report(self, line: int | None, message: str) -> None:
        self.problems.append(ConfigProblem(self.name, line, message, self.rule_id))

    def sorted_problems(self) -> list[ConfigProblem]:
        """Problems in file order (checks run bottom-up, a reader reads top-down)."""
        return sorted(self.problems, key=lambda p: p.line or 0)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.sorted_problems())

    def decode(self, node: yaml.Node, cls: type[T], where: str = "",
               injected: Mapping[str, Any] = _EMPTY) -> T | None:
        """Decode a mapping node into `cls`; None when it could not be built (problems were reported)."""
        try:
            value = self._dataclass(node, cls, where, injected)
        except _TooLarge:
            self.report(line_of(node), f"document expands to more than {MAX_NODES} values (check aliases)")
            return None
        return None if isinstance(value, _Invalid) else typing.cast(T, value)

    def spot(self, node: yaml.Node, cls: type, where: str) -> Spot:
        """The Spot of a mapping node decoded as `cls` (for checks that run after decoding)."""
        if not isinstance(node, yaml.MappingNode):
            return Spot(self, cls, node, where, _EMPTY)
        names = {self.schema.key(cls, f): f for f in _hints(cls)}
        fields = {names[key]: (k, v) for key, k, v in self._pairs(node, quiet=True) if key in names}
        return Spot(self, cls, node, where, types.MappingProxyType(fields))

    def _pairs(self, node: yaml.MappingNode, *, quiet: bool = False) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """String keys with their nodes; non-string and duplicate keys are reported (unless quiet) and skipped."""
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                if not quiet:
                    self.report(line_of(key_node), f"keys must be strings, got {describe(key_node)} (quote it)")
                continue
            key = str(key_node.value)
            if key in seen:
                if not quiet:
                    self.report(line_of(key_node), f"duplicate key '{key}' (first at line {seen[key]})")
                continue
            seen[key] = line_of(key_node)
            yield key, key_node, value_node

    def _wrong(self, node: yaml.Node, where: str, expected: str) -> _Invalid:
        self.report(line_of(node), f"{where}: expected {expected}, got {describe(node)}")
        return _INVALID

    def _value(self, node: yaml.Node, hint: Any, where: str, lenient: bool) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self._dataclass(node, hint, where, _EMPTY)
        if origin in (types.UnionType, typing.Union):
            (inner,) = (a for a in args if a is not type(None))   # only `X | None` is supported
            if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
                return None
            return self._value(node, inner, where, lenient)
        if origin is tuple:
            return self._tuple(node, args[0], where, lenient)
        if origin is Mapping:
            return self._mapping(node, args[1], where, lenient)
        return self._scalar(node, hint, where)

    def _tuple(self, node: yaml.Node, item: Any, where: str, lenient: bool) -> Any:
        if isinstance(node, yaml.ScalarNode) and lenient and node.tag != _NULL:
            value = self._scalar(node, item, where)
            return _INVALID if isinstance(value, _Invalid) else (value,)
        if not isinstance(node, yaml.SequenceNode):
            return self._wrong(node, where, "a list")
        if not node.value and not self.schema.empty_lists:
            self.report(line_of(node), f"{where}: an empty list is not allowed here (omit the key instead)")
            return _INVALID
        items = [self._value(n, item, f"{where}[{i}]", False) for i, n in enumerate(node.value)]
        return _INVALID if any(isinstance(v, _Invalid) for v in items) else tuple(items)

    def _mapping(self, node: yaml.Node, value_hint: Any, where: str, lenient: bool) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self._wrong(node, where, "a mapping")
        if not node.value and not self.schema.empty_lists:
            self.report(line_of(node), f"{where}: an empty mapping is not allowed here (omit the key instead)")
            return _INVALID
        result: dict[str, Any] = {}
        for key, _, value_node in self._pairs(node):
            result[key] = self._value(value_node, value_hint, f"{where}.{key}", lenient)
        if any(isinstance(v, _Invalid) for v in result.values()):
            return _INVALID
        return types.MappingProxyType(result)

    def _dataclass(self, node: yaml.Node, cls: type, where: str, injected: Mapping[str, Any]) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self._wrong(node, where or "document", "a mapping")
        schema, hints = self.schema, _hints(cls)
        names = {schema.key(cls, f): f for f in hints if (cls, f) not in schema.internal}
        kwargs: dict[str, Any] = dict(injected)
        present: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        complete = True
        for key, key_node, value_node in self._pairs(node):
            field = names.get(key)
            here = f"{where}.{key}" if where else key
            if field is None:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(names))}"
                self.report(line_of(key_node), f"{here}: unknown key{hint}")
                continue
            present[field] = (key_node, value_node)
            value = self._value(value_node, hints[field], here, (cls, field) in schema.one_or_many)
            if isinstance(value, _Invalid):
                complete = False
            else:
                kwargs[field] = value
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in kwargs and f.name not in present:
                self.report(line_of(node), f"{where or 'document'}: missing required key '{schema.key(cls, f.name)}'")
                complete = False
        if not complete:
            return _INVALID
        value = cls(**kwargs)
        validator = schema.validators.get(cls)
        if validator is not None:
            value = validator(value, Spot(self, cls, node, where, types.MappingProxyType(present)))
        return value

    def _scalar(self, node: yaml.Node, hint: Any, where: str) -> Any:
        if isinstance(hint, type) and issubclass(hint, Enum):
            allowed = [str(m.value) for m in hint]
            expected = "one of " + ", ".join(allowed)
        else:
            expected = {bool: "a boolean", int: "an integer", float: "a number"}.get(hint, "a string")
        if not isinstance(node, yaml.ScalarNode):
            return self._wrong(node, where, expected)
        tag = node.tag
        if hint is bool and tag == _BOOL:
            return bool(self._constructor.construct_object(node))
        if hint is int and tag == _INT:
            return int(self._constructor.construct_object(node))
        if hint is float and tag in (_INT, _FLOAT):
            number = float(self._constructor.construct_object(node))
            if not math.isfinite(number):
                self.report(line_of(node), f"{where}: must be a finite number")
                return _INVALID
            return number
        if hint in (str, Path) or (isinstance(hint, type) and issubclass(hint, Enum)):
            if tag != _STR:
                return self._wrong(node, where, expected)
            text = str(node.value)
            if not text:
                self.report(line_of(node), f"{where}: must not be empty")
                return _INVALID
            if hint is str:
                return text
            if hint is Path:
                return self.base_dir / text   # an absolute `text` wins over base_dir
            for member in hint:
                if member.value == text:
                    return member
            self.report(line_of(node), f"{where}: expected {expected}")
            return _INVALID
        if hint in (bool, int, float):
            return self._wrong(node, where, expected)
        raise TypeError(f"the config decoder cannot decode {hint!r}")   # a programming error in a dataclass, not input
