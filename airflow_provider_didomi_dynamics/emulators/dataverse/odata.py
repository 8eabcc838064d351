"""OData v4 query options as Dataverse implements them: ``$filter``, ``$orderby``, ``$select``, key segments.

The filter is parsed into a small AST and compiled into a Python closure over a row dict, so a query evaluates
one function call per row. Types come from the caller's ``resolver`` (the table's attribute metadata), which lets
the compiler reject incompatible comparisons the way Dataverse does (``modifiedon ge 'x'`` is a 400) and apply
Dataverse's semantics: string comparison is case-insensitive, and ``ne`` never matches null (it becomes SQL ``<>``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

Row = dict[str, Any]
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]
# What a predicate needs a row to hold for it to match: (column, its normalised values). A table with an index on
# that column hands the query only those rows (a key lookup by In over 1M contacts reads 50 rows, not 1M).
Lookup = tuple[str, frozenset[Any]]

# Kinds of values the compiler knows how to compare. "any" is for untyped system tables (metadata, webhooks).
KINDS = ("string", "guid", "datetime", "int", "float", "bool", "any")

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US = dt.timedelta(microseconds=1)


class ODataError(ValueError):
    """A malformed or unsupported query option; the HTTP layer turns it into a Dataverse 400 error."""

    def __init__(self, message: str, code: str = "0x80060888") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------------------------
# Date-time helpers (rows store DateTime columns as integer microseconds since the epoch, UTC)
# ---------------------------------------------------------------------------------------------------------------


def parse_datetime_us(text: str) -> int:
    """ISO 8601 (``Z`` or offset; date-only means midnight UTC) to microseconds since the epoch."""
    try:
        value = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise ODataError(f"The value '{text}' is not a valid DateTimeOffset.") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - EPOCH) // _US


def format_us(us: int) -> str:
    """Microseconds since the epoch to ISO 8601 UTC with a ``Z`` (microsecond precision, fixed width)."""
    sec, frac = divmod(us, 1_000_000)
    t = time.gmtime(sec)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - fastest formatting on the hot path
        t.tm_year,
        t.tm_mon,
        t.tm_mday,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        frac,
    )


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:[Zz]|[+-]\d{2}:\d{2})(?![\w:])")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w:-])")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?([mMdDfFlL])?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_./]*")
_ALIAS_RE = re.compile(r"@[A-Za-z_][A-Za-z0-9_]*")

_KEYWORDS = {"and", "or", "not", "eq", "ne", "gt", "ge", "lt", "le", "null", "true", "false"}
_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}


@dataclass(frozen=True)
class Token:
    kind: str  # 'lit' | 'ident' | 'kw' | 'punct' | 'alias'
    value: Any
    edm: str = ""  # for literals: String Guid DateTimeOffset Date Int Decimal Boolean Null List
    pos: int = 0


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "(),=":
            tokens.append(Token("punct", c, pos=i))
            i += 1
            continue
        if c == "[":
            items, i = _read_list(text, i)
            tokens.append(Token("lit", items, "List", i))
            continue
        if c == "'":
            string, i = _read_quoted(text, i)
            tokens.append(Token("lit", string, "String", i))
            continue
        if c == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(text, i)
            except ValueError as exc:
                raise ODataError(f"Syntax error: unterminated string at position {i} in '{text}'.") from exc
            tokens.append(Token("lit", value, "String", i))
            i = end
            continue
        if c == "@":
            m = _ALIAS_RE.match(text, i)
            if not m:
                raise ODataError(f"Syntax error at position {i} in '{text}'.")
            tokens.append(Token("alias", m.group(0), pos=i))
            i = m.end()
            continue
        m = _GUID_RE.match(text, i)
        if m:
            tokens.append(Token("lit", m.group(0).lower(), "Guid", i))
            i = m.end()
            continue
        m = _DATETIME_RE.match(text, i)
        if m:
            tokens.append(Token("lit", parse_datetime_us(m.group(0)), "DateTimeOffset", i))
            i = m.end()
            continue
        m = _DATE_RE.match(text, i)
        if m:
            tokens.append(Token("lit", parse_datetime_us(m.group(0)), "Date", i))
            i = m.end()
            continue
        if c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER_RE.match(text, i)
            if not m:
                raise ODataError(f"Syntax error at position {i} in '{text}'.")
            raw = m.group(0).rstrip("mMdDfFlL")
            if "." in raw or "e" in raw or "E" in raw:
                tokens.append(Token("lit", float(raw), "Decimal", i))
            else:
                tokens.append(Token("lit", int(raw), "Int", i))
            i = m.end()
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            word = m.group(0)
            end = m.end()
            if end < n and text[end] == "'":  # enum literal: Microsoft.Dynamics.CRM.AttributeTypeCode'String'
                enum_value, end = _read_quoted(text, end)
                tokens.append(Token("lit", enum_value, "String", i))
                i = end
                continue
            if word in _KEYWORDS:
                if word == "null":
                    tokens.append(Token("lit", None, "Null", i))
                elif word in ("true", "false"):
                    tokens.append(Token("lit", word == "true", "Boolean", i))
                else:
                    tokens.append(Token("kw", word, pos=i))
            else:
                tokens.append(Token("ident", word, pos=i))
            i = end
            continue
        raise ODataError(f"Syntax error: character '{c}' is not valid at position {i} in '{text}'.")
    return tokens


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a single-quoted OData string starting at ``i``; a doubled quote stands for one quote."""
    out: list[str] = []
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "'":
            if j + 1 < n and text[j + 1] == "'":
                out.append("'")
                j += 2
                continue
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise ODataError(f"There is an unterminated string literal at position {i} in '{text}'.")


