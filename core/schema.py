"""A small declarative validator for configs and payloads.

Why not a third-party library: we want every error at once (not the first), each tied to a key path,
with messages an operator can act on (`devices[2].poll_ms: must be > 0, got -5`), strict types
(a bool is never an int, 5.0 is never an int) and no dependency. The same engine checks the gateway
config, register maps and MQTT command payloads.

Usage::

    schema = Dict({"id": Required(Str(regex=r"[a-z]+")), "n": Optional(Int(gt=0), default=1)})
    clean, issues = validate(schema, {"id": "x"})          # clean == {"id": "x", "n": 1}, issues == []
    for line in format_issues(issues, "file.toml"): ...

Custom checks are callables that return the cleaned value or raise `Invalid` (or ValueError).
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INVALID", "MISSING", "Invalid", "Issue", "Schema", "Key", "Required", "Optional", "Dict", "List", "Map",
    "Str", "Int", "Float", "Bool", "Custom", "All", "validate", "describe", "format_path",
    "format_issue", "format_issues", "walk", "suggest",
]

PathT = tuple["str | int", ...]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Sentinel("INVALID")
"""Stands for a value that failed validation (in partial results: list items keep their index)."""
MISSING: Any = _Sentinel("MISSING")
"""No default: an optional key without a default is simply absent from the clean dict."""


class Invalid(Exception):
    """Raised by custom checks. `path` is relative to the value being checked."""

    def __init__(self, message: str, path: PathT = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = tuple(path)


@dataclass(frozen=True)
class Issue:
    """One validation error: where (key path) and what."""

    path: PathT
    message: str

    @property
    def where(self) -> str:
        return format_path(self.path)

    def render(self, source: str | None = None) -> str:
        return format_issue(self, source)

    def __str__(self) -> str:
        return format_issue(self)


# ---------------------------------------------------------------- rendering

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: Iterable[str | int]) -> str:
    """("devices", 2, "poll_ms") -> "devices[2].poll_ms"; odd keys are quoted TOML-style."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
            continue
        text = part if isinstance(part, str) else _safe_repr(part)
        if not _BARE_KEY.fullmatch(text):
            text = _quote(text)
        out.append(("." if out else "") + text)
    return "".join(out)


def _quote(text: str) -> str:
    body = "".join(
        ch if ch.isprintable() and ch not in '"\\' else (f"\\{ch}" if ch in '"\\' else f"\\u{ord(ch):04x}")
        for ch in text
    )
    return f'"{body}"'


def format_issue(issue: Issue, source: str | None = None) -> str:
    """`source: path: message`; either prefix is left out when empty."""
    parts = [p for p in (source, format_path(issue.path)) if p]
    parts.append(issue.message)
    return ": ".join(parts)


def format_issues(issues: Iterable[Issue], source: str | None = None) -> list[str]:
    return [format_issue(i, source) for i in issues]


def _short(text: str, limit: int = 60) -> str:
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def describe(value: Any) -> str:
    """A type name plus the value, for `got ...` in messages (TOML vocabulary: table, array)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {_num(value)}"
    if isinstance(value, float):
        return f"float {_num(value)}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, _dt.datetime):
        return f"datetime {value.isoformat()}"
    if isinstance(value, _dt.date):
        return f"date {value.isoformat()}"
    if isinstance(value, _dt.time):
        return f"time {value.isoformat()}"
    return type(value).__name__


def _num(value: int | float) -> str:
    if isinstance(value, int) and value.bit_length() > 128:  # repr of huge ints is slow or refused
        return f"{'-' if value < 0 else ''}<{value.bit_length()}-bit number>"
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + "..." + text[-8:]


def _safe_repr(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _num(value)
    try:
        text = repr(value)
    except Exception:  # a foreign object's __repr__ must not break error reporting
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:56] + "..."


def suggest(word: str, options: Iterable[str]) -> str | None:
    """The closest option to a misspelt word (difflib), or None."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


# ---------------------------------------------------------------- schemas

