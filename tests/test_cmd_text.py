"""core.text.escape: whatever comes from outside, one printable line of bounded length (fuzzed)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.core.text import MAX_LOGGED_CHARS, escape


def test_control_bidi_and_line_breaking_characters_are_escaped():
    assert escape("a\nb\x00c\u202ed\\e") == "a\\nb\\x00c\\u202ed\\\\e"
    assert escape("\r\t\x1b[31m\u2028\u2029\u200b\ufeff") == "\\r\\t\\x1b[31m\\u2028\\u2029\\u200b\\ufeff"
    assert escape("\ud800") == "\\ud800"
    assert escape("\U000e0001") == "\\U000e0001"  # a tag character: format, invisible


def test_printable_text_passes_unchanged():
    assert escape("dso-2026-000042 Grüße Ω 日本") == "dso-2026-000042 Grüße Ω 日本"
    assert escape(None) == "None" and escape(42) == "42"


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


def test_an_object_that_cannot_be_shown_is_named_by_its_type():
    assert escape(Unprintable()) == "<Unprintable>"


def test_bytes_show_invalid_utf8_as_hex():
    assert escape(b"ok\xff\xfe\n") == "ok\\xff\\xfe\\n"
    assert escape("é".encode()) == "é"


def test_length_is_capped():
    assert escape("x" * 10_000) == "x" * MAX_LOGGED_CHARS + "..."
    assert escape(b"y" * 10_000, limit=5) == "yyyyy..."
    assert escape("ab", limit=5) == "ab"


@settings(max_examples=500, deadline=None)
@given(st.text() | st.binary() | st.text(st.characters(codec=None), min_size=150, max_size=400))
def test_fuzz_one_printable_bounded_line(value):
    out = escape(value)
    assert out.isprintable()  # no line break, control, format or separator character is left
    assert len(out) <= 10 * MAX_LOGGED_CHARS + 3
    if isinstance(value, str) and value.isprintable() and "\\" not in value and len(value) <= MAX_LOGGED_CHARS:
        assert out == value
