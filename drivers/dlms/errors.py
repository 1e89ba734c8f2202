"""The errors of the DLMS codecs: every decoder raises only these (all ValueError) on hostile bytes."""
from __future__ import annotations

__all__ = ["DlmsError", "FrameError", "DecodeError", "SecurityError"]


class DlmsError(ValueError):
    """Bytes that are not a valid DLMS message, or a message that cannot be used."""


class FrameError(DlmsError):
    """A transport frame (HDLC, wrapper, M-Bus) is malformed: bad flag, length, address or check sequence."""


class DecodeError(DlmsError):
    """An APDU or A-XDR value is malformed: unknown tag, truncated, length beyond the buffer, bad value."""


class SecurityError(DlmsError):
    """A ciphered APDU failed its check (tag, key, security control) or repeats an invocation counter."""