class Schema:
    """Base: `_run` returns the clean value (or INVALID) and appends issues; it never raises."""

    def validate(self, value: Any) -> tuple[Any, list[Issue]]:
        return validate(self, value)

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _fail(self, path: PathT, issues: list[Issue], message: str) -> Any:
        issues.append(Issue(path, message))
        return INVALID


@dataclass(frozen=True)
class Key:
    """A dict entry: its schema, whether it is required, its default and a one-line doc."""

    schema: Schema
    required: bool = False
    default: Any = MISSING
    doc: str = ""


def Required(schema: Schema, doc: str = "") -> Key:  # noqa: N802 (reads like a type)
    return Key(schema, True, MISSING, doc)


def Optional(schema: Schema, default: Any = MISSING, doc: str = "") -> Key:  # noqa: N802
    """Optional key; a default (if given) is validated by `schema` too, so converters apply to it."""
    return Key(schema, False, default, doc)


class Dict(Schema):
    """A mapping with known keys. Unknown keys are errors (with a did-you-mean hint)."""

    def __init__(self, fields: Mapping[str, Key], *, allow_unknown: bool = False, doc: str = "") -> None:
        self.fields = dict(fields)
        self.allow_unknown = allow_unknown
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if not isinstance(value, Mapping):
            return self._fail(path, issues, f"must be a table, got {describe(value)}")
        checked: dict[str, Any] = {}
        extra: dict[Any, Any] = {}
        for key, item in value.items():
            field = self.fields.get(key) if isinstance(key, str) else None
            if field is None:
                if self.allow_unknown:
                    extra[key] = item
                    continue
                name = key if isinstance(key, str) else _safe_repr(key)
                guess = suggest(key, self.fields) if isinstance(key, str) else None
                if guess is not None:
                    msg = f"unknown key (did you mean {guess!r}?)"
                elif self.fields:
                    msg = f"unknown key (expected one of: {', '.join(self.fields)})"
                else:
                    msg = "unknown key (no keys are allowed here)"
                issues.append(Issue(path + (name,), msg))
                continue
            result = field.schema._run(item, path + (key,), issues)
            if result is not INVALID:
                checked[key] = result
        clean: dict[str, Any] = {}
        for key, field in self.fields.items():
            if key in checked:
                clean[key] = checked[key]
            elif key in value:
                continue  # present but invalid: already reported
            elif field.required:
                issues.append(Issue(path + (key,), "required key missing"))
            elif field.default is not MISSING:
                result = field.schema._run(field.default, path + (key,), issues)
                if result is not INVALID:
                    clean[key] = result
        clean.update(extra)
        return clean


class List(Schema):
    """A list of items. `unique` compares the items; `unique_key` compares one key of dict items."""

    def __init__(self, item: Schema, *, min_len: int = 0, max_len: int | None = None,
                 unique: bool = False, unique_key: str | None = None, doc: str = "") -> None:
        self.item = item
        self.min_len = min_len
        self.max_len = max_len
        self.unique = unique
        self.unique_key = unique_key
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if not isinstance(value, (list, tuple)):
            return self._fail(path, issues, f"must be an array, got {describe(value)}")
        n = len(value)
        if n < self.min_len:
            issues.append(Issue(path, f"must have at least {self.min_len} item{_s(self.min_len)}, got {n}"))
        if self.max_len is not None and n > self.max_len:
            issues.append(Issue(path, f"must have at most {self.max_len} item{_s(self.max_len)}, got {n}"))
        clean = [self.item._run(item, path + (i,), issues) for i, item in enumerate(value)]
        if self.unique:
            self._check_unique([(i, (), v) for i, v in enumerate(clean) if v is not INVALID], path, issues)
        if self.unique_key is not None:
            k = self.unique_key
            self._check_unique(
                [(i, (k,), v[k]) for i, v in enumerate(clean) if isinstance(v, Mapping) and k in v], path, issues
            )
        return clean

    @staticmethod
    def _check_unique(entries: list[tuple[int, PathT, Any]], path: PathT, issues: list[Issue]) -> None:
        seen: list[tuple[Any, int]] = []
        index: dict[Any, int] = {}
        for i, sub, v in entries:
            tag = (type(v), v)  # 1, 1.0 and True are not duplicates of each other
            try:
                first = index.get(tag)
                if first is None:
                    index[tag] = i
            except TypeError:  # unhashable: linear search
                first = next((j for w, j in seen if type(w) is type(v) and w == v), None)
                if first is None:
                    seen.append((v, i))
            if first is not None:
                where = format_path(path + (first,) + sub)
                shown = _short(v) if isinstance(v, str) else describe(v)
                issues.append(Issue(path + (i,) + sub, f"duplicate {shown}, already used by {where}"))


