"""Modbus RTU framing, sans-IO: the CRC, the character and frame timing of a serial line, and why an answer that
arrived was not accepted. Shared by the serial links (drivers/modbus_rtu.py) and the rig's RTU line simulator."""
from __future__ import annotations

BITS_PER_CHAR = 11          # start + 8 data + parity (or 2nd stop) + stop: the Modbus RTU character


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF) of `data`; sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """`frame` followed by its CRC (low byte first), ready for the wire."""
    return frame + crc16(frame).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def char_time_s(baudrate: int, bits_per_char: int = BITS_PER_CHAR) -> float:
    return bits_per_char / baudrate


def frame_gap_s(baudrate: int) -> float:
    """The RTU inter-frame silence: 3.5 character times, fixed at 1.75 ms above 19200 baud (Modbus over serial
    line v1.02, 2.5.1.1)."""
    return 3.5 * char_time_s(baudrate) if baudrate <= 19200 else 0.00175


def read_wire_time_s(count: int, baudrate: int, bits_per_char: int = BITS_PER_CHAR) -> float:
    """Time on the wire for one read of `count` registers: request (8 bytes) + answer (5 + 2*count bytes), plus the
    two 3.5-character gaps that frame them."""
    chars = 8 + 5 + 2 * count
    return chars * char_time_s(baudrate, bits_per_char) + 2 * frame_gap_s(baudrate)


def classify_rtu_answer(raw: bytes, unit_id: int) -> str | None:
    """Why bytes that arrived for a request to `unit_id` were not accepted; None if nothing arrived.

    Used after a timeout: pymodbus discards frames with a bad CRC or from another unit without telling us."""
    if not raw:
        return None
    if len(raw) < 4:
        return f"{len(raw)} stray byte(s) ({raw[:8].hex()}), no complete frame"
    if crc_ok(raw):
        if raw[0] != unit_id:
            return f"answer from unit {raw[0]} instead of {unit_id}"
        return f"unexpected frame ({raw[:16].hex()})"
    # A good frame preceded or followed by line noise: try every suffix and prefix (linear in the length).
    raw = raw[:300]
    for frame in [raw[i:] for i in range(1, len(raw) - 3)] + [raw[:j] for j in range(len(raw) - 1, 3, -1)]:
        if crc_ok(frame):
            noise = len(raw) - len(frame)
            if frame[0] != unit_id:
                return f"answer from unit {frame[0]} instead of {unit_id} (and {noise} noise byte(s))"
            return f"answer mixed with {noise} noise byte(s)"
    return f"CRC error in {len(raw)}-byte answer ({raw[:16].hex()})"
