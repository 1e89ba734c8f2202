"""Layouts sent once (gridedge.telemetry/3): a block names its layout by id instead of carrying names and units.

A layout is one read of one device: its id, device, point names and units. The id is derived from them (the first
12 hex digits of the SHA-256 of the JSON array [device, names, units], compact, ASCII), so it is the same in every
run of the agent and changes exactly when the device's model or configuration changes what a read returns: the id
is the layout's version. Each layout is published as a retained message on <prefix>layout/<device>/<id>, through
the outbox before the first telemetry message that uses it, and again after every reconnect (a broker that lost
its retained messages in a restart gets them back); a head-end subscribed to <prefix>layout/# has every layout
before the blocks that use it.

    {"l": "f4b26366b953", "t": 1795442401123456789, "v": [7998.0, 50.01]}              every point of the layout
    {"l": "f4b26366b953", "t": 1795442401373456789, "i": [1], "v": [50.02]}            report by exception: point 1

Blocks whose points do not come from a fixed read (loose samples) keep the full form of gridedge.telemetry/2.
"""
from __future__ import annotations

import hashlib
import json
import time

from .core.model import BlockLayout
from .core.utc import iso_utc

SCHEMA_LAYOUT = "gridedge.layout/1"
TOPIC_LAYOUT = "layout"
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode


def layout_id(device: str, names, units) -> str:
    return hashlib.sha256(_encode([device, list(names), list(units)]).encode()).hexdigest()[:12]


def layout_body(lay: BlockLayout, lid: str) -> dict:
    """The layout message's body (the outbox adds gateway, stream, seq, msg_id)."""
    return {"schema": SCHEMA_LAYOUT, "ts": iso_utc(time.time_ns()), "dev": lay.device, "id": lid,
            "n": list(lay.names), "u": list(lay.units)}


class Layouts:
    """The layouts this agent has used, their ids, and which were stored for the head-end since the last connect.

    Two layouts with the same id (a 48-bit collision) cannot both be named by it: the second keeps the full form."""

    def __init__(self) -> None:
        self._ids: dict[BlockLayout, str | None] = {}  # layout -> its id; None: it travels in the full form
        self._by_id: dict[str, BlockLayout] = {}
        self._announced: set[str] = set()

    def id_of(self, lay: BlockLayout, announce: list) -> str | None:
        """The id that names `lay` in a block, or None when it must travel in the full form. A layout not yet
        stored since the last connect is appended to `announce` as (topic suffix, body)."""
        lid = self._ids.get(lay, "")
        if lid == "":
            lid = layout_id(lay.device, lay.names, lay.units)
            other = self._by_id.setdefault(lid, lay)
            if other is not lay and (other.device, other.names, other.units) != (lay.device, lay.names, lay.units):
                lid = None
            self._ids[lay] = lid
        if lid is not None and lid not in self._announced:
            self._announced.add(lid)
            announce.append((f"{TOPIC_LAYOUT}/{lay.device}/{lid}", layout_body(lay, lid)))
        return lid

    def reconnected(self) -> None:
        """Every layout is stored again before its next use: the broker may have lost its retained messages."""
        self._announced.clear()


def encode_compact(lid: str, ts_ns: int, indices: list[int] | None, values_json: bytes, tail: bytes) -> bytes:
    """One block of gridedge.telemetry/3: `i` when only the points at `indices` are sent; `tail` closes it (q and
    any other block field, then "}")."""
    i = b"" if indices is None else b',"i":' + _encode(indices).encode()
    return b'{"l":"' + lid.encode() + b'","t":' + str(ts_ns).encode() + i + b',"v":' + values_json + tail
