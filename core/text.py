"""Strings from outside (the broker, a device, a file) made safe to log.

Why: a log line is read by people and parsed by tools. A newline in a cmd_id forges a second line, a NUL or
an ANSI escape garbles the journal and the terminal, a bidi override (U+202E) shows text reversed. escape()
writes every such character as a Python-style escape and caps the length, so one record stays one short line.
"""
from __future__ import annotations

MAX_LOGGED_CHARS = 200

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """Printable, one line, at most about `limit` characters: control and format characters (bidi overrides,
    zero-width), separators, surrogates and unassigned code points as \\n, \\xNN, \\uNNNN or \\UNNNNNNNN, and a
    backslash doubled, so the escaped text maps back to one original. Bytes are decoded as UTF-8, invalid bytes
    shown as \\xNN; anything else goes through str()."""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:limit * 4]).decode("utf-8", "surrogateescape")
        cut = len(value) > limit * 4
    else:
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception:  # an exception with a broken __str__ must not break the log call that reports it
            text = f"<{type(value).__name__}>"
        cut = False
    if len(text) > limit:
        text, cut = text[:limit], True
    if text.isprintable() and "\\" not in text:
        return text + "..." if cut else text
    out = "".join(c if c.isprintable() and c != "\\" else _escape_char(c) for c in text)
    return out + "..." if cut else out


def _escape_char(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
