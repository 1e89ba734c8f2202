"""Telemetry payloads (schema gridedge.telemetry/2): values travel in blocks, one per device read.

A block is one device at one instant: its point names and units once, then the values in the same order, and a
quality list only when some value is not good:

    {"dev": "m1", "t": 1795442401123456789, "n": ["W", "Hz"], "u": ["W", "Hz"], "v": [7998.0, 50.01]}
    {"dev": "m2", "t": 1795442401123456789, "n": ["W"], "u": ["W"], "v": [null], "q": [["invalid", "timeout"]]}

Why blocks: a per-sample object repeats the point id, the unit, the timestamp and the quality for every value,
which made JSON encoding, TLS, the outbox's disk writes and the head-end's parsing the bulk of the gateway's CPU.
A layout's constant part is encoded once and cached on the BlockLayout, so a poll costs one json encode of a list
of numbers. Blocks are encoded when they arrive (the agent keeps bytes, not objects, until the next telemetry
message) and the message body is spliced around them without re-encoding (see Encoded and Outbox.append).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .core.model import Detail, Sample, SampleBlock, Validity

SCHEMA_TELEMETRY = "gridedge.telemetry/2"
SCHEMA_TELEMETRY_LAYOUTS = "gridedge.telemetry/3"  # blocks name a layout (edge/layouts.py); the same envelope

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode
_VALIDITY = {v.value: v for v in Validity}
_DETAIL = {d.value: d for d in Detail}


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message body whose bulk is already JSON: `head` is encoded with the envelope, `raw` is spliced in after
    it verbatim. `raw` must be the text of one or more JSON object members, e.g. b'"blocks":[...]'."""

    head: dict
    raw: bytes
    values: int = 0  # how many values the body carries, for figures and bounds
    compress: Callable[[bytes], bytes] | None = None  # applied by the outbox to the whole message (compression.py)

    def __contains__(self, key: str) -> bool:
        return key in self.head

    def get(self, key: str, default=None):
        return self.head.get(key, default)


def _quality_json(quality) -> bytes:
    return _encode([None if q is None else [q[0].value, q[1].value] for q in quality]).encode()


def _sanitised(values: list, quality) -> tuple[list, list]:
    """Values JSON cannot carry (NaN, inf, odd types) become null with invalid/malformed, never a lost message."""
    vals, qual = [], list(quality) if quality is not None else [None] * len(values)
    for i, v in enumerate(values):
        if v is None or isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and (not isinstance(v, float) or math.isfinite(v))):
            vals.append(v)
        else:
            vals.append(None)
            qual[i] = (Validity.INVALID, Detail.MALFORMED)
    return vals, qual


def encode_values(values: list, quality) -> tuple[bytes, bytes]:
    """The JSON of a block's values, and the block's tail: q when some value is not good, then the closing brace."""
    try:
        v = _encode(values)
    except (ValueError, TypeError):
        values, quality = _sanitised(values, quality)
        v = _encode(values)
    if quality is not None and all(q is None for q in quality):
        quality = None
    return v.encode(), (b"}" if quality is None else b',"q":' + _quality_json(quality) + b"}")


def encode_block(block: SampleBlock) -> bytes:
    """One block as a JSON object (bytes)."""
    lay = block.layout
    head = lay.json_head
    if head is None:
        head = lay.json_head = (b'{"dev":' + _encode(lay.device).encode() + b',"n":' + _encode(lay.names).encode()
                                + b',"u":' + _encode(lay.units).encode() + b',"t":')
    try:
        values = _encode(block.values)
        quality = block.quality
    except (ValueError, TypeError):
        vals, quality = _sanitised(block.values, block.quality)
        values = _encode(vals)
    tail = b"}" if quality is None else b',"q":' + _quality_json(quality) + b"}"
    return head + str(block.ts_ns).encode() + b',"v":' + values.encode() + tail


def encode_samples(samples: Iterable[Sample]) -> list[bytes]:
    """Loose samples as blocks: consecutive samples of the same device and instant share one block."""
    out: list[bytes] = []
    group: list[Sample] = []
    key = None
    for s in samples:
        k = (s.point.split("/", 1)[0], s.ts_ns)
        if k != key and group:
            out.append(_encode_group(key, group))
            group = []
        key = k
        group.append(s)
    if group:
        out.append(_encode_group(key, group))
    return out


def _encode_group(key, group: list[Sample]) -> bytes:
    device, ts = key
    names = [s.point.split("/", 1)[1] if "/" in s.point else s.point for s in group]
    values = [s.value for s in group]
    quality = None
    if any(s.validity is not Validity.GOOD or s.detail is not Detail.NONE for s in group):
        quality = [None if s.validity is Validity.GOOD and s.detail is Detail.NONE else (s.validity, s.detail)
                   for s in group]
    try:
        v = _encode(values)
    except (ValueError, TypeError):
        values, quality = _sanitised(values, quality)
        v = _encode(values)
    tail = b"}" if quality is None else b',"q":' + _quality_json(quality) + b"}"
    return (b'{"dev":' + _encode(device).encode() + b',"n":' + _encode(names).encode() + b',"u":'
            + _encode([s.unit for s in group]).encode() + b',"t":' + str(ts).encode() + b',"v":' + v.encode() + tail)