def _read_list(text: str, i: int) -> tuple[list[Any], int]:
    """Read ``["a","b"]`` (JSON) or ``['a','b']`` (OData literals) starting at ``i``."""
    try:
        value, end = json.JSONDecoder().raw_decode(text, i)
        if isinstance(value, list):
            return value, end
    except ValueError:
        pass
    depth_end = text.find("]", i)
    if depth_end < 0:
        raise ODataError(f"Syntax error: unterminated list at position {i} in '{text}'.")
    inner = _tokenize(text[i + 1 : depth_end])
    values = [t.value for t in inner if t.kind == "lit"]
    return values, depth_end + 1


# ---------------------------------------------------------------------------------------------------------------
# Parser (recursive descent) producing tuples
# ---------------------------------------------------------------------------------------------------------------

Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str, aliases: dict[str, str]) -> None:
        self.text = text
        self.aliases = aliases
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ODataError(f"Syntax error: unexpected end of expression in '{self.text}'.")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok.kind != "punct" or tok.value != value:
            raise ODataError(f"Syntax error: '{value}' expected at position {tok.pos} in '{self.text}'.")

    def parse(self) -> Node:
        node = self.parse_or()
        tok = self.peek()
        if tok is not None:
            raise ODataError(f"Syntax error at position {tok.pos} in '{self.text}'.")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while (tok := self.peek()) is not None and tok.kind == "kw" and tok.value == "or":
            self.i += 1
            node = ("or", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while (tok := self.peek()) is not None and tok.kind == "kw" and tok.value == "and":
            self.i += 1
            node = ("and", node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.value == "not":
            self.i += 1
            return ("not", self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_primary()
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.value in _COMPARISONS:
            self.i += 1
            right = self.parse_primary()
            return ("cmp", tok.value, left, right)
        return left

    def parse_primary(self) -> Node:
        tok = self.take()
        if tok.kind == "punct" and tok.value == "(":
            node = self.parse_or()
            self.expect(")")
            return node
        if tok.kind == "lit":
            return ("lit", tok.value, tok.edm)
        if tok.kind == "alias":
            return self._alias(tok)
        if tok.kind == "ident":
            nxt = self.peek()
            if nxt is not None and nxt.kind == "punct" and nxt.value == "(":
                return self.parse_call(tok.value)
            return ("prop", tok.value)
        raise ODataError(f"Syntax error: unexpected '{tok.value}' at position {tok.pos} in '{self.text}'.")

    def _alias(self, tok: Token) -> Node:
        raw = self.aliases.get(tok.value)
        if raw is None:
            raise ODataError(f"The parameter alias '{tok.value}' is not defined in the request.")
        inner = _tokenize(raw)
        if len(inner) != 1 or inner[0].kind != "lit":
            raise ODataError(f"The parameter alias '{tok.value}' must be a literal value.")
        return ("lit", inner[0].value, inner[0].edm)

    def parse_call(self, name: str) -> Node:
        self.expect("(")
        positional: list[Node] = []
        named: dict[str, Node] = {}
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.value == ")":
            self.i += 1
            return ("call", name, positional, named)
        while True:
            tok = self.peek()
            after = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
            if tok is not None and tok.kind == "ident" and after is not None and after.value == "=":
                self.i += 2
                named[tok.value] = self.parse_primary()
            else:
                positional.append(self.parse_or())
            tok = self.take()
            if tok.kind == "punct" and tok.value == ")":
                return ("call", name, positional, named)
            if not (tok.kind == "punct" and tok.value == ","):
                raise ODataError(f"Syntax error: ',' or ')' expected at position {tok.pos} in '{self.text}'.")


def parse_filter(text: str, aliases: dict[str, str] | None = None) -> Node:
    """Parse a ``$filter`` expression into an AST (tuples); raises :class:`ODataError` on bad syntax."""
    if not text.strip():
        raise ODataError("The $filter expression must not be empty.")
    return _Parser(text, aliases or {}).parse()


# ---------------------------------------------------------------------------------------------------------------
# Compiler
# ---------------------------------------------------------------------------------------------------------------

# resolver(property path) -> (getter, kind) or raises ODataError for unknown properties.
Resolver = Callable[[str], tuple[Getter, str]]

_EDM_OF_KIND = {
    "string": "Edm.String",
    "guid": "Edm.Guid",
    "datetime": "Edm.DateTimeOffset",
    "int": "Edm.Int32",
    "float": "Edm.Decimal",
    "bool": "Edm.Boolean",
}
_LITERAL_KINDS = {
    "String": {"string", "any"},
    "Guid": {"guid", "any"},
    "DateTimeOffset": {"datetime", "any"},
    "Date": {"datetime", "any"},
    "Int": {"int", "float", "any"},
    "Decimal": {"int", "float", "any"},
    "Boolean": {"bool", "any"},
}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_SWAPPED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
_COMPLEMENT = {"eq": "ne", "ne": "eq", "gt": "le", "ge": "lt", "lt": "ge", "le": "gt"}
_OP_NAMES = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}


def _norm_any(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _normalizer(kind: str) -> Callable[[Any], Any] | None:
    if kind in ("string", "guid", "any"):
        return _norm_any
    return None


def _coerce_literal(value: Any, edm: str, kind: str, op: str) -> Any:
    """Check a literal against the column kind (Dataverse rejects mismatches) and normalise it for comparison."""
    if edm == "Null":
        return None
    allowed = _LITERAL_KINDS.get(edm, set())
    if kind not in allowed:
        raise ODataError(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{_EDM_OF_KIND.get(kind, 'Edm.Untyped')}' and 'Edm.{edm}' for operator kind '{_OP_NAMES[op]}'."
        )
    if isinstance(value, str):
        return value.lower()
    return value


def _coerce_list_value(value: Any, kind: str) -> Any:
    """``In``/``Between`` values arrive as JSON strings; convert them to the column's kind."""
    if value is None:
        return None
    try:
        if kind in ("string", "guid", "any"):
            return str(value).lower()
        if kind == "datetime":
            return parse_datetime_us(str(value))
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() == "true"
    except (TypeError, ValueError) as exc:
        raise ODataError(f"The value '{value}' is not valid for this property.") from exc
    return value


def normalise_for_lookup(value: Any) -> Any:
    """A column value as an index holds it, the way filters compare it (strings case-insensitively)."""
    return _norm_any(value)


def lookup_of(predicate: Predicate | None) -> Lookup | None:
    """The column and values a row must hold for ``predicate`` to match it, when the filter says so; else None."""
    return getattr(predicate, "lookup", None)


def _with_lookup(predicate: Predicate, lookup: Lookup | None) -> Predicate:
    if lookup is not None:
        predicate.lookup = lookup  # type: ignore[attr-defined]
    return predicate


def _combined_lookup(tag: str, a: Predicate, b: Predicate) -> Lookup | None:
    """``and``: either side's lookup narrows the rows; ``or``: both sides' values, when on the same column."""
    la, lb = lookup_of(a), lookup_of(b)
    if tag == "and":
        return la or lb
    if la is not None and lb is not None and la[0] == lb[0]:
        return la[0], la[1] | lb[1]
    return None


def compile_filter(node: Node, resolver: Resolver, negate: bool = False) -> Predicate:
    """Turn an AST from :func:`parse_filter` into ``row -> bool``.

    ``not`` is pushed down to the leaves (De Morgan, complemented operators) so that a comparison with a null
    column stays false under negation, as in SQL's three-valued logic that Dataverse queries run on:
    ``not contains(emailaddress1,'x')`` does not return rows whose email is null.
    """
    tag = node[0]
    if tag in ("and", "or"):
        a, b = compile_filter(node[1], resolver, negate), compile_filter(node[2], resolver, negate)
        if (tag == "and") != negate:
            return _with_lookup(lambda row: a(row) and b(row), _combined_lookup("and", a, b))
        return _with_lookup(lambda row: a(row) or b(row), _combined_lookup("or", a, b))
    if tag == "not":
        return compile_filter(node[1], resolver, not negate)
    if tag == "cmp":
        op = _COMPLEMENT[node[1]] if negate else node[1]
        return _compile_comparison(op, node[2], node[3], resolver)
    if tag == "call":
        return _compile_call(node[1], node[2], node[3], resolver, negate)
    if tag == "prop":
        getter, kind = resolver(node[1])
        if kind not in ("bool", "any"):
            raise ODataError(f"The $filter expression must evaluate to a boolean; '{node[1]}' does not.")
        wanted = not negate
        return lambda row: getter(row) is wanted
    if tag == "lit" and node[2] == "Boolean":
        constant = bool(node[1]) != negate
        return lambda row: constant
    raise ODataError("The $filter expression must evaluate to a boolean value.")


def _compile_comparison(op: str, left: Node, right: Node, resolver: Resolver) -> Predicate:
    if left[0] == "lit" and right[0] == "prop":
        left, right, op = right, left, _SWAPPED[op]
    if left[0] == "prop" and right[0] == "prop":
        g1, k1 = resolver(left[1])
        g2, k2 = resolver(right[1])
        n1, n2 = _normalizer(k1), _normalizer(k2)
        fn = _OPS[op]

        def both(row: Row) -> bool:
            v1, v2 = g1(row), g2(row)
            if v1 is None or v2 is None:
                return (v1 is None and v2 is None) if op == "eq" else False
            if n1:
                v1 = n1(v1)
            if n2:
                v2 = n2(v2)
            return bool(fn(v1, v2))

        return both
    if left[0] != "prop" or right[0] != "lit":
        if left[0] == "lit" and right[0] == "lit":
            result = bool(_OPS[op](left[1], right[1]))
            return lambda row: result
        raise ODataError("Comparisons must be between a property and a literal value.")
    getter, kind = resolver(left[1])
    literal = _coerce_literal(right[1], right[2], kind, op)
    norm = _normalizer(kind)
    if literal is None:
        if op == "eq":
            return lambda row: getter(row) is None
        if op == "ne":
            return lambda row: getter(row) is not None
        return lambda row: False
    fn = _OPS[op]
    lookup: Lookup | None = None
    if op == "eq" and "/" not in left[1]:
        lookup = (left[1], frozenset((normalise_for_lookup(literal),)))
    if norm is None:

        def typed(row: Row) -> bool:
            v = getter(row)
            return v is not None and fn(v, literal)

        return _with_lookup(typed, lookup)

    def normalised(row: Row) -> bool:
        v = getter(row)
        if v is None:
            return False
        v = norm(v)
        try:
            return bool(fn(v, literal))
        except TypeError:
            return False

    return _with_lookup(normalised, lookup)


_STRING_FUNCS: dict[str, Callable[[str, str], bool]] = {
    "contains": lambda v, s: s in v,
    "startswith": lambda v, s: v.startswith(s),
    "endswith": lambda v, s: v.endswith(s),
}


def _compile_call(
    name: str, positional: list[Node], named: dict[str, Node], resolver: Resolver, negate: bool = False
) -> Predicate:
    short = name.rsplit(".", 1)[-1] if name.startswith("Microsoft.Dynamics.CRM.") else name
    if name in _STRING_FUNCS:
        if len(positional) != 2 or positional[0][0] != "prop" or positional[1][0] != "lit":
            raise ODataError(f"The function '{name}' takes a property and a string literal.")
        getter, kind = resolver(positional[0][1])
        if kind not in ("string", "any") or positional[1][2] != "String":
            raise ODataError(f"No function signature for the function with name '{name}' matches the arguments.")
        needle = str(positional[1][1]).lower()
        test = _STRING_FUNCS[name]

        def string_fn(row: Row) -> bool:
            v = getter(row)
            return isinstance(v, str) and test(v.lower(), needle) != negate

        return string_fn
    if name.startswith("Microsoft.Dynamics.CRM.") and short in ("In", "NotIn", "Between", "NotBetween"):
        prop_node = named.get("PropertyName")
        values_node = named.get("PropertyValues")
        if prop_node is None or values_node is None or prop_node[0] != "lit" or values_node[0] != "lit":
            raise ODataError(f"The function '{name}' requires PropertyName='...' and PropertyValues=[...].")
        values = values_node[1]
        if not isinstance(values, list):
            raise ODataError(f"PropertyValues of '{name}' must be a JSON array of strings.")
        getter, kind = resolver(str(prop_node[1]))
        converted = [_coerce_list_value(v, kind) for v in values]
        if short in ("In", "NotIn"):
            members = frozenset(converted)
            negate = negate != (short == "NotIn")
            norm = _normalizer(kind) or (lambda v: v)

            def in_fn(row: Row) -> bool:
                v = getter(row)
                if v is None:
                    return False
                return (norm(v) in members) != negate

            prop = str(prop_node[1])
            wanted = frozenset(normalise_for_lookup(m) for m in members if m is not None)
            return _with_lookup(in_fn, None if negate or "/" in prop else (prop, wanted))
        if len(converted) != 2:
            raise ODataError(f"PropertyValues of '{name}' must hold exactly two values.")
        low, high = converted
        negate = negate != (short == "NotBetween")
        norm2 = _normalizer(kind) or (lambda v: v)

        def between_fn(row: Row) -> bool:
            v = getter(row)
            if v is None:
                return False
            v = norm2(v)
            return (low <= v <= high) != negate

        return between_fn
    raise ODataError(f"An unknown function with name '{name}' was found.", code="0x8006088a")


def build_filter(text: str, resolver: Resolver, aliases: dict[str, str] | None = None) -> Predicate:
    """Parse and compile in one step."""
    return compile_filter(parse_filter(text, aliases), resolver)


# ---------------------------------------------------------------------------------------------------------------
# $orderby, $select
# ---------------------------------------------------------------------------------------------------------------


class Reverse:
    """Wraps a sort key so that descending columns sort inside one ascending tuple comparison."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: Reverse) -> bool:
        return bool(other.value < self.value)

    def __gt__(self, other: Reverse) -> bool:
        return bool(other.value > self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reverse) and self.value == other.value

    def __le__(self, other: Reverse) -> bool:
        return bool(other.value <= self.value)

    def __ge__(self, other: Reverse) -> bool:
        return bool(other.value >= self.value)

    def __hash__(self) -> int:
        return hash(self.value)


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """``"modifiedon desc,contactid"`` -> ``[("modifiedon", True), ("contactid", False)]`` (name, descending)."""
    out: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words:
            raise ODataError(f"Syntax error in $orderby '{text}'.")
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise ODataError(f"Syntax error in $orderby '{text}'.")
        out.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return out


def sort_key_function(columns: list[tuple[Getter, str, bool]]) -> Callable[[Row], tuple[Any, ...]]:
    """A key function for ``sorted`` over (getter, kind, descending) columns; nulls sort first ascending."""

    def component(getter: Getter, kind: str, desc: bool) -> Callable[[Row], Any]:
        norm = _normalizer(kind)

        def key(row: Row) -> Any:
            v = getter(row)
            if v is None:
                k: tuple[Any, ...] = (0, 0)
            else:
                if norm is not None:
                    v = norm(v)
                k = (1, v)
            return Reverse(k) if desc else k

        return key

    parts = [component(g, k, d) for g, k, d in columns]
    if len(parts) == 1:
        only = parts[0]
        return lambda row: (only(row),)
    return lambda row: tuple(p(row) for p in parts)


def key_to_json(key: tuple[Any, ...]) -> list[Any]:
    """Sort key to JSON (for a paging cookie)."""
    out: list[Any] = []
    for part in key:
        if isinstance(part, Reverse):
            out.append({"r": list(part.value)})
        else:
            out.append(list(part))
    return out


def key_from_json(data: list[Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for part in data:
        if isinstance(part, dict):
            out.append(Reverse(tuple(part["r"])))
        else:
            out.append(tuple(part))
    return tuple(out)


def parse_select(text: str) -> list[str]:
    """``$select`` to a list of names (duplicates dropped, order kept)."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            raise ODataError(f"Syntax error in $select '{text}'.")
        if name not in names:
            names.append(name)
    return names


def parse_expand(text: str) -> dict[str, dict[str, str]]:
    """``Attributes($select=a,b;$filter=...),Keys`` -> ``{"Attributes": {"$select": "a,b", ...}, "Keys": {}}``."""
    out: dict[str, dict[str, str]] = {}
    depth = 0
    start = 0
    items: list[str] = []
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "(" in item and item.endswith(")"):
            name, inner = item.split("(", 1)
            options: dict[str, str] = {}
            for opt in _split_top_level(inner[:-1], ";"):
                if "=" in opt:
                    k, v = opt.split("=", 1)
                    options[k.strip()] = v.strip()
            out[name.strip()] = options
        else:
            out[item] = {}
    return out


def _split_top_level(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Key segments: contacts(<guid>), contacts(new_externalid='X'), contacts(a='1',b=2)
# ---------------------------------------------------------------------------------------------------------------


def parse_key_segment(inner: str) -> str | dict[str, Any]:
    """The text between the parentheses of an entity key: a GUID string, or a dict of alternate key values."""
    text = inner.strip()
    if _GUID_RE.fullmatch(text):
        return text.lower()
    tokens = _tokenize(text)
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        if (
            i + 2 >= len(tokens)
            or tokens[i].kind != "ident"
            or tokens[i + 1].value != "="
            or tokens[i + 2].kind != "lit"
        ):
            raise ODataError(f"Bad Request - Error in query syntax: invalid key '{inner}'.", code="0x80060888")
        values[tokens[i].value.lower()] = tokens[i + 2].value
        i += 3
        if i < len(tokens):
            if tokens[i].value != ",":
                raise ODataError(f"Bad Request - Error in query syntax: invalid key '{inner}'.")
            i += 1
    if not values:
        raise ODataError(f"Bad Request - Error in query syntax: invalid key '{inner}'.")
    return values


def format_key_segment(values: dict[str, Any]) -> str:
    """Inverse of :func:`parse_key_segment` for alternate keys (used in OData-EntityId headers)."""
    parts = []
    for name, value in values.items():
        if isinstance(value, str):
            parts.append(f"{name}='{value.replace(chr(39), chr(39) * 2)}'")
        elif isinstance(value, bool):
            parts.append(f"{name}={'true' if value else 'false'}")
        else:
            parts.append(f"{name}={value}")
    return ",".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Paging cookies ($skiptoken) and delta tokens
# ---------------------------------------------------------------------------------------------------------------

_PAGINGCOOKIE_RE = re.compile(r'pagingcookie="([^"]*)"')
_PAGENUMBER_RE = re.compile(r'pagenumber="(\d+)"')
_EMK_RE = re.compile(r'emk="([^"]*)"')


def make_skiptoken(page_number: int, state: dict[str, Any], first_id: str, last_id: str) -> str:
    """A Dataverse-shaped ``<cookie pagenumber=.. pagingcookie=.. />`` carrying the keyset position in ``emk``.

    Like Dataverse's own cookie it encodes where the previous page ended (not an offset), so rows written between
    page requests do not shift later pages.
    """
    emk = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
    inner = (
        f'<cookie page="{page_number - 1}" emk="{emk}"><contactid last="{{{last_id.upper()}}}" '
        f'first="{{{first_id.upper()}}}" /></cookie>'
    )
    paging_cookie = quote(inner, safe="")
    return f'<cookie pagenumber="{page_number}" pagingcookie="{paging_cookie}" istracking="False" />'


def read_skiptoken(token: str) -> tuple[int, dict[str, Any]]:
    """Inverse of :func:`make_skiptoken`; raises :class:`ODataError` for anything we did not issue."""
    m = _PAGINGCOOKIE_RE.search(token)
    n = _PAGENUMBER_RE.search(token)
    if not m or not n:
        raise ODataError("The $skiptoken value is not valid.", code="0x80040203")
    inner = unquote(m.group(1))
    e = _EMK_RE.search(inner)
    if not e:
        raise ODataError("The $skiptoken value is not valid.", code="0x80040203")
    raw = e.group(1)
    try:
        state = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError) as exc:
        raise ODataError("The $skiptoken value is not valid.", code="0x80040203") from exc
    return int(n.group(1)), state


def make_deltatoken(version: int, at_us: int) -> str:
    """``<version>!<MM/DD/YYYY HH:MM:SS>`` as Dataverse shapes delta tokens."""
    t = time.gmtime(at_us // 1_000_000)
    return f"{version}!{t.tm_mon:02d}/{t.tm_mday:02d}/{t.tm_year:04d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def read_deltatoken(token: str) -> tuple[int, int]:
    """Inverse of :func:`make_deltatoken`: (version, issued-at microseconds)."""
    try:
        version_text, stamp = token.split("!", 1)
        issued = dt.datetime.strptime(stamp, "%m/%d/%Y %H:%M:%S").replace(tzinfo=dt.timezone.utc)
        return int(version_text), (issued - EPOCH) // _US
    except ValueError as exc:
        raise ODataError("The $deltatoken value is not valid.", code="0x80040203") from exc
