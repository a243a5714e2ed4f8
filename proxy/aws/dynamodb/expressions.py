"""DynamoDB expressions (condition, filter, projection, update, key condition) read into the top-level
attributes and placeholders they use, for the gateway to authorize; whatever does not parse is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.aws.dynamodb._cursor import Cursor, refuse, tokenize

Names = Mapping[str, str]

MAX_BYTES = 4096  # DynamoDB's own limit on one expression

_TOKENS = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<name>\#[A-Za-z0-9_]+)
  | (?P<value>:[A-Za-z0-9_]+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+)
  | (?P<op><>|<=|>=|[=<>()\[\],.+-])
""", re.VERBOSE | re.ASCII)
# The placeholder syntax DynamoDB documents.  A key outside it could be tokenized differently by DynamoDB
# (`#a-b` as one placeholder, where idgate reads `#a - b`), so ExpressionAttributeNames may hold no other.
_PLACEHOLDER = re.compile(r"\#[A-Za-z0-9_]+", re.ASCII)
# Grammar words, never an attribute: DynamoDB reserves them too, so refusing them loses no valid request.
_KEYWORDS = frozenset({"and", "or", "not", "between", "in", "set", "remove", "add", "delete"})
_COMPARATORS = frozenset({"=", "<>", "<", "<=", ">", ">="})
_KEY_COMPARATORS = _COMPARATORS - {"<>"}
_CONDITION_FUNCTIONS = {  # name -> argument count; the first argument is always a path
    "attribute_exists": 1, "attribute_not_exists": 1, "attribute_type": 2, "begins_with": 2, "contains": 2,
}
_UPDATE_FUNCTIONS = frozenset({"if_not_exists", "list_append"})


@dataclass(frozen=True, slots=True)
class Used:
    """What one expression touches."""

    attributes: frozenset[str]  # top-level attribute names read or written, resolved through the names
    names: frozenset[str]       # '#placeholders' used
    values: frozenset[str]      # ':placeholders' used


@dataclass(frozen=True, slots=True)
class KeyCondition:
    used: Used
    partition_value: str  # the ':placeholder' the partition key is compared with '=' to


@dataclass(frozen=True, slots=True)
class _Operand:
    kind: str             # "path", "value" or "size"
    text: str             # the path's top-level attribute, or the ':placeholder'
    nested: bool = False  # the path has more than its top-level element


@dataclass(frozen=True, slots=True)
class _Condition:
    op: str  # a comparator, "between", "in", a function name, "and", "or" or "not"
    operands: tuple[_Operand, ...] = ()
    parts: tuple[_Condition, ...] = ()


def condition(text: str, names: Names) -> Used:
    """A ConditionExpression or a FilterExpression."""
    parser = _Parser(text, names)
    parser.condition()
    return parser.finish()


def projection(text: str, names: Names) -> Used:
    parser = _Parser(text, names)
    parser.cursor.commas(parser.path)
    return parser.finish()


def update(text: str, names: Names) -> Used:
    parser = _Parser(text, names)
    parser.update()
    return parser.finish()


def key_condition(text: str, names: Names, partition_key: str) -> KeyCondition:
    """A KeyConditionExpression: `pk = :v`, AND-ed with at most one sort-key condition, and nothing else."""
    parser = _Parser(text, names)
    tree = parser.condition()
    used = parser.finish()
    predicates = _conjuncts(tree)
    on_partition = [p for p in predicates if _key_attribute(p) == partition_key]
    if len(predicates) > 2 or len(on_partition) != 1 or on_partition[0].op != "=":
        refuse("the key condition must compare the partition key once with =")
    return KeyCondition(used, on_partition[0].operands[1].text)


def _conjuncts(tree: _Condition) -> list[_Condition]:
    """The AND-ed predicates of a key condition, through any parentheses; an OR or a NOT is refused."""
    predicates: list[_Condition] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if node.op == "and":
            pending.extend(node.parts)
        elif node.op in ("or", "not"):
            refuse("the key condition may only use AND")
        else:
            predicates.append(node)
    return predicates


def _key_attribute(predicate: _Condition) -> str:
    """The key attribute a key-condition predicate is on; refused unless it is `key op :v`, `key BETWEEN
    :a AND :b` or `begins_with(key, :v)` on a top-level attribute (DynamoDB accepts no reversed form)."""
    if predicate.op in _KEY_COMPARATORS or predicate.op == "begins_with":
        shape: tuple[str, ...] = ("path", "value")
    elif predicate.op == "between":
        shape = ("path", "value", "value")
    else:
        refuse("the key condition has a predicate keys do not support")
    operands = predicate.operands
    if tuple(operand.kind for operand in operands) != shape or operands[0].nested:
        refuse("the key condition has a predicate keys do not support")
    return operands[0].text


