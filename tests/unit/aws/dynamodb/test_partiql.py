"""DynamoDB PartiQL statements read into their one table, index, pinned key values and top-level attributes;
statements naming several tables are unbounded, and anything idgate cannot read with certainty is refused."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import pytest

from proxy.aws.dynamodb import partiql
from proxy.aws.dynamodb.partiql import Statement, Value, parse
from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders"


def refused(text: str, reason: Reason = Reason.INVALID_DYNAMODB_REQUEST) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse(text)
    assert caught.value.reason is reason
    return caught.value


def s(text: str) -> Value:
    return Value(literal={"S": text})


def n(text: str) -> Value:
    return Value(literal={"N": text})


def p(index: int) -> Value:
    return Value(param=index)


def pins(text: str) -> dict[str, tuple[Value, ...]]:
    return dict(parse(text).key_values)


# --- SELECT ---

def test_a_select_reads_its_table_index_pins_and_attributes() -> None:
    statement = parse('SELECT a, "b"."c", d[1] FROM "orders" WHERE pk = ? AND sk = ?')
    assert statement == Statement(
        kind="select", table="orders", index=None, key_values={"pk": (p(0),), "sk": (p(1),)},
        attributes=frozenset({"a", "b", "d", "pk", "sk"}), item=None, parameters=2)


@pytest.mark.parametrize(("text", "table", "index"), [
    ("SELECT * FROM orders", "orders", None),
    ('SELECT * FROM "orders"', "orders", None),
    ('SELECT * FROM "my-table.v2"', "my-table.v2", None),  # one quoted name, dots and all
    ('SELECT * FROM "orders"."by_date"', "orders", "by_date"),
    ('SELECT * FROM orders.by_date', "orders", "by_date"),
    ('SELECT * FROM "orders" . "by-date"', "orders", "by-date"),
    (f'SELECT * FROM "{ARN}"', ARN, None),
    (f'SELECT * FROM "{ARN}"."idx"', ARN, "idx"),
    ('SELECT * FROM "we""ird"', 'we"ird', None),
    ('SELECT * FROM Orders', "Orders", None),
])
def test_tables_and_indexes_as_written(text: str, table: str, index: str | None) -> None:
    statement = parse(text)
    assert (statement.kind, statement.table, statement.index) == ("select", table, index)


def test_select_star_reads_every_attribute() -> None:
    statement = parse("SELECT * FROM t WHERE pk = 'a' AND x > 3")
    assert statement.attributes is None
    assert statement.key_values == {"pk": (s("a"),)}


@pytest.mark.parametrize(("text", "attributes"), [
    ("SELECT a FROM t", {"a"}),
    ('SELECT "a.b" FROM t', {"a.b"}),               # a quoted dotted name is one attribute
    ('SELECT a.b FROM t', {"a"}),
    ('SELECT "a"."b" FROM t', {"a"}),
    ('SELECT a.b[1].c, "x""y" FROM t', {"a", 'x"y'}),
    ("SELECT a FROM t WHERE b = 1 AND c.d = 2", {"a", "b", "c"}),
    ("SELECT a FROM t WHERE pk = 'x' ORDER BY sk DESC", {"a", "pk", "sk"}),
    ("SELECT a FROM t WHERE pk = 'x' ORDER BY sk ASC, other", {"a", "pk", "sk", "other"}),
    ("SELECT a FROM t WHERE begins_with(b, 'x') AND contains(c, d) AND attribute_type(e, 'S')",
     {"a", "b", "c", "d", "e"}),
    ("SELECT a FROM t WHERE exists(b) AND size(c) > 2 AND f IS MISSING AND g IS NOT NULL",
     {"a", "b", "c", "f", "g"}),
    ("SELECT a FROM t WHERE b BETWEEN c AND 5 OR NOT d IN [1, 2]", {"a", "b", "c", "d"}),
    ("SELECT a FROM t WHERE b + 1 > c - 2", {"a", "b", "c"}),
])
def test_select_attributes(text: str, attributes: set[str]) -> None:
    assert parse(text).attributes == attributes


def test_keywords_are_case_insensitive_and_names_are_not() -> None:
    statement = parse("select A, b from Tbl where PK = 'x' and B Between 1 And 2 order by Sk desc")
    assert (statement.table, statement.attributes) == ("Tbl", {"A", "b", "PK", "B", "Sk"})
    assert statement.key_values == {"PK": (s("x"),)}
    assert parse("SeLeCt * FrOm t WhErE a Is NoT mIsSiNg").attributes is None


# --- what a WHERE pins ---

@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT * FROM t WHERE pk = 'x'", {"pk": (s("x"),)}),
    ("SELECT * FROM t WHERE 'x' = pk", {"pk": (s("x"),)}),
    ("SELECT * FROM t WHERE pk = 12", {"pk": (n("12"),)}),
    ("SELECT * FROM t WHERE pk = -1.5e3", {"pk": (n("-1.5e3"),)}),
    ("SELECT * FROM t WHERE pk = 007", {"pk": (n("007"),)}),                 # as written
    ("SELECT * FROM t WHERE pk = 'it''s'", {"pk": (s("it's"),)}),
    ("SELECT * FROM t WHERE pk = ''", {"pk": (s(""),)}),
    ("SELECT * FROM t WHERE pk = 'ü ☃'", {"pk": (s("ü ☃"),)}),
    ("SELECT * FROM t WHERE pk = TRUE AND b = false",
     {"pk": (Value(literal={"BOOL": True}),), "b": (Value(literal={"BOOL": False}),)}),
    ("SELECT * FROM t WHERE pk = NULL", {"pk": (Value(literal={"NULL": True}),)}),
    ("SELECT * FROM t WHERE pk = MISSING", {"pk": (Value(),)}),
    ("SELECT * FROM t WHERE pk = ? AND sk = ?", {"pk": (p(0),), "sk": (p(1),)}),
    ("SELECT * FROM t WHERE ? = pk AND sk = ?", {"pk": (p(0),), "sk": (p(1),)}),
    ('SELECT * FROM t WHERE "pk" = \'x\'', {"pk": (s("x"),)}),
    ('SELECT * FROM t WHERE "a.b" = \'x\'', {"a.b": (s("x"),)}),
    ("SELECT * FROM t WHERE pk IN ['a', 'b']", {"pk": (s("a"), s("b"))}),
    ("SELECT * FROM t WHERE pk IN ('a', ?)", {"pk": (s("a"), p(0))}),
    ("SELECT * FROM t WHERE pk IN [[1, 2]]", {"pk": (Value(),)}),            # not a key anyone can hold
    ("SELECT * FROM t WHERE pk = [1]", {"pk": (Value(),)}),
    ("SELECT * FROM t WHERE pk = {'a': 1}", {"pk": (Value(),)}),
    ("SELECT * FROM t WHERE pk = 'a' AND pk = 'b'", {"pk": (s("a"), s("b"))}),
    ("SELECT * FROM t WHERE pk = 'a' AND pk IN ['b']", {"pk": (s("a"), s("b"))}),
    ("SELECT * FROM t WHERE (pk = 'a' AND sk = 'b')", {"pk": (s("a"),), "sk": (s("b"),)}),
    ("SELECT * FROM t WHERE ((pk = 'a')) AND (x = 1 OR y = 2)", {"pk": (s("a"),)}),
    ("SELECT * FROM t WHERE pk = 'a' AND NOT sk = 'b'", {"pk": (s("a"),)}),
    ("SELECT * FROM t WHERE pk = 'a' AND x <> 1 AND y != 2 AND z > 3", {"pk": (s("a"),)}),
    # nothing is pinned
    ("SELECT * FROM t WHERE pk = 'a' OR pk = 'b'", {}),
    ("SELECT * FROM t WHERE pk = 'a' AND sk = 'b' OR x = 1", {}),
    ("SELECT * FROM t WHERE x = 1 OR pk = 'a' AND sk = 'b'", {}),
    ("SELECT * FROM t WHERE NOT pk <> 'a'", {}),
    ("SELECT * FROM t WHERE NOT (pk = 'a')", {}),
    ("SELECT * FROM t WHERE pk > 'a'", {}),
    ("SELECT * FROM t WHERE pk BETWEEN 'a' AND 'b'", {}),
    ("SELECT * FROM t WHERE begins_with(pk, 'a')", {}),
    ("SELECT * FROM t WHERE pk.x = 'a'", {}),                                # a nested path pins no attribute
    ("SELECT * FROM t WHERE pk[0] = 'a'", {}),
    ("SELECT * FROM t WHERE pk = other", {}),
    ("SELECT * FROM t WHERE pk = other.x", {}),
    ("SELECT * FROM t WHERE pk + 0 = 5", {}),
    ("SELECT * FROM t WHERE pk = 'a' + 'b'", {}),
    ("SELECT * FROM t WHERE size(pk) = 1", {}),
    ("SELECT * FROM t WHERE pk.x IN ['a']", {}),
    ("SELECT * FROM t WHERE 'a' = 'a'", {}),
    ("SELECT * FROM t", {}),
])
def test_what_the_where_pins(text: str, expected: Mapping[str, tuple[Value, ...]]) -> None:
    assert pins(text) == expected


def test_parameters_are_numbered_in_order_of_appearance() -> None:
    statement = parse("UPDATE t SET a = ?, b = list_append(b, [?, ?]) WHERE pk = ? AND sk IN [?, 'x']")
    assert statement.parameters == 5
    assert statement.key_values == {"pk": (p(3),), "sk": (p(4), s("x"))}
    assert parse("SELECT * FROM t WHERE a = '?' AND \"?\" = 1").parameters == 0


# --- INSERT ---

def test_an_insert_gives_its_item() -> None:
    statement = parse("INSERT INTO \"t\" VALUE {'pk': ?, 'sk': 'x''y', 'n': 1, 'm': {'a': [?, <<1, 2>>]}, "
                      "'b': TRUE, 'z': NULL, 'a.b': -2}")
    assert statement.kind == "insert"
    assert statement.table == "t" and statement.index is None
    assert statement.item == {"pk": p(0), "sk": s("x'y"), "n": n("1"), "m": Value(),
                              "b": Value(literal={"BOOL": True}), "z": Value(literal={"NULL": True}),
                              "a.b": n("-2")}
    assert statement.attributes == {"pk", "sk", "n", "m", "b", "z", "a.b"}
    assert statement.key_values == {}
    assert statement.parameters == 2


def test_insert_is_case_insensitive_and_accepts_an_arn() -> None:
    statement = parse(f"insert into \"{ARN}\" value {{'pk' : 'a'}}")
    assert (statement.table, statement.item) == (ARN, {"pk": s("a")})


@pytest.mark.parametrize("text", [
    "INSERT INTO t VALUE {'pk': 'a', 'pk': 'b'}",         # which one DynamoDB keeps is not idgate's guess
    "INSERT INTO t VALUE {'m': {'k': 1, 'k': 2}}",
    "INSERT INTO t VALUE ?",
    "INSERT INTO t VALUES {'pk': 'a'}",
    "INSERT INTO t VALUE {pk: 'a'}",
    "INSERT INTO t VALUE {\"pk\": 'a'}",
    "INSERT INTO t VALUE {?: 'a'}",
    "INSERT INTO t VALUE {'pk': a}",                      # a path is no value
    "INSERT INTO t VALUE {'pk': 'a'",
    "INSERT INTO t VALUE {'pk' 'a'}",
    "INSERT INTO t VALUE {'pk': 'a',}",
    "INSERT INTO t VALUE {'pk': 'a'} {'pk': 'b'}",
    "INSERT INTO t.idx VALUE {'pk': 'a'}",
    "INSERT t VALUE {'pk': 'a'}",
    "INSERT INTO t VALUE {'pk': 'a'} ON CONFLICT DO NOTHING",
    "INSERT INTO t VALUE [1]",
])
def test_malformed_inserts_are_refused(text: str) -> None:
    refused(text)


# --- UPDATE and DELETE ---

def test_an_update_reads_its_targets_operands_and_where() -> None:
    statement = parse("UPDATE t SET a = a + 1, b.c = list_append(x, [1]) REMOVE d[0] "
                      "SET e = set_add(e, <<'v'>>) SET f = SET_DELETE(f, <<2>>) REMOVE g, h.i "
                      "WHERE pk = 'k' AND sk = 2")
    assert statement.kind == "update"
    assert statement.attributes == {"a", "b", "x", "d", "e", "f", "g", "h", "pk", "sk"}
    assert statement.key_values == {"pk": (s("k"),), "sk": (n("2"),)}


@pytest.mark.parametrize("returning", ["ALL OLD", "MODIFIED OLD", "ALL NEW", "MODIFIED NEW", "all new"])
def test_update_returning_star_returns_every_attribute(returning: str) -> None:
    statement = parse(f"UPDATE t SET a = 1 WHERE pk = 'k' RETURNING {returning} *")
    assert statement.attributes is None
    assert statement.key_values == {"pk": (s("k"),)}


def test_a_delete() -> None:
    statement = parse("DELETE FROM \"t\" WHERE pk = ? AND sk = 'x'")
    assert statement == Statement(kind="delete", table="t", index=None,
                                  key_values={"pk": (p(0),), "sk": (s("x"),)},
                                  attributes=frozenset({"pk", "sk"}), item=None, parameters=1)
    assert parse("delete from t where pk = 'a' returning all old *").attributes is None


@pytest.mark.parametrize("text", [
    "UPDATE t WHERE pk = 'a'",
    "UPDATE t SET a = 1",
    "UPDATE t SET a WHERE pk = 'a'",
    "UPDATE t SET a = WHERE pk = 'a'",
    "UPDATE t SET a = 1, WHERE pk = 'a'",
    "UPDATE t SET a = 1 , REMOVE b WHERE pk = 'a'",
    "UPDATE t REMOVE b = 1 WHERE pk = 'a'",
    "UPDATE t SET a = size(b) WHERE pk = 'a'",
    "UPDATE t SET a = unknown(b, 1) WHERE pk = 'a'",
    "UPDATE t SET a = list_append(b) WHERE pk = 'a'",
    "UPDATE t SET 'a' = 1 WHERE pk = 'a'",
    "UPDATE t SET ? = 1 WHERE pk = 'a'",
    "UPDATE t.idx SET a = 1 WHERE pk = 'a'",
    "UPDATE t SET a = 1 WHERE pk = 'a' RETURNING",
    "UPDATE t SET a = 1 WHERE pk = 'a' RETURNING ALL *",
    "UPDATE t SET a = 1 WHERE pk = 'a' RETURNING ALL OLD",
    "UPDATE t SET a = 1 WHERE pk = 'a' RETURNING ALL OLD a",
    "UPDATE t SET a = 1 WHERE pk = 'a' RETURNING NONE",
    "UPDATE t SET a = 1 WHERE pk = 'a' LIMIT 1",
    "UPDATE t SET select = 1 WHERE pk = 'a'",
    "DELETE FROM t",
    "DELETE t WHERE pk = 'a'",
    "DELETE FROM t WHERE pk = 'a' RETURNING ALL NEW *",
    "DELETE FROM t WHERE pk = 'a' RETURNING MODIFIED OLD *",
    "DELETE FROM t.idx WHERE pk = 'a'",
    "DELETE a FROM t WHERE pk = 'a'",
])
def test_malformed_updates_and_deletes_are_refused(text: str) -> None:
    refused(text)


# --- EXISTS ---

def test_exists_reads_its_where_and_returns_nothing() -> None:
    statement = parse('EXISTS(SELECT * FROM "Music" WHERE "Artist" = \'Acme Band\' AND "SongTitle" = ? '
                      "AND Awards IS NOT MISSING)")
    assert statement == Statement(
        kind="exists", table="Music", index=None,
        key_values={"Artist": (s("Acme Band"),), "SongTitle": (p(0),)},
        attributes=frozenset({"Artist", "SongTitle", "Awards"}), item=None, parameters=1)
    assert parse("exists ( select * from t where pk = 'a' )").kind == "exists"


@pytest.mark.parametrize("text", [
    "EXISTS(SELECT * FROM t)",
    "EXISTS(SELECT a FROM t WHERE pk = 'a')",
    "EXISTS(SELECT * FROM t.idx WHERE pk = 'a')",
    "EXISTS(SELECT * FROM t WHERE pk = 'a'",
    "EXISTS SELECT * FROM t WHERE pk = 'a'",
    "EXISTS(SELECT * FROM t WHERE pk = 'a') AND pk = 'b'",
    "EXISTS(SELECT * FROM t WHERE pk = 'a' ORDER BY sk)",
    "NOT EXISTS(SELECT * FROM t WHERE pk = 'a')",
    "EXISTS(DELETE FROM t WHERE pk = 'a')",
])
def test_malformed_exists_is_refused(text: str) -> None:
    refused(text)


# --- several tables ---

@pytest.mark.parametrize("text", [
    "SELECT * FROM a, b",
    "SELECT * FROM a , b WHERE pk = 'x'",
    "SELECT * FROM a JOIN b ON a.x = b.y",
    "SELECT * FROM a INNER JOIN b ON x = y",
    "SELECT * FROM a LEFT JOIN b ON x = y",
    "SELECT * FROM a CROSS JOIN b",
    "SELECT * FROM a UNION SELECT * FROM b",
    "SELECT * FROM a WHERE pk = 'x' UNION SELECT * FROM b",
    "SELECT * FROM a WHERE pk = 'x' EXCEPT SELECT * FROM b",
    "SELECT * FROM (SELECT * FROM b)",
    "SELECT * FROM a WHERE pk IN (SELECT pk FROM b)",
    "SELECT * FROM a WHERE pk = (SELECT pk FROM b)",
    "SELECT * FROM a WHERE (SELECT pk FROM b) = 1",
    "SELECT * FROM a WHERE pk = 'x' AND EXISTS(SELECT * FROM b WHERE pk = 'y')",
    "SELECT * FROM a WHERE x = 1 + (SELECT 1 FROM b)",
    "UPDATE a, b SET x = 1 WHERE pk = 'x'",
    "UPDATE a SET x = (SELECT y FROM b) WHERE pk = 'x'",
    "DELETE FROM a WHERE pk IN (SELECT pk FROM b)",
])
def test_statements_naming_several_tables_are_unbounded(text: str) -> None:
    error = refused(text, Reason.UNBOUNDED_STATEMENT)
    assert "FROM" not in error.message


# --- refusals ---

@pytest.mark.parametrize("text", [
    "SELECT * FROM t -- all of it",
    "SELECT * FROM t WHERE pk = 'a' --",
    "SELECT * FROM t WHERE a = 1--1",
    "SELECT * FROM t /* hidden */ WHERE pk = 'a'",
    "/**/SELECT * FROM t",
])
def test_comments_are_refused(text: str) -> None:
    assert "comment" in refused(text).message


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "SELECT",
    "SELECT *",
    "SELECT * FROM",
    "SELECT FROM t",
    "SELECT * FROM t;",
    "SELECT * FROM t; DELETE FROM t WHERE pk = 'a'",
    "SELECT * FROM t WHERE",
    "SELECT * FROM t WHERE pk",
    "SELECT * FROM t WHERE pk = ",
    "SELECT * FROM t WHERE pk = 'a' junk",
    "SELECT * FROM t WHERE pk = 'a' AND",
    "SELECT * FROM t WHERE pk == 'a'",
    "SELECT * FROM t WHERE pk = 'a' = 'b'",
    "SELECT * FROM t WHERE (pk = 'a'",
    "SELECT * FROM t WHERE pk = 'a')",
    "SELECT * FROM t WHERE (pk) = 'a'",
    "SELECT * FROM t WHERE pk IN ['a'",
    "SELECT * FROM t WHERE pk IN 'a'",
    "SELECT * FROM t WHERE pk IN ?",
    "SELECT * FROM t WHERE pk IN []",
    "SELECT * FROM t WHERE pk IN [a]",
    "SELECT * FROM t WHERE pk IN <<'a'>>",
    "SELECT * FROM t WHERE pk NOT IN ['a']",
    "SELECT * FROM t WHERE pk IS STRING",
    "SELECT * FROM t WHERE pk IS",
    "SELECT * FROM t WHERE flag",
    "SELECT * FROM t WHERE TRUE",
    "SELECT * FROM t WHERE pk LIKE 'a%'",
    "SELECT * FROM t WHERE pk = 'unterminated",
    "SELECT * FROM t WHERE pk = 'a''",
    "SELECT * FROM t WHERE pk = 'a\\' OR pk = ''",   # a backslash escape idgate will not guess at
    'SELECT * FROM "t\\" WHERE pk = \'a\'',
    'SELECT * FROM "t',
    'SELECT * FROM ""',
    "SELECT * FROM t WHERE pk = \"a",
    "SELECT * FROM t WHERE pk = `a`",                 # Ion literals
    "SELECT * FROM t WHERE pk = 1.",
    "SELECT * FROM t WHERE pk = .5",
    "SELECT * FROM t WHERE pk = 1e",
    "SELECT * FROM t WHERE pk = 1abc",
    "SELECT * FROM t WHERE pk = 1.2.3",
    "SELECT * FROM t WHERE pk = +1",
    "SELECT * FROM t WHERE pk = - 'a'",
    "SELECT * FROM t WHERE pk = x'00'",
    "SELECT * FROM t WHERE a[1.5] = 1",
    "SELECT * FROM t WHERE a[-1] = 1",
    "SELECT * FROM t WHERE a[?] = 1",
    "SELECT * FROM t WHERE a['b'] = 1",
    "SELECT * FROM t WHERE a.* = 1",
    "SELECT * FROM t WHERE unknown(a) = 1",
    "SELECT * FROM t WHERE begins_with(a)",
    "SELECT * FROM t WHERE begins_with('a', 'b')",
    "SELECT * FROM t WHERE size(a, b) = 1",
    "SELECT * FROM t WHERE list_append(a, b) = 1",
    "SELECT * FROM t WHERE pk = 'a' LIMIT 1",
    "SELECT * FROM t WHERE pk = 'a' ORDER sk",
    "SELECT * FROM t ORDER BY",
    "SELECT *, a FROM t",
    "SELECT a, * FROM t",
    "SELECT t.* FROM t",
    "SELECT a AS b FROM t",
    "SELECT DISTINCT a FROM t",
    "SELECT VALUE a FROM t",
    "SELECT size(a) FROM t",
    "SELECT 'a' FROM t",
    "SELECT ? FROM t",
    "SELECT a, FROM t",
    "SELECT * FROM t AS x",
    "SELECT * FROM t x",
    "SELECT * FROM t.i.j",
    "SELECT * FROM 't'",
    "SELECT * FROM ?",
    "SELECT * FROM select",
    "SELECT * FROM t WHERE select = 1",
    "SELECT * FROM t WHERE from = 1",
    "SELECT * FROM t WHERE a.where = 1",
    "SELECT t.a FROM t",                              # t.a may mean attribute a of the table alias t
    'SELECT "t".a FROM "t"',
    "SELECT T.a FROM t",
    "SELECT * FROM t WHERE t.pk = 'a'",
    "SELECT * FROM t.idx WHERE idx.pk = 'a'",
    f'SELECT orders.a FROM "{ARN}"',
    "UPDATE t SET t.a = 1 WHERE pk = 'a'",
    "TRUNCATE t",
    "CREATE TABLE t",
    "REPLACE INTO t VALUE {'pk': 'a'}",
    "UPSERT INTO t VALUE {'pk': 'a'}",
    "? ",
    "SELECT * FROM t WHERE pk = 'a'\x00",
    "SELECT * FROM t WHERE pk = 'a' \x0b",
    "SELECT\u00a0* FROM t",
    "ＳＥＬＥＣＴ * FROM t",
    "SELECT * FROM ｔ",
    "SELECT * FROM t WHERE pk = 'a' ;",
    "SELECT * FROM t WHERE pk = '\ud800'",           # a lone surrogate
    "SELECT * FROM t WHERE pk = {'a': 1, 'a': 2}",
    "SELECT * FROM t WHERE pk = {a: 1}",
    "SELECT * FROM t WHERE pk = [1,]",
    "SELECT * FROM t WHERE pk = <<1",
    "SELECT * FROM t WHERE pk = [1, 2",
    "SELECT * FROM t WHERE pk = {'a': 1",
    "SELECT * FROM t WHERE pk = 'a' AND NOT",
    "SELECT * FROM t WHERE pk = 'a' OR",
])
def test_malformed_statements_are_refused(text: str) -> None:
    refused(text)


def test_a_non_string_statement_is_refused() -> None:
    with pytest.raises(BadRequest):
        parse(None)  # type: ignore[arg-type]


# --- limits ---

def test_the_length_limit_is_8192_utf8_bytes() -> None:
    head = "SELECT * FROM t WHERE pk = '"
    fits = head + "a" * (8192 - len(head) - 1) + "'"
    assert parse(fits).key_values["pk"][0].literal == {"S": "a" * (8192 - len(head) - 1)}
    assert "too long" in refused(fits + " ").message
    # under 8,192 characters but over 8,192 bytes: the limit is on bytes, as DynamoDB counts them
    wide = head + "é" * 4100 + "'"
    assert len(wide) < 8192
    assert "too long" in refused(wide).message


def test_a_huge_statement_is_refused_without_echoing_it() -> None:
    error = refused("SELECT * FROM t WHERE " + "pk = 'secret' OR " * 100_000 + "x = 1")
    assert len(error.message) < 80 and "secret" not in error.message


@pytest.mark.parametrize("depth", [1, 31])
def test_nesting_up_to_the_budget_is_read(depth: int) -> None:
    statement = parse("SELECT * FROM t WHERE " + "(" * depth + "pk = 'a'" + ")" * depth)
    assert statement.key_values == {"pk": (s("a"),)}
    item = parse("INSERT INTO t VALUE {'pk': " + "[" * depth + "1" + "]" * depth + "}").item
    assert item == {"pk": Value()}


@pytest.mark.parametrize("text", [
    "SELECT * FROM t WHERE " + "(" * 33 + "pk = 'a'" + ")" * 33,
    "SELECT * FROM t WHERE " + "NOT " * 40 + "pk = 'a'",
    "SELECT * FROM t WHERE " + "(" * 4000 + "pk = 'a'" + ")" * 4000,   # within the length limit
    "SELECT * FROM t WHERE " + "(" * 8000,
    "SELECT * FROM t WHERE " + "(" * 10_000 + "pk = 'a'" + ")" * 10_000,
    "INSERT INTO t VALUE {'pk': " + "[" * 40 + "1" + "]" * 40 + "}",
    "INSERT INTO t VALUE {'pk': " + "{'a': " * 40 + "1" + "}" * 40 + "}",
    "INSERT INTO t VALUE {'pk': " + "[" * 8000,
    "UPDATE t SET a = " + "list_append(" * 40 + "a" + ", [1])" * 40 + " WHERE pk = 'a'",
    "SELECT * FROM t WHERE a = " + "size(" * 3000,
])
def test_deeper_nesting_is_refused_not_a_recursion_error(text: str) -> None:
    refused(text)


@pytest.mark.parametrize("text", [
    "SELECT * FROM t WHERE pk = '" + "''" * 4000,    # an unterminated string of escaped quotes
    'SELECT * FROM "' + '""' * 4000,
    "SELECT * FROM t WHERE pk = " + "1" * 8000 + "x",
    "SELECT * FROM t WHERE pk IN [" + "1," * 4000,
])
def test_pathological_tokens_are_refused(text: str) -> None:
    refused(text)


def test_long_flat_conditions_need_no_recursion() -> None:
    text = "SELECT * FROM t WHERE pk = 'a' AND " + " AND ".join(f"a{i} = 1" for i in range(600))
    assert len(parse(text).attributes or ()) == 0
    assert len(parse(text.replace("*", "x", 1)).attributes or ()) == 602


def test_the_module_limits_match_dynamodb() -> None:
    assert partiql.MAX_BYTES == 8192


def frames() -> int:
    frame, count = sys._getframe(), 0
    while frame is not None:
        frame, count = frame.f_back, count + 1
    return count


def test_the_deepest_accepted_statement_needs_few_frames() -> None:
    # The depth budget bounds the recursion, not Python's limit: 32 levels must fit in 200 frames.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames() + 200)
    try:
        assert parse("SELECT * FROM t WHERE " + "(" * 32 + "pk = 'a'" + ")" * 32).key_values == {"pk": (s("a"),)}
        assert parse("SELECT * FROM t WHERE " + "NOT (" * 16 + "pk = 'a'" + ")" * 16).key_values == {}
        assert parse("UPDATE t SET a = " + "list_append(" * 31 + "a" + ", [1])" * 31 + " WHERE pk = 'a'").kind == "update"
        assert parse("INSERT INTO t VALUE {'a': " + "{'b': " * 31 + "1" + "}" * 31 + "}").item == {"a": Value()}
    finally:
        sys.setrecursionlimit(limit)
