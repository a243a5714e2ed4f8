"""DynamoDB's PartiQL subset (ExecuteStatement, BatchExecuteStatement, ExecuteTransaction) read into the one
table, index, pinned key values and top-level attributes a statement touches; anything else is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from proxy.aws.dynamodb._cursor import Cursor, refuse, tokenize
from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

MAX_BYTES = 8192  # DynamoDB's own limit on one statement

# Backslashes are refused inside quotes: PartiQL escapes a quote only by doubling it, and a reader that
# took `\'` as an escape would end the string elsewhere than idgate does.  A comment runs to the end of the
# text, so that it is refused as a comment whatever follows it.
_TOKENS = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>(?s:--.*|/\*.*))
  | (?P<string>'(?:[^'\\]|'')*+')
  | (?P<quoted>"(?:[^"\\]|"")*+")
  | (?P<number>[0-9]++(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+(?![A-Za-z0-9_.]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><<|>>|<>|<=|>=|!=|[=<>()\[\]{},.:+*?-])
""", re.VERBOSE | re.ASCII)
# Grammar words, never a table or an attribute when unquoted (DynamoDB reserves them as well).
_RESERVED = frozenset({
    "all", "and", "as", "asc", "at", "between", "by", "cross", "delete", "desc", "distinct", "except",
    "exists", "false", "from", "full", "group", "having", "in", "inner", "insert", "intersect", "into",
    "is", "join", "left", "let", "limit", "missing", "modified", "natural", "new", "not", "null", "offset",
    "old", "on", "or", "order", "outer", "pivot", "remove", "returning", "right", "select", "set", "true",
    "union", "unpivot", "update", "value", "values", "where",
})
_JOINS = ("join", "inner", "left", "right", "full", "outer", "cross", "natural")
_SET_OPERATIONS = ("union", "intersect", "except")
_COMPARATORS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
_CONDITION_FUNCTIONS = {"begins_with": 2, "contains": 2, "attribute_type": 2, "exists": 1}
_WHERE_FUNCTIONS = frozenset({"size"})
_SET_FUNCTIONS = frozenset({"list_append", "set_add", "set_delete"})
_CLOSERS = {"[": "]", "<<": ">>"}


@dataclass(frozen=True, slots=True)
class Value:
    """A value a statement gives: a parameter, a scalar literal as a DynamoDB AttributeValue, or neither
    (a list, bag, tuple or MISSING), which no key can hold."""

    param: int | None = None                  # index into the call's Parameters
    literal: Mapping[str, Any] | None = None  # {"S": "x"}, {"N": "12"}, {"BOOL": True} or {"NULL": True}


@dataclass(frozen=True, slots=True)
class Statement:
    kind: str                                    # "select", "insert", "update", "delete" or "exists"
    table: str                                   # as written (a name or an ARN), quotes removed
    index: str | None                            # SELECT ... FROM "t"."idx"
    key_values: Mapping[str, tuple[Value, ...]]  # every value a top-level AND conjunct of WHERE pins, per attribute
    attributes: frozenset[str] | None            # top-level attributes touched; None when all are read or returned
    item: Mapping[str, Value] | None             # INSERT's tuple, by top-level attribute
    parameters: int                              # how many `?` the statement has


@dataclass(frozen=True, slots=True)
class _Operand:
    attribute: str | None = None  # a bare top-level attribute: a path of one element
    value: Value | None = None    # a bare literal or parameter


def parse(text: str) -> Statement:
    return _Parser(text).statement()


def _unbounded() -> NoReturn:
    raise BadRequest("the statement does not name one table", reason=Reason.UNBOUNDED_STATEMENT)


def _pin(left: _Operand, right: _Operand) -> list[tuple[str, Value]]:
    return [(left.attribute, right.value)] if left.attribute is not None and right.value is not None else []