class _Parser:
    """Recursive descent over one expression, collecting what it touches as it goes.  Only parentheses,
    NOT and function calls recurse, and the cursor's depth budget bounds all three."""

    __slots__ = ("cursor", "_names", "_attributes", "_used_names", "_values")

    def __init__(self, text: str, names: Names) -> None:
        if not isinstance(names, Mapping) or not all(
                isinstance(key, str) and _PLACEHOLDER.fullmatch(key) for key in names):
            refuse("ExpressionAttributeNames holds a name idgate does not accept")
        self.cursor = Cursor(tokenize(text, _TOKENS, MAX_BYTES, "the expression"), "the expression")
        self._names = names
        self._attributes: set[str] = set()
        self._used_names: set[str] = set()
        self._values: set[str] = set()

    def finish(self) -> Used:
        if not self.cursor.at_end():
            self.cursor.fail()
        return Used(frozenset(self._attributes), frozenset(self._used_names), frozenset(self._values))

    # --- conditions: OR binds loosest, then AND, then NOT ---

    def condition(self) -> _Condition:
        parts = [self._conjunction()]
        while self.cursor.accept("or"):
            parts.append(self._conjunction())
        return parts[0] if len(parts) == 1 else _Condition("or", parts=tuple(parts))

    def _conjunction(self) -> _Condition:
        parts = [self._unary()]
        while self.cursor.accept("and"):
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else _Condition("and", parts=tuple(parts))

    def _unary(self) -> _Condition:
        cursor = self.cursor
        if cursor.accept("not"):
            with cursor.nested():
                return _Condition("not", parts=(self._unary(),))
        if cursor.accept("("):
            with cursor.nested():
                inner = self.condition()
            cursor.expect(")")
            return inner
        return self._predicate()

    def _predicate(self) -> _Condition:
        cursor = self.cursor
        function = cursor.call(_CONDITION_FUNCTIONS)
        if function is not None:
            operands = [self.path()]
            if _CONDITION_FUNCTIONS[function] == 2:
                cursor.expect(",")
                operands.append(self._operand())
            cursor.expect(")")
            if function == "attribute_type" and operands[1].kind != "value":
                cursor.fail()
            return _Condition(function, tuple(operands))
        left = self._operand()
        token = cursor.take()
        if token.kind == "op" and token.text in _COMPARATORS:
            return _Condition(token.text, (left, self._operand()))
        keyword = token.text.lower() if token.kind == "word" else ""
        if keyword == "between":
            low = self._operand()
            cursor.expect("and")
            return _Condition("between", (left, low, self._operand()))
        if keyword == "in":
            cursor.expect("(")
            options = cursor.commas(self._operand)
            cursor.expect(")")
            return _Condition("in", (left, *options))
        cursor.fail()

    def _operand(self) -> _Operand:
        """A path, a ':value' or size(path)."""
        cursor = self.cursor
        token = cursor.peek()
        if token.kind == "value":
            return self._value()
        if cursor.call(("size",)):
            path = self.path()
            cursor.expect(")")
            return _Operand("size", path.text, path.nested)
        return self.path()

    # --- update expressions ---

    def update(self) -> None:
        cursor = self.cursor
        actions = {"set": self._set, "remove": self.path, "add": self._add, "delete": self._add}
        seen: set[str] = set()
        while True:  # each clause at most once, in any order
            token = cursor.take()
            clause = token.text.lower()
            if token.kind != "word" or clause not in actions or clause in seen:
                cursor.fail()
            seen.add(clause)
            cursor.commas(actions[clause])
            if cursor.at_end():
                return

    def _set(self) -> None:
        self.path()
        self.cursor.expect("=")
        self._update_operand()
        if self.cursor.accept("+") or self.cursor.accept("-"):
            self._update_operand()

    def _add(self) -> None:
        """An ADD or a DELETE action: a path and a value."""
        self.path()
        self._value()

    def _update_operand(self) -> None:
        """A path, a ':value', if_not_exists(path, operand) or list_append(operand, operand)."""
        cursor = self.cursor
        token = cursor.peek()
        if token.kind == "value":
            self._value()
            return
        if token.kind == "word" and cursor.at("(", 1):
            function = cursor.call(_UPDATE_FUNCTIONS) or cursor.fail()
            with cursor.nested():
                if function == "if_not_exists":
                    self.path()
                else:
                    self._update_operand()
                cursor.expect(",")
                self._update_operand()
            cursor.expect(")")
            return
        self.path()

    # --- paths and placeholders ---

    def path(self) -> _Operand:
        """element ( '.' element | '[' digits ']' )*; its first element is the top-level attribute."""
        cursor = self.cursor
        head = self._element()
        nested = False
        while True:
            if cursor.accept("."):
                self._element()
            elif cursor.accept("["):
                cursor.take_kind("number")
                cursor.expect("]")
            else:
                break
            nested = True
        self._attributes.add(head)
        return _Operand("path", head, nested)

    def _element(self) -> str:
        token = self.cursor.take()
        if token.kind == "name":
            # The whole resolved name is one element: {"#n": "a.b"} names the attribute "a.b", not a path.
            name = self._names.get(token.text)
            if not isinstance(name, str) or not name:
                refuse("the expression uses an attribute name ExpressionAttributeNames does not define")
            self._used_names.add(token.text)
            return name
        if token.kind == "word" and token.text.lower() not in _KEYWORDS:
            return token.text
        self.cursor.fail()

    def _value(self) -> _Operand:
        token = self.cursor.take_kind("value")
        self._values.add(token.text)
        return _Operand("value", token.text)
