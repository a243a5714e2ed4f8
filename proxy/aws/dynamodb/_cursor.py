"""The tokenizer and token cursor both DynamoDB parsers stand on: one forward regex pass, keywords in any
case, and a nesting budget that keeps their recursive descent far from Python's stack limit."""

from __future__ import annotations

import re
from collections.abc import Collection, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

MAX_DEPTH = 32  # parentheses, NOT, function calls and collections, counted together

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # the name of the pattern group that matched, or "end"
    text: str  # as written


END = Token("end", "")


def refuse(message: str) -> NoReturn:
    raise BadRequest(message, reason=Reason.INVALID_DYNAMODB_REQUEST)


def tokenize(text: str, pattern: re.Pattern[str], max_bytes: int, what: str) -> list[Token]:
    """Every token of `text` but whitespace (the group "space"), then END.  The pattern's named groups are
    the token kinds; none of them can match empty or backtrack far, so this is linear in the text."""
    if not isinstance(text, str) or not text:
        refuse(f"{what} is missing")
    # Characters first: a huge text is refused before it is encoded.
    if len(text) > max_bytes:
        refuse(f"{what} is too long")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, which no UTF-8 request can carry
        refuse(f"{what} is not valid text")
    if size > max_bytes:
        refuse(f"{what} is too long")
    tokens: list[Token] = []
    at = 0
    while at < len(text):
        match = pattern.match(text, at)
        if match is None or match.lastgroup is None or match.end() == at:
            refuse(f"{what} has a character idgate does not accept")
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group()))
        at = match.end()
    tokens.append(END)
    return tokens


class Cursor:
    """A position in a token list.  Looking ahead is bounded, nothing backtracks, and every failure is
    the one fixed message of the text being parsed."""

    __slots__ = ("_tokens", "_at", "_depth", "_what")

    def __init__(self, tokens: list[Token], what: str) -> None:
        self._tokens = tokens
        self._at = 0
        self._depth = 0
        self._what = what

    def peek(self, ahead: int = 0) -> Token:
        index = self._at + ahead
        return self._tokens[index] if index < len(self._tokens) else END

    def take(self) -> Token:
        token = self.peek()
        if token.kind != "end":
            self._at += 1
        return token

    def at(self, text: str, ahead: int = 0) -> bool:
        """The token is the operator `text`, or the keyword `text` (given in lower case) in any case."""
        token = self.peek(ahead)
        if text[0].isalpha():
            return token.kind == "word" and token.text.lower() == text
        return token.kind == "op" and token.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self._at += 1
            return True
        return False

    def expect(self, *texts: str) -> None:
        for text in texts:
            if not self.accept(text):
                self.fail()

    def one_of(self, *texts: str) -> str:
        for text in texts:
            if self.accept(text):
                return text
        self.fail()

    def commas(self, read: Callable[[], T]) -> list[T]:
        """`read` once, then again after each comma."""
        items = [read()]
        while self.accept(","):
            items.append(read())
        return items

    def call(self, names: Collection[str]) -> str | None:
        """At `name(` with `name` one of `names` (lower case): take both and return the name; else None,
        nothing taken."""
        token = self.peek()
        if token.kind == "word" and self.at("(", 1) and (name := token.text.lower()) in names:
            self._at += 2
            return name
        return None

    def take_kind(self, kind: str) -> Token:
        token = self.take()
        if token.kind != kind:
            self.fail()
        return token

    def at_end(self) -> bool:
        return self.peek().kind == "end"

    def fail(self, message: str | None = None) -> NoReturn:
        refuse(message or f"{self._what} is not one idgate can parse")

    @contextmanager
    def nested(self) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            refuse(f"{self._what} nests too deeply")
        yield
        self._depth -= 1