def body(ts_iso: str, blocks: list[bytes], values: int = 0) -> Encoded:
    """The body of one telemetry message; the outbox adds gateway, stream, seq and msg_id."""
    return Encoded({"schema": SCHEMA_TELEMETRY, "ts": ts_iso}, b'"blocks":[' + b",".join(blocks) + b"]", values)


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_ENVELOPE = {"schema", "gateway", "stream", "seq", "msg_id", "ts", "blocks"}


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_envelope(doc) -> None:
    if not isinstance(doc, dict):
        raise ValueError("a telemetry message is a JSON object")
    if doc.get("schema") not in (SCHEMA_TELEMETRY, SCHEMA_TELEMETRY_LAYOUTS):
        raise ValueError(f"not {SCHEMA_TELEMETRY} or {SCHEMA_TELEMETRY_LAYOUTS}: schema "
                         f"{str(doc.get('schema'))[:40]!r}")
    if set(doc) != _ENVELOPE:
        raise ValueError(f"keys must be {', '.join(sorted(_ENVELOPE))}")
    if not (isinstance(doc["gateway"], str) and _ID.fullmatch(doc["gateway"])) or doc["stream"] != "telemetry" \
            or not (_int(doc["seq"]) and doc["seq"] >= 0) \
            or not (isinstance(doc["msg_id"], str) and re.fullmatch(r"[0-9a-f]{32}", doc["msg_id"])) \
            or not (isinstance(doc["ts"], str) and _UTC.fullmatch(doc["ts"])):
        raise ValueError("gateway, stream, seq, msg_id or ts does not follow the schema")
    if not isinstance(doc["blocks"], list):
        raise ValueError("blocks: must be a list")


def _block_samples(b) -> list[Sample]:
    if not isinstance(b, dict) or not {"dev", "n", "u", "t", "v"} <= set(b) <= {"dev", "n", "u", "t", "v", "q"}:
        raise ValueError("a block has dev, n, u, t, v and optionally q")
    dev, ts, names, units, values, quality = b["dev"], b["t"], b["n"], b["u"], b["v"], b.get("q")
    if not (isinstance(dev, str) and _ID.fullmatch(dev)) or not (_int(ts) and ts >= 0):
        raise ValueError("dev must be a device id and t a UTC time in ns")
    if not all(isinstance(x, list) for x in (names, units, values)) or (quality is not None and not isinstance(quality, list)):
        raise ValueError("n, u, v and q must be lists")
    if not len(names) == len(units) == len(values) or (quality is not None and len(quality) != len(values)):
        raise ValueError("n, u, v and q differ in length")
    out = []
    for j, name in enumerate(names):
        unit, value = units[j], values[j]
        if not (isinstance(name, str) and _NAME.fullmatch(name)) or not isinstance(unit, str):
            raise ValueError(f"n[{j}] or u[{j}] is not a point name / unit")
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float, str))):
            raise ValueError(f"v[{j}] must be a number, a string or null")
        q = quality[j] if quality is not None else None
        if q is None:
            out.append(Sample(f"{dev}/{name}", ts, value, unit))
        elif isinstance(q, list) and len(q) == 2 and q[0] in _VALIDITY and q[1] in _DETAIL:
            out.append(Sample(f"{dev}/{name}", ts, value, unit, _VALIDITY[q[0]], _DETAIL[q[1]]))
        else:
            raise ValueError(f"q[{j}] must be null or [validity, detail]")
    return out


class UnknownLayout(ValueError):
    """A block names a layout the decoder has not been given (yet): the message can be decoded once it has."""

    def __init__(self, layout_id: str) -> None:
        super().__init__(f"unknown layout {layout_id!r}")
        self.layout_id = layout_id


Layout = tuple[str, tuple[str, ...], tuple[str, ...]]
"""(device, names, units) of a layout id: what a layout message (gridedge.layout/1) says."""
_LAYOUT_ID = re.compile(r"[0-9a-f]{12}")


def _layout_block_samples(b, layouts: Mapping[str, Layout]) -> list[Sample]:
    """A gridedge.telemetry/3 block that names its layout: the full block it stands for, or its points `i` only."""
    if not {"l", "t", "v"} <= set(b) <= {"l", "t", "v", "i", "q"}:
        raise ValueError("a layout block has l, t, v and optionally i and q")
    lid, indices = b["l"], b.get("i")
    if not (isinstance(lid, str) and _LAYOUT_ID.fullmatch(lid)):
        raise ValueError("l must be a layout id (12 hex digits)")
    if indices is not None and not (isinstance(indices, list) and all(_int(i) and i >= 0 for i in indices)):
        raise ValueError("i must be a list of point positions")
    lay = layouts.get(lid)
    if lay is None:
        raise UnknownLayout(lid)
    dev, names, units = lay
    if indices is not None:
        if any(a >= c for a, c in zip(indices, indices[1:])) or (indices and indices[-1] >= len(names)):
            raise ValueError(f"i must be increasing positions below {len(names)}, the points of layout {lid}")
        names, units = [names[i] for i in indices], [units[i] for i in indices]
    return _block_samples({"dev": dev, "n": list(names), "u": list(units), "t": b["t"], "v": b["v"],
                           **({"q": b["q"]} if "q" in b else {})})


def samples_of(doc: dict, layouts: Mapping[str, Layout] | None = None) -> Iterator[Sample]:
    """A received telemetry message (parsed JSON) as Samples, for head-end consumers and tests; `layouts` are the
    layouts of its gateway by id (gridedge.telemetry/3: edge/headend.py keeps them from the layout messages).
    Raises ValueError on a message that does not follow the schema (checked whole, before any sample is given),
    UnknownLayout (a ValueError) when it names a layout not in `layouts`."""
    _check_envelope(doc)
    layout_form = doc["schema"] == SCHEMA_TELEMETRY_LAYOUTS
    samples = []
    for i, b in enumerate(doc["blocks"]):
        try:
            if layout_form and isinstance(b, dict) and "l" in b:
                samples += _layout_block_samples(b, layouts or {})
            else:
                samples += _block_samples(b)
        except UnknownLayout:
            raise
        except (TypeError, ValueError) as exc:
            raise ValueError(f"blocks[{i}]: {exc}") from None
    return iter(samples)
