"""IEC 62056-21 (the optical port's start-up) as far as mode E needs it, sans-IO: the meter's identification
message, the baud rate characters, and 7E1 characters carried through a port set to 8N1 (the parity bit in bit 7:
the same ten bits on the wire), for ports that cannot be set to 7E1."""
from __future__ import annotations

__all__ = ["MODE_E_BAUDS", "parse_identification", "even_parity", "strip_parity"]

#: IEC 62056-21 baud rate characters of mode C/E
MODE_E_BAUDS = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}


def parse_identification(line: bytes) -> tuple[str, int, bool]:
    """(manufacturer + identification, offered baud rate, HDLC mode E offered) of "/XXXZ<ident>\\r\\n".
    Raises ValueError for anything else."""
    text = line.strip(b"\r\n")
    if len(text) < 5 or text[:1] != b"/" or not text[1:4].isalpha():
        raise ValueError(f"not an IEC 62056-21 identification: {text[:40]!r}")
    z = chr(text[4])
    if z not in MODE_E_BAUDS:
        raise ValueError(f"identification offers no known baud rate ({z!r})")
    ident = text[5:]
    mode_e = ident.startswith(b"\\2")
    return text[1:4].decode("ascii") + ident.decode("ascii", "replace"), MODE_E_BAUDS[z], mode_e


def even_parity(data: bytes) -> bytes:
    """7-bit characters with their even parity bit in bit 7: 7E1 sent through a port set to 8N1."""
    return bytes(b | ((bin(b & 0x7F).count("1") & 1) << 7) for b in data)


def strip_parity(data: bytes) -> bytes:
    """The 7-bit characters of 7E1 read through an 8N1 port. Raises ValueError on a parity error."""
    if any(bin(b).count("1") & 1 for b in data):
        raise ValueError("parity error in the IEC 62056-21 start-up")
    return bytes(b & 0x7F for b in data)
