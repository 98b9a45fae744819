"""A strict parser for ``--where`` filters: one boolean expression over label/metadata columns.

LanceDB's own parser ignored trailing tokens (``tissue = 'G' AN pathology = 'malignant'`` ran
as ``tissue = 'G'``) and accepted a second statement after ``;``. Here the whole text must be
one expression of the grammar below, every column must be a label or metadata column (never
``path``, ``patient``, ``group``, ``key``, ``content_hash``, ``vector`` or ``thumbnail``, which
could probe identities), and the expression is re-emitted with escaped identifiers::

    expr      := term (OR term)*
    term      := factor (AND factor)*
    factor    := NOT factor | '(' expr ')' | predicate
    predicate := column ( op literal | [NOT] IN '(' literal (',' literal)* ')'
                 | [NOT] LIKE string | IS [NOT] NULL | [NOT] BETWEEN literal AND literal )
    op        := = | != | <> | < | <= | > | >=
    literal   := 'string' | number | TRUE | FALSE | NULL
    column    := name | "name" | `name`
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from priorcase.errors import QueryError

MAX_WHERE_CHARS = 4000

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")+"|`(?:[^`]|``)+`)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "BETWEEN", "TRUE", "FALSE"}


@dataclass
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:  # only trailing whitespace is left
            break
        kind = match.lastgroup or "bad"
        start = match.start(kind)
        value = match.group(kind)
        if kind == "bad":
            hint = "; only one expression is allowed" if value == ";" else ""
            raise _error(text, f"unexpected {value!r} at character {start + 1}{hint}")
        if kind == "word" and value.upper() in KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append(_Token(kind, value, start))
        pos = match.end()
    return tokens


def _error(where: str, problem: str) -> QueryError:
    return QueryError(f"invalid --where {where!r}: {problem}")


class _Parser:
    def __init__(self, where: str, columns: Mapping[str, str]) -> None:
        self.where = where
        self.columns = columns
        self.tokens = _tokens(where)
        self.i = 0

    def peek(self, *texts: str) -> bool:
        return self.i < len(self.tokens) and (not texts or self.tokens[self.i].text in texts)

    def take(self, *texts: str) -> _Token:
        if not self.peek(*texts):
            found = self.tokens[self.i].text if self.i < len(self.tokens) else "end of filter"
            wanted = " or ".join(repr(t) for t in texts) if texts else "more"
            raise _error(self.where, f"expected {wanted}, found {found!r}")
        self.i += 1
        return self.tokens[self.i - 1]

    def parse(self) -> str:
        if not self.tokens:
            raise _error(self.where, "empty filter")
        sql = self.expr()
        if self.i < len(self.tokens):
            token = self.tokens[self.i]
            raise _error(
                self.where,
                f"unexpected {token.text!r} at character {token.pos + 1} after a complete "
                "expression (misspelt AND/OR?)",
            )
        return sql

    def expr(self) -> str:
        parts = [self.term()]
        while self.peek("OR"):
            self.take()
            parts.append(self.term())
        return " OR ".join(parts)

    def term(self) -> str:
        parts = [self.factor()]
        while self.peek("AND"):
            self.take()
            parts.append(self.factor())
        return " AND ".join(parts)

    def factor(self) -> str:
        if self.peek("NOT"):
            self.take()
            return f"NOT {self.factor()}"
        if self.peek("("):
            self.take()
            inner = self.expr()
            self.take(")")
            return f"({inner})"
        return self.predicate()

    def column(self) -> str:
        if self.i >= len(self.tokens):
            raise _error(self.where, "expected a column name, found end of filter")
        token = self.tokens[self.i]
        if token.kind == "word":
            name = token.text
        elif token.kind == "quoted":
            quote = token.text[0]
            name = token.text[1:-1].replace(quote * 2, quote)
        else:
            raise _error(self.where, f"expected a column name, found {token.text!r}")
        self.i += 1
        field = self.columns.get(name)
        if field is None:
            known = ", ".join(sorted(c for c in self.columns if not c.startswith("label_")))
            raise _error(self.where, f"unknown or hidden column {name!r} (filterable: {known})")
        return "`" + field.replace("`", "``") + "`"

    def literal(self) -> str:
        if not self.peek():
            raise _error(self.where, "expected a value, found end of filter")
        token = self.take()
        if token.kind in ("string", "number") or token.text in ("TRUE", "FALSE", "NULL"):
            # numbers are compared as text: every label and metadata column is a string
            return token.text if token.kind == "string" else f"'{token.text}'"
        raise _error(self.where, f"expected a value, found {token.text!r}")

    def predicate(self) -> str:
        column = self.column()
        if self.peek("IS"):
            self.take()
            negate = "NOT " if self.peek("NOT") and self.take() else ""
            self.take("NULL")
            return f"{column} IS {negate}NULL"
        negate = ""
        if self.peek("NOT"):
            self.take()
            negate = "NOT "
            if not self.peek("IN", "LIKE", "BETWEEN"):
                raise _error(
                    self.where, "NOT after a column must be NOT IN, NOT LIKE or NOT BETWEEN"
                )
        if self.peek("IN"):
            self.take()
            self.take("(")
            values = [self.literal()]
            while self.peek(","):
                self.take()
                values.append(self.literal())
            self.take(")")
            return f"{column} {negate}IN ({', '.join(values)})"
        if self.peek("LIKE"):
            self.take()
            pattern = self.take()
            if pattern.kind != "string":
                raise _error(self.where, f"LIKE needs a quoted pattern, found {pattern.text!r}")
            return f"{column} {negate}LIKE {pattern.text}"
        if self.peek("BETWEEN"):
            self.take()
            low = self.literal()
            self.take("AND")
            return f"{column} {negate}BETWEEN {low} AND {self.literal()}"
        if negate:
            raise _error(self.where, "NOT must precede IN, LIKE or BETWEEN")
        if self.i < len(self.tokens) and self.tokens[self.i].kind == "op":
            op = self.take().text
            return f"{column} {op} {self.literal()}"
        found = self.tokens[self.i].text if self.i < len(self.tokens) else "end of filter"
        raise _error(self.where, f"expected a comparison after the column, found {found!r}")


def parse_where(where: str, columns: Mapping[str, str]) -> str:
    """The filter re-emitted as LanceDB SQL with escaped identifiers, or a one-line QueryError.

    ``columns`` maps each name a user may write to its table field (label/metadata columns).
    """
    if len(where) > MAX_WHERE_CHARS:
        raise QueryError(f"invalid --where: longer than {MAX_WHERE_CHARS} characters")
    if "\n" in where or "\r" in where:
        where = " ".join(where.split())
    return _Parser(where, columns).parse()