class _Parser:
    """Recursive descent over one statement.  Only parentheses, NOT, function calls and collections
    recurse, and the cursor's depth budget bounds them all."""

    __slots__ = ("cursor", "_table", "_index", "_heads", "_pins", "_item", "_parameters", "_returns_all")

    def __init__(self, text: str) -> None:
        tokens = tokenize(text, _TOKENS, MAX_BYTES, "the statement")
        if any(token.kind == "comment" for token in tokens):
            refuse("the statement has a comment, which idgate does not accept")
        self.cursor = Cursor(tokens, "the statement")
        self._table = ""
        self._index: str | None = None
        self._heads: set[str] = set()
        self._pins: list[tuple[str, Value]] = []
        self._item: dict[str, Value] | None = None
        self._parameters = 0
        self._returns_all = False

    def statement(self) -> Statement:
        cursor = self.cursor
        token = cursor.take()
        kind = token.text.lower() if token.kind == "word" else ""
        if kind == "select":
            self._select(exists=False)
        elif kind == "exists":
            cursor.expect("(", "select")
            self._select(exists=True)
            cursor.expect(")")
        elif kind == "insert":
            cursor.expect("into")
            self._table_reference(index=False)
            cursor.expect("value", "{")
            with cursor.nested():
                self._item = self._tuple()
        elif kind == "update":
            self._update()
        elif kind == "delete":
            cursor.expect("from")
            self._table_reference(index=False)
            cursor.expect("where")
            self._pins = self._condition()
            if cursor.accept("returning"):
                cursor.expect("all", "old", "*")
                self._returns_all = True
        else:
            cursor.fail()
        self._end()
        pinned: dict[str, list[Value]] = {}
        for attribute, value in self._pins:
            pinned.setdefault(attribute, []).append(value)
        return Statement(
            kind=kind, table=self._table, index=self._index,
            key_values=MappingProxyType({name: tuple(values) for name, values in pinned.items()}),
            attributes=None if self._returns_all else frozenset(self._heads | set(self._item or ())),
            item=None if self._item is None else MappingProxyType(self._item),
            parameters=self._parameters,
        )

    def _end(self) -> None:
        cursor = self.cursor
        if any(cursor.at(word) for word in _SET_OPERATIONS):
            _unbounded()
        if not cursor.at_end():
            cursor.fail()
        # PartiQL may read a path's first step as the table's alias (`SELECT t.a FROM t` reads `a`), so a
        # path that starts with the table or index name has no one meaning idgate can rely on.
        aliases = {self._table.casefold(), self._table.rpartition("/")[2].casefold()}
        if self._index is not None:
            aliases.add(self._index.casefold())
        if any(head.casefold() in aliases for head in self._heads):
            cursor.fail("a path in the statement starts with its table or index name")

    # --- statements ---

    def _select(self, *, exists: bool) -> None:
        cursor = self.cursor
        if cursor.accept("*"):
            self._returns_all = not exists  # EXISTS reads the item but returns none of it
        elif exists:
            cursor.fail()
        else:
            cursor.commas(self._path)
        cursor.expect("from")
        self._table_reference(index=not exists)
        if cursor.accept("where"):
            self._pins = self._condition()
        elif exists:
            cursor.fail()
        if not exists and cursor.accept("order"):
            cursor.expect("by")
            cursor.commas(self._order_key)

    def _order_key(self) -> None:
        self._path()
        if not self.cursor.accept("asc"):
            self.cursor.accept("desc")

    def _update(self) -> None:
        cursor = self.cursor
        self._table_reference(index=False)
        clauses = 0
        while cursor.at("set") or cursor.at("remove"):
            cursor.commas(self._assignment if cursor.take().text.lower() == "set" else self._path)
            clauses += 1
        if not clauses:
            cursor.fail()
        cursor.expect("where")
        self._pins = self._condition()
        if cursor.accept("returning"):
            cursor.one_of("all", "modified")
            cursor.one_of("old", "new")
            cursor.expect("*")
            self._returns_all = True

    def _assignment(self) -> None:
        self._path()
        self.cursor.expect("=")
        self._operand(_SET_FUNCTIONS)

    def _table_reference(self, *, index: bool) -> None:
        cursor = self.cursor
        if cursor.at("(") and cursor.at("select", 1):
            _unbounded()
        self._table = self._identifier()
        if cursor.accept("."):
            if not index:
                cursor.fail()
            self._index = self._identifier()
        if cursor.at(",") or any(cursor.at(word) for word in _JOINS + _SET_OPERATIONS):
            _unbounded()

    # --- conditions: OR binds loosest, then AND, then NOT; each returns the pins of its top-level ANDs ---

    def _condition(self) -> list[tuple[str, Value]]:
        pins = self._conjunction()
        if not self.cursor.at("or"):
            return pins
        while self.cursor.accept("or"):
            self._conjunction()
        return []  # an OR pins nothing: either side may hold

    def _conjunction(self) -> list[tuple[str, Value]]:
        pins = self._unary()
        while self.cursor.accept("and"):
            pins.extend(self._unary())
        return pins

    def _unary(self) -> list[tuple[str, Value]]:
        cursor = self.cursor
        if cursor.accept("not"):
            with cursor.nested():
                self._unary()
            return []
        if cursor.at("("):
            if cursor.at("select", 1):
                _unbounded()
            cursor.take()
            with cursor.nested():
                pins = self._condition()
            cursor.expect(")")
            return pins
        return self._predicate()

    def _predicate(self) -> list[tuple[str, Value]]:
        cursor = self.cursor
        function = cursor.call(_CONDITION_FUNCTIONS)
        if function is not None:
            if cursor.at("select"):
                _unbounded()
            self._path()
            if _CONDITION_FUNCTIONS[function] == 2:
                cursor.expect(",")
                self._operand(_WHERE_FUNCTIONS)
            cursor.expect(")")
            return []
        left = self._operand(_WHERE_FUNCTIONS)
        token = cursor.take()
        if token.kind == "op" and token.text in _COMPARATORS:
            right = self._operand(_WHERE_FUNCTIONS)
            return _pin(left, right) + _pin(right, left) if token.text == "=" else []
        keyword = token.text.lower() if token.kind == "word" else ""
        if keyword == "between":
            self._operand(_WHERE_FUNCTIONS)
            cursor.expect("and")
            self._operand(_WHERE_FUNCTIONS)
            return []
        if keyword == "is":
            cursor.accept("not")
            cursor.one_of("null", "missing")
            return []
        if keyword == "in":
            return self._in(left)
        cursor.fail()

    def _in(self, left: _Operand) -> list[tuple[str, Value]]:
        cursor = self.cursor
        if cursor.accept("["):
            close = "]"
        else:
            cursor.expect("(")
            if cursor.at("select"):
                _unbounded()
            close = ")"
        values = cursor.commas(self._value)
        cursor.expect(close)
        return [(left.attribute, value) for value in values] if left.attribute is not None else []

    # --- operands, values and paths ---

    def _operand(self, functions: frozenset[str]) -> _Operand:
        """Terms joined by + and -; only a lone path or a lone value is something a WHERE can pin."""
        cursor = self.cursor
        first = self._term(functions)
        if not (cursor.at("+") or cursor.at("-")):
            return first
        while cursor.accept("+") or cursor.accept("-"):
            self._term(functions)
        return _Operand()

    def _term(self, functions: frozenset[str]) -> _Operand:
        cursor = self.cursor
        token = cursor.peek()
        if cursor.at("(") and cursor.at("select", 1):
            _unbounded()
        if token.kind == "word" and cursor.at("(", 1):
            function = cursor.call(functions) or cursor.fail()
            with cursor.nested():
                if function == "size":
                    self._path()
                else:
                    self._operand(functions)
                    cursor.expect(",")
                    self._operand(functions)
            cursor.expect(")")
            return _Operand()
        if token.kind == "quoted" or (token.kind == "word" and token.text.lower() not in _RESERVED):
            head, nested = self._path()
            return _Operand(attribute=None if nested else head)
        return _Operand(value=self._value())

    def _value(self) -> Value:
        """A literal or a `?`.  A collection is read through for its parameters and is a Value of neither."""
        cursor = self.cursor
        token = cursor.take()
        word = token.text.lower() if token.kind == "word" else ""
        if token.kind == "string":
            return Value(literal={"S": token.text[1:-1].replace("''", "'")})
        if token.kind == "number":
            return Value(literal={"N": token.text})
        if word in ("true", "false"):
            return Value(literal={"BOOL": word == "true"})
        if word == "null":
            return Value(literal={"NULL": True})
        if word == "missing":
            return Value()
        if token.kind != "op":
            cursor.fail()
        if token.text == "?":
            self._parameters += 1
            return Value(param=self._parameters - 1)
        if token.text == "-" and cursor.peek().kind == "number":
            return Value(literal={"N": "-" + cursor.take().text})
        with cursor.nested():
            if token.text == "{":
                self._tuple()
            elif token.text in _CLOSERS:
                self._sequence(_CLOSERS[token.text])
            else:
                cursor.fail()
        return Value()

    def _sequence(self, close: str) -> None:
        cursor = self.cursor
        if not cursor.accept(close):
            cursor.commas(self._value)
            cursor.expect(close)

    def _tuple(self) -> dict[str, Value]:
        """`'key': value, ... }` after its `{`.  A key given twice is refused: which of them counts is
        exactly the kind of detail two readers can disagree on."""
        cursor = self.cursor
        entries: dict[str, Value] = {}

        def entry() -> None:
            key = cursor.take_kind("string").text[1:-1].replace("''", "'")
            cursor.expect(":")
            if key in entries:
                cursor.fail()
            entries[key] = self._value()

        if not cursor.accept("}"):
            cursor.commas(entry)
            cursor.expect("}")
        return entries

    def _path(self) -> tuple[str, bool]:
        """The path's top-level attribute (its first element) and whether it goes deeper."""
        cursor = self.cursor
        head = self._identifier()
        nested = False
        while True:
            if cursor.accept("."):
                self._identifier()
            elif cursor.accept("["):
                if not cursor.take_kind("number").text.isdigit():
                    cursor.fail()
                cursor.expect("]")
            else:
                break
            nested = True
        self._heads.add(head)
        return head, nested

    def _identifier(self) -> str:
        """`"name"` (with `""` for a quote; the whole of it is one name, dots included) or a plain word."""
        token = self.cursor.take()
        if token.kind == "quoted" and len(token.text) > 2:
            return token.text[1:-1].replace('""', '"')
        if token.kind == "word" and token.text.lower() not in _RESERVED:
            return token.text
        self.cursor.fail()
