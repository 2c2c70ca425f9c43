"""The ``where`` of :meth:`Dataset.from_journal`: which examples to keep, by their current annotation.

A small grammar, parsed here and evaluated in Python; the text never reaches SQL::

    condition := term ("or" term)*
    term      := factor ("and" factor)*
    factor    := "not" factor | "(" condition ")" | "annotated" | "corrected"
               | "label" ("=" | "!=") STRING
               | "label" ["not"] "in" "(" STRING ("," STRING)* ")"
    STRING    := a single-quoted text; a quote inside is doubled ('it''s')

Keywords are case-insensitive; labels are compared exactly. ``annotated`` holds for an example with an
annotation in force, ``corrected`` for one whose annotation corrects its gold. A comparison of the label
is false for an example without a label (not annotated, or annotated with only a note), as in SQL:
``not annotated or label != 'ok'`` keeps the unannotated examples too.

Examples:
    >>> keep = parse_where("label IN ('wrong gold', 'ambiguous') and not corrected")
    >>> keep(AnnotationState(label="ambiguous", annotated=True, corrected=False))
    True
    >>> keep(AnnotationState(label=None, annotated=False, corrected=False))
    False
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from dspex_lab.errors import DatasetError

__all__ = ["MAX_WHERE", "AnnotationState", "parse_where"]

# A filter is a line a person writes, not a program.
MAX_WHERE = 2000

_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<symbol>!=|<>|=|\(|\)|,)|(?P<word>[A-Za-z_]+))")
_KEYWORDS = frozenset({"and", "or", "not", "in", "label", "annotated", "corrected"})


@dataclass(frozen=True)
class AnnotationState:
    """What a filter sees of one example: its current annotation's label, and whether it has one that corrects gold."""

    label: str | None
    annotated: bool
    corrected: bool


Predicate = Callable[[AnnotationState], bool]


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "symbol", "word" or "end"
    text: str
    position: int


def _tokens(where: str) -> list[_Token]:
    found, position = [], 0
    while position < len(where):
        if where[position:].strip() == "":
            break
        match = _TOKEN.match(where, position)
        if match is None:
            start = len(where) - len(where[position:].lstrip())
            if where[start] == "'":
                raise _error(where, start, "a quoted label that is never closed")
            raise _error(where, start, f"unexpected {where[start]!r}")
        kind = match.lastgroup or "word"
        text = match.group(kind)
        if kind == "word":
            text = text.lower()
            if text not in _KEYWORDS:
                raise _error(
                    where, match.start(kind), f"unknown word {match.group(kind)!r} (labels are quoted: 'like this')"
                )
        found.append(_Token(kind, text, match.start(kind)))
        position = match.end()
    found.append(_Token("end", "", len(where)))
    return found


def _error(where: str, position: int, what: str) -> DatasetError:
    return DatasetError(
        f"where {where!r:.200}: {what} at character {position + 1}; see Dataset.from_journal for the grammar"
    )


class _Parser:
    """A recursive-descent parser of the grammar above into a predicate."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.tokens = _tokens(where)
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.current
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def expect(self, kind: str, text: str | None, wanted: str) -> _Token:
        token = self.take(kind, text)
        if token is None:
            seen = "the end" if self.current.kind == "end" else repr(self.current.text)
            raise _error(self.where, self.current.position, f"expected {wanted}, found {seen}")
        return token

    def condition(self) -> Predicate:
        terms = [self.term()]
        while self.take("word", "or"):
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else lambda state: any(term(state) for term in terms)

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.take("word", "and"):
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else lambda state: all(factor(state) for factor in factors)

    def factor(self) -> Predicate:
        if self.take("word", "not"):
            inner = self.factor()
            return lambda state: not inner(state)
        if self.take("symbol", "("):
            inner = self.condition()
            self.expect("symbol", ")", "')'")
            return inner
        if self.take("word", "annotated"):
            return lambda state: state.annotated
        if self.take("word", "corrected"):
            return lambda state: state.corrected
        self.expect("word", "label", "label, annotated, corrected, not or '('")
        return self.comparison()

    def comparison(self) -> Predicate:
        if self.take("symbol", "="):
            wanted = self.string()
            return lambda state: state.label is not None and state.label == wanted
        if self.take("symbol", "!=") or self.take("symbol", "<>"):
            unwanted = self.string()
            return lambda state: state.label is not None and state.label != unwanted
        negated = self.take("word", "not") is not None
        self.expect("word", "in", "=, !=, in or not in after label")
        self.expect("symbol", "(", "'(' after in")
        labels = {self.string()}
        while self.take("symbol", ","):
            labels.add(self.string())
        self.expect("symbol", ")", "')' after the labels")
        return lambda state: state.label is not None and (state.label in labels) != negated

    def string(self) -> str:
        token = self.expect("string", None, "a quoted label such as 'wrong gold'")
        return token.text[1:-1].replace("''", "'")


def parse_where(where: str) -> Predicate:
    """Return the predicate a ``where`` text describes (see the module's grammar).

    Raises:
        DatasetError: the text is not in the grammar (the message says where), or longer than
            :data:`MAX_WHERE` characters.
    """
    if not isinstance(where, str):
        raise DatasetError(f"where must be text such as \"label = 'wrong gold'\", got {type(where).__name__}")
    if len(where) > MAX_WHERE:
        raise DatasetError(f"where is {len(where)} characters; at most {MAX_WHERE}")
    parser = _Parser(where)
    if parser.current.kind == "end":
        raise DatasetError("where is empty: leave it out to keep every example")
    predicate = parser.condition()
    parser.expect("end", None, "and, or or the end")
    return predicate
