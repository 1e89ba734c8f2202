"""Compressed payloads: what a message is compressed with travels with it, and nothing expands without a bound.

A payload is JSON (content type `application/json`) or a zlib stream (RFC 1950, content type `application/zlib`)
of that JSON, compressed with the preset dictionary DICTIONARY below. The zlib header is the announcement where
MQTT 5's content type is not there (MQTT 3.1.1): its first byte is 0x78 (deflate, 32 KiB window), which no JSON
document and no JWS can begin with, and its DICTID (the Adler-32 of the dictionary) names the dictionary. So
`open_payload` reads any message without being told, and refuses a content type that contradicts the bytes.

Why deflate with a preset dictionary (docs/PERFORMANCE.md, "Data thrift"): a telemetry message is a few hundred
bytes to a few KiB, where deflate alone spends much of its output on learning the envelope's words; a
dictionary of those words makes them back-references from the first byte. zlib is in the standard library of
every language a head-end is written in, and its dictionary support is part of the format, so nothing is added
to the gateway and a head-end needs nothing but this documented dictionary.

Why a bound: 1 KiB of deflate can expand to 1 MiB. Whoever inflates a payload from outside (the head-end's
decoder, the gateway's command path) passes the most it accepts, and a payload that would expand past it is
refused before it is held in memory.
"""
from __future__ import annotations

import zlib

JSON = "application/json"
ZLIB = "application/zlib"
CODECS = {"none": JSON, "deflate": ZLIB}
"""The configuration's names (telemetry.compression) -> the MQTT 5 content type the messages carry."""

#: The preset dictionary (exactly these ASCII bytes; docs/mqtt-api.md repeats them): the words of telemetry
#: messages, the most frequent last (deflate reaches the end of the dictionary with the shortest distances).
DICTIONARY = (
    b'"q":[["invalid","timeout"],["invalid","comm_failure"],["invalid","not_implemented"],'
    b'["questionable","out_of_range"],["invalid","malformed"],["invalid","device_exception"],'
    b'"n":["W","VAr","VA","PF","Hz","A","PhVphA","PhVphB","PhVphC","TotWhExp","TotWhImp","WMax","WMaxLimPct",'
    b'"WMaxLimPctEna","SoC","SoH","St"],"u":["W","var","VA","","Hz","A","V","V","V","Wh","Wh","W","%","%","%"],'
    b'{"schema":"gridedge.telemetry/2","gateway":"","stream":"telemetry","seq":,"msg_id":"","ts":"20'
    b'","blocks":[{"dev":"","n":["W"],"u":["W"],"t":17,"v":[null,0.0,'
    b'{"schema":"gridedge.telemetry/3","gateway":"","stream":"telemetry","seq":,"msg_id":"","ts":"20'
    b'","blocks":[{"l":"","t":17,"i":[0,1,2,3],"v":[0.0,'
)
DICTIONARY_ID = zlib.adler32(DICTIONARY)
LEVEL = 6  # zlib's default: level 9 saves nothing measurable on these messages (docs/PERFORMANCE.md, codecs)


class PayloadError(ValueError):
    """A payload that cannot be read: unknown or contradicting encoding, corrupt, or larger than allowed."""


def compress(data: bytes) -> bytes:
    """`data` as a zlib stream with the preset dictionary (content type application/zlib)."""
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return c.compress(data) + c.flush()


def encoding_of(payload: bytes) -> str:
    """The content type the bytes themselves announce: application/zlib for a zlib header, else JSON."""
    if len(payload) >= 2 and payload[0] == 0x78 and (payload[0] << 8 | payload[1]) % 31 == 0:
        return ZLIB
    return JSON


def open_payload(payload: bytes, content_type: str | None = None, *, limit: int) -> bytes:
    """The JSON bytes of a message, at most `limit` of them. `content_type` is the MQTT 5 property if there was
    one (None: MQTT 3.1.1, read from the bytes). Raises PayloadError, never anything else."""
    found = encoding_of(payload)
    if content_type is not None:
        ct = content_type.split(";", 1)[0].strip().lower()
        if ct not in (JSON, ZLIB):
            raise PayloadError(f"unknown content type {content_type[:60]!r}: {JSON} or {ZLIB}")
        if ct != found:
            raise PayloadError(f"content type {ct} but the payload is {found}")
    if found == JSON:
        if len(payload) > limit:
            raise PayloadError(f"payload of {len(payload)} bytes is larger than {limit}")
        return payload
    return inflate(payload, limit)


def inflate(payload: bytes, limit: int) -> bytes:
    """A zlib stream, expanded to at most `limit` bytes (a zip bomb stops there, holding no more)."""
    if payload[1] & 0x20:  # FDICT: a 4-byte DICTID follows the header
        if len(payload) < 6 or int.from_bytes(payload[2:6], "big") != DICTIONARY_ID:
            raise PayloadError("zlib stream with an unknown preset dictionary")
        d = zlib.decompressobj(15, zdict=DICTIONARY)
    else:
        d = zlib.decompressobj(15)
    try:
        out = d.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise PayloadError(f"corrupt zlib stream: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadError(f"payload expands past {limit} bytes: refused")
    if not d.eof:
        raise PayloadError("truncated zlib stream")
    if d.unused_data:
        raise PayloadError(f"{len(d.unused_data)} bytes after the end of the zlib stream")
    return out
