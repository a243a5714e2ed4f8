"""DynamoDB expressions read into the top-level attributes and placeholders they touch, and every shape
idgate cannot read with certainty refused: undefined names, key-condition tricks, deep or long input."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from proxy.aws.dynamodb import expressions
from proxy.aws.dynamodb.expressions import KeyCondition, Used, condition, key_condition, projection, update
from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

NAMES = {"#n": "a.b", "#a": "alpha", "#b": "beta", "#pk": "pk", "#sk": "sk", "#s": "Status"}


def refused(call: Callable[[], object]) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        call()
    assert caught.value.reason is Reason.INVALID_DYNAMODB_REQUEST
    return caught.value


# --- conditions and filters ---

@pytest.mark.parametrize(("text", "attributes", "values"), [
    ("a = :v", {"a"}, {":v"}),
    ("a <> :v", {"a"}, {":v"}),
    ("a < :v AND b <= :w AND c > :x AND d >= :y", {"a", "b", "c", "d"}, {":v", ":w", ":x", ":y"}),
    ("a = b", {"a", "b"}, set()),
    (":v = a", {"a"}, {":v"}),
    ("a BETWEEN :lo AND :hi", {"a"}, {":lo", ":hi"}),
    ("a IN (:x, :y, b)", {"a", "b"}, {":x", ":y"}),
    ("a IN (:x)", {"a"}, {":x"}),
    ("attribute_exists(a)", {"a"}, set()),
    ("attribute_not_exists(a.b)", {"a"}, set()),
    ("attribute_type(a, :t)", {"a"}, {":t"}),
    ("begins_with(a, :p)", {"a"}, {":p"}),
    ("contains(a, :p)", {"a"}, {":p"}),
    ("contains(a, b)", {"a", "b"}, set()),
    ("size(a) > :n", {"a"}, {":n"}),
    ("size(a.b[2]) BETWEEN :lo AND size(c)", {"a", "c"}, {":lo"}),
    ("NOT a = :v", {"a"}, {":v"}),
    ("NOT (a = :v OR b = :w)", {"a", "b"}, {":v", ":w"}),
    ("a = :v OR b = :w AND NOT c = :x", {"a", "b", "c"}, {":v", ":w", ":x"}),
    ("((a = :v))", {"a"}, {":v"}),
    ("a.b.c[0][1].d = :v", {"a"}, {":v"}),
    ("a[3] = :v", {"a"}, {":v"}),
    ("x_1 = :v_1", {"x_1"}, {":v_1"}),
    ("_x = :V", {"_x"}, {":V"}),
    ("size = :v", {"size"}, {":v"}),  # a word that is a function only when called
    ("a . b = :v", {"a"}, {":v"}),
    ("\ta\n=\r\n:v  ", {"a"}, {":v"}),
    ("a=:v", {"a"}, {":v"}),
])
def test_conditions_give_their_top_level_attributes_and_values(
        text: str, attributes: set[str], values: set[str]) -> None:
    used = condition(text, {})
    assert used == Used(frozenset(attributes), frozenset(), frozenset(values))


@pytest.mark.parametrize("text", [
    "a = :v and b = :w or not c = :x",
    "a BETWEEN :lo and :hi",
    "a Between :lo aNd :hi",
    "a in (:x)",
    "ATTRIBUTE_EXISTS(a) AND Begins_With(b, :p) AND SIZE(c) > :n AND Contains(d, :q)",
    "Attribute_Type(e, :t) OR attribute_NOT_exists(f)",
])
def test_keywords_and_functions_are_case_insensitive(text: str) -> None:
    assert condition(text, {}).attributes <= {"a", "b", "c", "d", "e", "f"}
    assert condition(text, {}).attributes


def test_an_unquoted_dotted_path_is_nested_but_a_placeholder_names_one_attribute() -> None:
    assert condition("a.b = :v", {}).attributes == {"a"}
    assert condition("#n = :v", NAMES).attributes == {"a.b"}
    assert condition("#n.c = :v", NAMES).attributes == {"a.b"}
    assert condition("#a.#b = :v", NAMES).attributes == {"alpha"}
    assert condition("#a[0].#b = :v", NAMES) == Used(frozenset({"alpha"}), frozenset({"#a", "#b"}), frozenset({":v"}))
    assert condition("x.#b = :v", NAMES).attributes == {"x"}


def test_placeholders_used_are_reported() -> None:
    used = condition("#s = :open AND attribute_exists(#a)", NAMES)
    assert used == Used(frozenset({"Status", "alpha"}), frozenset({"#s", "#a"}), frozenset({":open"}))


@pytest.mark.parametrize("names", [
    {},
    {"#other": "x"},
    {"#n": ""},
    {"#n": 5},
    {"#n": None},
    {"#n": ["a"]},
    {"#N": "a"},  # placeholders are case-sensitive
])
def test_an_undefined_or_non_string_name_is_refused(names: dict[str, object]) -> None:
    refused(lambda: condition("#n = :v", names))  # type: ignore[arg-type]


@pytest.mark.parametrize("names", [
    {"#a-b": "x", "#a": "y"},  # DynamoDB could read `#a-b` as one placeholder where idgate reads `#a - b`
    {"n": "x"},
    {"#": "x"},
    {"#a b": "x"},
    {5: "x"},
    {"#é": "x"},
])
def test_names_outside_the_placeholder_syntax_are_refused_even_unused(names: dict[object, str]) -> None:
    refused(lambda: update("SET x = #a - b", names))  # type: ignore[arg-type]


def test_names_must_be_a_mapping() -> None:
    refused(lambda: condition("a = :v", [("#a", "x")]))  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "a",
    "a =",
    "= :v",
    "a = :v AND",
    "a = :v OR",
    "NOT",
    "a = = :v",
    "a = :v = :w",
    "a == :v",
    "a != :v",
    "a = 5",
    "a = 'x'",
    'a = "x"',
    "(a = :v",
    "a = :v)",
    "a = :v))",
    "((a = :v)",
    "()",
    "(a) = :v",
    "a = :v b = :w",
    "a = :v, b = :w",
    "a BETWEEN :lo",
    "a BETWEEN :lo OR :hi",
    "a IN ()",
    "a IN (:x,)",
    "a IN :x",
    "a IN (:x",
    "size(a)",
    "size(:v) > :n",
    "size(a, b) > :n",
    "attribute_exists(a) = :v",
    "attribute_exists(:v)",
    "attribute_exists()",
    "attribute_exists(a, b)",
    "attribute_type(a, b)",
    "begins_with(a)",
    "unknown_function(a)",
    "a.1 = :v",
    "a[] = :v",
    "a[x] = :v",
    "a[:v] = :v",
    "a[-1] = :v",
    "a[1 = :v",
    "a. = :v",
    ".a = :v",
    "1a = :v",
    "# = :v",
    "#n:v = :v",
    ": = a",
    "a = : v",
    "and = :v",
    "a = :v AND or = :w",
    "a.not = :v",
    "a = :v; b = :w",
    "a = :v -- comment",
    "a = :v /* comment */",
    "a = :v\x00",
    "a\x0b= :v",
    "é = :v",
    "a = :vé",
    "ａ = :v",  # a fullwidth letter, which some readers fold to `a`
    "a\u00a0= :v",
    "a = :v\ufeff",
])
def test_malformed_conditions_are_refused(text: str) -> None:
    refused(lambda: condition(text, NAMES))


def test_a_non_string_expression_is_refused() -> None:
    refused(lambda: condition(None, {}))  # type: ignore[arg-type]
    refused(lambda: condition(b"a = :v", {}))  # type: ignore[arg-type]


# --- limits ---

def test_the_length_limit_is_4096_utf8_bytes() -> None:
    name = "a" * (4096 - len(" = :v"))
    assert condition(name + " = :v", {}).attributes == {name}
    error = refused(lambda: condition(name + "b = :v", {}))
    assert "too long" in error.message


def test_a_huge_expression_is_refused_without_echoing_it() -> None:
    text = "a = :v AND " * 100_000 + "b = :w"
    error = refused(lambda: condition(text, {}))
    assert len(error.message) < 80 and "a = :v" not in error.message


@pytest.mark.parametrize("depth", [1, 16, 32])
def test_nesting_up_to_32_is_read(depth: int) -> None:
    assert condition("(" * depth + "a = :v" + ")" * depth, {}).attributes == {"a"}
    assert condition("NOT " * depth + "a = :v", {}).attributes == {"a"}
    assert update("SET a = " + "list_append(" * depth + ":v" + ", :w)" * depth, {}).attributes == {"a"}


@pytest.mark.parametrize("text", [
    "(" * 33 + "a = :v" + ")" * 33,
    "NOT " * 33 + "a = :v",
    "NOT (" * 17 + "a = :v" + ")" * 17,
    "(" * 2000 + "a = :v" + ")" * 2000,  # within the length limit: the depth budget refuses it
    "(" * 4000,
    "(" * 10_000 + "a = :v" + ")" * 10_000,
])
def test_deeper_nesting_is_refused_not_a_recursion_error(text: str) -> None:
    refused(lambda: condition(text, {}))


def test_deep_update_functions_are_refused() -> None:
    refused(lambda: update("SET a = " + "list_append(" * 33 + ":v" + ", :w)" * 33, {}))
    refused(lambda: update("SET a = " + "if_not_exists(a, " * 1000, {}))


def test_long_flat_conjunctions_need_no_recursion() -> None:
    text = " AND ".join(f"a{i} = :v" for i in range(250))
    assert len(condition(text, {}).attributes) == 250


# --- projections ---

@pytest.mark.parametrize(("text", "attributes"), [
    ("a", {"a"}),
    ("a, b", {"a", "b"}),
    ("a.b, a.c, d[0]", {"a", "d"}),
    ("#n", {"a.b"}),
    ("#n, a.b", {"a.b", "a"}),
    ("#a.#b[1], #s", {"alpha", "Status"}),
    ("  a ,b  ", {"a", "b"}),
])
def test_projections(text: str, attributes: set[str]) -> None:
    assert projection(text, NAMES).attributes == attributes
    assert projection(text, NAMES).values == frozenset()


@pytest.mark.parametrize("text", ["", "a,", ",a", "a b", "a, :v", "size(a)", "*", "a = :v", "a,,b", "and"])
def test_malformed_projections_are_refused(text: str) -> None:
    refused(lambda: projection(text, NAMES))


# --- update expressions ---

@pytest.mark.parametrize(("text", "attributes", "values"), [
    ("SET a = :v", {"a"}, {":v"}),
    ("set a = :v, b.c = d", {"a", "b", "d"}, {":v"}),
    ("SET a = a + :one", {"a"}, {":one"}),
    ("SET a = b - c", {"a", "b", "c"}, set()),
    ("SET a = :x + :y", {"a"}, {":x", ":y"}),
    ("SET a = if_not_exists(b, :zero) + :one", {"a", "b"}, {":zero", ":one"}),
    ("SET a = list_append(if_not_exists(a, :empty), :v)", {"a"}, {":empty", ":v"}),
    ("SET a = LIST_APPEND(:v, b)", {"a", "b"}, {":v"}),
    ("SET a = If_Not_Exists(b, c)", {"a", "b", "c"}, set()),
    ("SET #a[0] = :v", {"alpha"}, {":v"}),
    ("SET #n = :v", {"a.b"}, {":v"}),
    ("REMOVE a", {"a"}, set()),
    ("REMOVE a, b.c, d[2]", {"a", "b", "d"}, set()),
    ("ADD a :v", {"a"}, {":v"}),
    ("ADD a :v, b :w", {"a", "b"}, {":v", ":w"}),
    ("DELETE s :v", {"s"}, {":v"}),
    ("SET a = :v REMOVE b ADD c :w DELETE d :x", {"a", "b", "c", "d"}, {":v", ":w", ":x"}),
    ("delete d :x add c :w remove b set a = :v", {"a", "b", "c", "d"}, {":v", ":w", ":x"}),
    ("SET a=:v REMOVE b", {"a", "b"}, {":v"}),
    ("SET a = b REMOVE c", {"a", "b", "c"}, set()),
])
def test_updates(text: str, attributes: set[str], values: set[str]) -> None:
    used = update(text, NAMES)
    assert used.attributes == attributes
    assert used.values == values


@pytest.mark.parametrize("text", [
    "",
    "SET",
    "a = :v",
    "SET a",
    "SET a =",
    "SET a = :v,",
    "SET a = :v SET b = :w",
    "REMOVE a REMOVE b",
    "SET a = :v REMOVE b set c = :w",
    "SET a = :v + :w + :x",
    "SET a = (:v)",
    "SET a = size(b)",
    "SET a = attribute_exists(b)",
    "SET a = unknown(b, :v)",
    "SET a = if_not_exists(:v, b)",
    "SET a = if_not_exists(b)",
    "SET a = list_append(:v)",
    "SET a = :v b = :w",
    "SET :v = a",
    "SET set = :v",
    "SET a = :v, remove = :w",
    "REMOVE a :v",
    "REMOVE :v",
    "ADD a",
    "ADD a b",
    "ADD a = :v",
    "DELETE a",
    "UPSERT a = :v",
    "SET a = :v WHERE b = :w",
    "SET a = :v;",
    "SET a = :v AND b = :w",
])
def test_malformed_updates_are_refused(text: str) -> None:
    refused(lambda: update(text, NAMES))


# --- key conditions ---

@pytest.mark.parametrize(("text", "attributes", "value"), [
    ("pk = :p", {"pk"}, ":p"),
    ("#pk = :p", {"pk"}, ":p"),
    ("pk = :p AND sk = :s", {"pk", "sk"}, ":p"),
    ("sk = :s AND pk = :p", {"pk", "sk"}, ":p"),
    ("pk = :p AND sk < :s", {"pk", "sk"}, ":p"),
    ("pk = :p AND sk <= :s", {"pk", "sk"}, ":p"),
    ("pk = :p AND sk > :s", {"pk", "sk"}, ":p"),
    ("pk = :p AND #sk >= :s", {"pk", "sk"}, ":p"),
    ("pk = :p AND sk BETWEEN :a AND :b", {"pk", "sk"}, ":p"),
    ("pk = :p and sk between :a and :b", {"pk", "sk"}, ":p"),
    ("pk = :p AND begins_with(sk, :s)", {"pk", "sk"}, ":p"),
    ("Begins_With(sk, :s) AND pk = :p", {"pk", "sk"}, ":p"),
    ("(pk = :p) AND (sk = :s)", {"pk", "sk"}, ":p"),
    ("(pk = :p AND sk = :s)", {"pk", "sk"}, ":p"),
    ("((pk = :p))", {"pk"}, ":p"),
])
def test_key_conditions(text: str, attributes: set[str], value: str) -> None:
    result = key_condition(text, NAMES, "pk")
    assert result.partition_value == value
    assert result.used.attributes == attributes
    assert isinstance(result, KeyCondition)


def test_a_partition_key_with_a_dot_is_named_through_a_placeholder() -> None:
    assert key_condition("#n = :p", NAMES, "a.b").used.attributes == {"a.b"}
    refused(lambda: key_condition("a.b = :p", NAMES, "a.b"))  # the nested path a -> b, not the key "a.b"


@pytest.mark.parametrize("text", [
    ":p = pk",                                   # DynamoDB accepts only `key = :value`
    "pk = :p AND :s < sk",
    "pk = :a AND pk = :b",                       # the partition key twice
    "pk = :a AND #pk = :b",                      # ...also through a placeholder
    "pk = :a AND begins_with(pk, :b)",
    "pk = :a AND pk > :b",
    "(pk = :a) AND (pk = :a)",
    "pk < :p",                                   # not an equality
    "pk BETWEEN :a AND :b",
    "begins_with(pk, :p)",
    "pk <> :p",
    "sk = :s",                                   # no partition key at all
    "other = :p",
    "pk = :p OR sk = :s",
    "pk = :a OR pk = :b",
    "NOT pk = :p",
    "pk = :p AND NOT sk = :s",
    "pk = :p AND (sk = :s OR sk = :t)",
    "pk = :p AND sk = :s AND other = :o",        # more than one sort-key condition
    "pk = :p AND sk > :a AND sk < :b",
    "pk = :p AND sk <> :s",
    "pk = :p AND contains(sk, :s)",
    "pk = :p AND attribute_exists(sk)",
    "pk = :p AND size(sk) > :s",
    "pk = :p AND sk IN (:a, :b)",
    "pk IN (:p)",
    "pk = sk",
    "pk = size(x)",
    "pk = :p AND sk = other",
    "pk = :p AND sk BETWEEN :a AND other",
    "pk = :p AND begins_with(sk, other)",
    "pk.x = :p",                                 # a nested path is not a key
    "pk[0] = :p",
    "pk = :p AND sk.x = :s",
    "unknown(pk, :p)",
    "pk = :p AND",
    "pk = :p,",
    "",
])
def test_key_condition_tricks_are_refused(text: str) -> None:
    refused(lambda: key_condition(text, NAMES, "pk"))


def test_a_key_condition_reads_only_the_partition_key_it_is_given() -> None:
    refused(lambda: key_condition("pk = :p", NAMES, "PK"))
    assert key_condition("PK = :p AND pk = :q", NAMES, "PK").partition_value == ":p"


def test_the_module_limits_match_dynamodb() -> None:
    assert expressions.MAX_BYTES == 4096


@pytest.mark.parametrize("text", ["pk = :p OR sk = :s", "NOT pk = :p", "pk = :p AND NOT (sk = :s)"])
def test_or_and_not_are_refused_in_a_key_condition_as_such(text: str) -> None:
    assert "only use AND" in refused(lambda: key_condition(text, NAMES, "pk")).message


def frames() -> int:
    frame, count = sys._getframe(), 0
    while frame is not None:
        frame, count = frame.f_back, count + 1
    return count


def test_the_deepest_accepted_expression_needs_few_frames() -> None:
    # The depth budget bounds the recursion, not Python's limit: 32 levels must fit in 200 frames.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames() + 200)
    try:
        assert condition("(" * 32 + "a = :v" + ")" * 32, {}).attributes == {"a"}
        assert condition("NOT (" * 16 + "a = :v" + ")" * 16, {}).attributes == {"a"}
        assert update("SET a = " + "list_append(" * 32 + ":v" + ", :w)" * 32, {}).attributes == {"a"}
    finally:
        sys.setrecursionlimit(limit)