class Map(Schema):
    """A table whose keys are data, not names (e.g. point name -> OPC UA node id): every key is checked by `key`
    (a Str), every value by `value`; each problem is reported at its own key."""

    def __init__(self, key: Schema, value: Schema, *, min_len: int = 0, max_len: int | None = None,
                 doc: str = "") -> None:
        self.key = key
        self.value = value
        self.min_len = min_len
        self.max_len = max_len
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if not isinstance(value, Mapping):
            return self._fail(path, issues, f"must be a table, got {describe(value)}")
        n = len(value)
        if n < self.min_len:
            issues.append(Issue(path, f"must have at least {self.min_len} entr{'y' if self.min_len == 1 else 'ies'}, "
                                      f"got {n}"))
        if self.max_len is not None and n > self.max_len:
            issues.append(Issue(path, f"must have at most {self.max_len} entries, got {n}"))
        clean: dict[Any, Any] = {}
        for k, v in value.items():
            name = k if isinstance(k, str) else _safe_repr(k)
            key_issues: list[Issue] = []
            self.key._run(k, path + (name,), key_issues)
            if key_issues:
                issues.extend(Issue(i.path, f"key {i.message}") for i in key_issues)
                continue
            result = self.value._run(v, path + (name,), issues)
            if result is not INVALID:
                clean[k] = result
        return clean


def _s(n: int) -> str:
    return "" if n == 1 else "s"


class Str(Schema):
    """A string; `regex` must match the whole string. `regex_hint` completes "must ..." in words
    (e.g. "be 1-32 characters of A-Z a-z 0-9 _ -"), since a raw regex is no help to an operator."""

    def __init__(self, *, regex: str | None = None, regex_hint: str | None = None, min_len: int = 0,
                 max_len: int | None = None, choices: Iterable[str] | None = None, doc: str = "") -> None:
        self.regex = re.compile(regex) if regex is not None else None
        self.regex_hint = regex_hint
        self.min_len = min_len
        self.max_len = max_len
        self.choices = tuple(choices) if choices is not None else None
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if not isinstance(value, str):
            return self._fail(path, issues, f"must be a string, got {describe(value)}")
        if self.choices is not None and value not in self.choices:
            msg = f"must be one of: {', '.join(self.choices)}; got {_short(value)}"
            guess = suggest(value, self.choices)
            if guess is not None:
                msg += f" (did you mean {guess!r}?)"
            return self._fail(path, issues, msg)
        n = len(value)
        if n < self.min_len:
            what = "must not be empty" if self.min_len == 1 else f"must be at least {self.min_len} characters long"
            return self._fail(path, issues, f"{what}, got {_short(value)}")
        if self.max_len is not None and n > self.max_len:
            return self._fail(path, issues, f"must be at most {self.max_len} characters long, got {n}")
        if self.regex is not None and not self.regex.fullmatch(value):
            rule = self.regex_hint or f"match {self.regex.pattern}"
            return self._fail(path, issues, f"must {rule}, got {_short(value)}")
        return value


