"""Expressions on rows: ``--where`` and ``--by`` of ``export``. Pure; never ``eval``.

    status == "done" and result.kept == true
    result.reward >= 1 or not result.verdict
    result.verdict == "pass"

Grammar: ``or`` of ``and`` of ``not`` of a comparison (``==``, ``!=``, ``<``, ``<=``,
``>``, ``>=``) between operands, or an operand alone (its truth); parentheses group.
An operand is a dotted path into the row (``result.reward``, ``dialogue.0.role``;
it starts with a row field), a string in double or single quotes, a number,
``true``, ``false`` or ``null``.

A path that is absent or null is null: ``== null`` holds for it, an ordering
comparison with it is false, and alone it is false. ``true`` is not ``1``
(as in the summary figures). Ordering compares numbers with numbers and
strings with strings; any other pair is false. A mistake is one ``ConfigError``
line naming the flag and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import ROW_FIELDS

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<op>==|!=|<=|>=|<|>|\(|\))
  | (?P<path>[A-Za-z_]\w*(?:\.\w+)*)
  | (?P<bad>=|&&|\|\||!|.)
""", re.VERBOSE)
_WORDS = {"true": True, "false": False, "null": None}
_KEYWORDS = ("and", "or", "not")
_HINTS = {"=": "'==' compares", "&&": "write 'and'", "||": "write 'or'", "!": "write 'not'"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # string, number, op, path, word, end
    text: str
    col: int  # 1-based


class Expr:
    """A parsed expression: ``test(row)`` its truth, ``value(row)`` its value."""

    def __init__(self, text: str, fn: Callable[[Mapping[str, Any]], Any]) -> None:
        self.text = text
        self._fn = fn

    def value(self, row: Mapping[str, Any]) -> Any:
        return self._fn(row)

    def test(self, row: Mapping[str, Any]) -> bool:
        return _truth(self._fn(row))

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"


def parse(text: str, flag: str = "--where") -> Expr:
    """``text`` as an ``Expr``; a ``ConfigError`` naming ``flag`` and the column if it is
    not one."""
    p = _Parser(text, flag)
    fn = p.expr()
    if p.peek.kind != "end":
        p.fail(p.peek, f"unexpected {p.peek.text!r} (join conditions with and, or)")
    return Expr(text, fn)


def lookup(row: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` (keys, or list indexes as digits); None if absent."""
    cur: Any = row
    for key in path:
        if isinstance(cur, Mapping):
            cur = cur.get(key)
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        else:
            return None
        if cur is None:
            return None
    return cur


def _tokens(text: str, flag: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "bad"
        tok = m.group()
        col = m.start() + 1
        if kind == "space":
            continue
        if kind == "bad":
            hint = _HINTS.get(tok, "")
            raise ConfigError(f"{flag}: unexpected {tok!r} at column {col}"
                              + (f" ({hint})" if hint else "") + f": {text}")
        if kind == "path" and (tok in _WORDS or tok in _KEYWORDS):
            kind = "word"
        out.append(_Tok(kind, tok, col))
    out.append(_Tok("end", "end of the expression", len(text) + 1))
    return out


class _Parser:
    def __init__(self, text: str, flag: str) -> None:
        self.text, self.flag = text, flag
        self.toks = _tokens(text, flag)
        self.i = 0

    @property
    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, msg: str) -> None:
        raise ConfigError(f"{self.flag}: {msg} at column {tok.col}: {self.text}")

    def expr(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.conj()
        while self.peek.text == "or" and self.peek.kind == "word":
            self.take()
            left = _either(left, self.conj())
        return left

    def conj(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.neg()
        while self.peek.text == "and" and self.peek.kind == "word":
            self.take()
            left = _both(left, self.neg())
        return left

    def neg(self) -> Callable[[Mapping[str, Any]], Any]:
        if self.peek.text == "not" and self.peek.kind == "word":
            self.take()
            inner = self.neg()
            return lambda r: not _truth(inner(r))
        return self.comparison()

    def comparison(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.operand()
        if self.peek.kind == "op" and self.peek.text not in "()":
            op = self.take().text
            right = self.operand()
            compare = _COMPARE[op]
            return lambda r: compare(left(r), right(r))
        return left

    def operand(self) -> Callable[[Mapping[str, Any]], Any]:
        tok = self.take()
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr()
            if self.peek.text != ")":
                self.fail(self.peek, f"expected ')', got {self.peek.text!r}")
            self.take()
            return inner
        if tok.kind == "string":
            s = _unquote(tok.text)
            return lambda r: s
        if tok.kind == "number":
            n = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            return lambda r: n
        if tok.kind == "word" and tok.text in _WORDS:
            w = _WORDS[tok.text]
            return lambda r: w
        if tok.kind == "path":
            path = tuple(tok.text.split("."))
            if path[0] not in ROW_FIELDS:
                self.fail(tok, f"{tok.text!r} does not start with a row field (one of "
                          f"{', '.join(ROW_FIELDS)}; an agent's state is under result.)")
            return lambda r: lookup(r, path)
        self.fail(tok, f"expected a field, a string, a number, true, false or null, "
                  f"got {tok.text!r}")
        raise AssertionError("unreachable")


Fn = Callable[[Mapping[str, Any]], Any]


def _either(a: Fn, b: Fn) -> Fn:
    return lambda r: _truth(a(r)) or _truth(b(r))


def _both(a: Fn, b: Fn) -> Fn:
    return lambda r: _truth(a(r)) and _truth(b(r))


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _truth(v: Any) -> bool:
    return bool(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # true is not 1
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if _is_num(a) and _is_num(b):
            return not (math.isnan(a) or math.isnan(b)) and op(a, b)
        if isinstance(a, str) and isinstance(b, str):
            return op(a, b)
        return False
    return compare


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _eq,
    "!=": lambda a, b: not _eq(a, b),
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
}