class _Number(Schema):
    kind = ""

    def __init__(self, *, ge: float | None = None, le: float | None = None, gt: float | None = None,
                 lt: float | None = None, doc: str = "") -> None:
        self.ge, self.le, self.gt, self.lt = ge, le, gt, lt
        self.doc = doc

    def _bounds(self, value: int | float, path: PathT, issues: list[Issue]) -> Any:
        for op, bound, ok in (
            (">=", self.ge, lambda v, b: v >= b), ("<=", self.le, lambda v, b: v <= b),
            (">", self.gt, lambda v, b: v > b), ("<", self.lt, lambda v, b: v < b),
        ):
            if bound is not None and not ok(value, bound):
                return self._fail(path, issues, f"must be {op} {_num(bound)}, got {_num(value)}")
        return value

    def range_text(self) -> str:
        """Human text of the range, e.g. "5..3600" or "> 0" (for docs)."""
        lo = f"{_num(self.ge)}" if self.ge is not None else None
        hi = f"{_num(self.le)}" if self.le is not None else None
        if lo and hi:
            return f"{lo}..{hi}"
        parts = [f">= {lo}" if lo else "", f"<= {hi}" if hi else "",
                 f"> {_num(self.gt)}" if self.gt is not None else "", f"< {_num(self.lt)}" if self.lt is not None else ""]
        return ", ".join(p for p in parts if p)


class Int(_Number):
    """An integer. bool is not an int here, nor is 5.0."""

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return self._fail(path, issues, f"must be an integer, got {describe(value)}")
        return self._bounds(int(value), path, issues)


class Float(_Number):
    """A finite number (ints are accepted and converted); NaN and infinities only with allow_nan."""

    def __init__(self, *, allow_nan: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.allow_nan = allow_nan

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._fail(path, issues, f"must be a number, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            return self._fail(path, issues, f"must be a number in float range, got {describe(value)}")
        if not self.allow_nan and not math.isfinite(number):
            return self._fail(path, issues, f"must be a finite number, got {_num(number)}")
        return self._bounds(number, path, issues)


class Bool(Schema):
    """true or false; 0/1 and "yes" are not booleans."""

    def __init__(self, *, doc: str = "") -> None:
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        if not isinstance(value, bool):
            return self._fail(path, issues, f"must be true or false, got {describe(value)}")
        return value


class Custom(Schema):
    """A callable check/converter: returns the clean value or raises Invalid / ValueError."""

    def __init__(self, fn: Callable[[Any], Any], *, doc: str = "") -> None:
        self.fn = fn
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        try:
            return self.fn(value)
        except Invalid as e:
            return self._fail(path + e.path, issues, e.message)
        except (ValueError, TypeError) as e:
            return self._fail(path, issues, str(e) or type(e).__name__)


class All(Schema):
    """Apply schemas in turn, each to the previous one's clean value; stop at the first that fails."""

    def __init__(self, *schemas: Schema, doc: str = "") -> None:
        if not schemas:
            raise ValueError("All() needs at least one schema")
        self.schemas = schemas
        self.doc = doc

    def _run(self, value: Any, path: PathT, issues: list[Issue]) -> Any:
        for schema in self.schemas:
            before = len(issues)
            value = schema._run(value, path, issues)
            if value is INVALID or len(issues) > before:
                return INVALID if value is INVALID else value
        return value


# ---------------------------------------------------------------- entry points

def validate(schema: Schema, value: Any, *, partial: bool = False) -> tuple[Any, list[Issue]]:
    """Check `value`; return (clean value with defaults filled, all issues).

    When there are issues, clean is None, unless partial=True: then it is the best effort result
    (dict keys that failed are absent, list items that failed are INVALID) for cross-field checks.
    """
    issues: list[Issue] = []
    clean = schema._run(value, (), issues)
    if issues and not partial:
        return None, issues
    return clean, issues


def walk(schema: Schema, path: PathT = ()) -> Iterator[tuple[PathT, Key]]:
    """Yield (path, Key) for every dict key in a schema tree; list items show as "[]" in the path."""
    if isinstance(schema, All):
        for sub in schema.schemas:
            yield from walk(sub, path)
    elif isinstance(schema, Dict):
        for name, key in schema.fields.items():
            yield path + (name,), key
            yield from walk(key.schema, path + (name,))
    elif isinstance(schema, List):
        yield from walk(schema.item, path + ("[]",))
