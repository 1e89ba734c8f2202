"""The reference decoder for head-ends: any message of a gateway, in any telemetry form, back into the full samples.

    decoder = HeadEnd()
    for topic, payload, content_type in mqtt_messages:        # content_type: MQTT 5's, None for MQTT 3.1.1
        for sample in decoder.take(topic, payload, content_type):
            store(sample)                                     # dev/point, t (UTC ns), value, unit, quality

It is what docs/mqtt-api.md says, in code (the DSO simulator and the tests read every message through it):
- a payload is JSON or a zlib stream with the contract's dictionary (edge/compression.py), inflated to at most
  `limit` bytes;
- a layout message (<prefix>layout/<device>/<id>, retained) teaches a layout; its id must be the hash of what it
  says (edge/layouts.py);
- a telemetry message (live or backfill) whose msg_id was seen before is a duplicate and gives nothing; one that
  names a layout not known yet waits (at most `max_waiting` messages) and is given when the layout arrives.
The decoded samples are the ones the gateway sent: with report by exception, a point absent from a read holds the
value last sent for it (edge/reporting.py).
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict

from .compression import PayloadError, open_payload
from .core.model import Sample
from .layouts import SCHEMA_LAYOUT, layout_id
from .telemetry import _ID, _NAME, _UTC, Layout, UnknownLayout, samples_of

MAX_PAYLOAD = 2 * 2**20  # a gateway's message is at most 256 KiB of JSON (docs/mqtt-api.md); room for other senders
_LAYOUT_KEYS = {"schema", "gateway", "stream", "seq", "msg_id", "ts", "dev", "id", "n", "u"}


def decode(payload: bytes, content_type: str | None = None, *, limit: int = MAX_PAYLOAD):
    """The JSON document of a message, compressed or not. Raises PayloadError (a ValueError) when it cannot be
    read: corrupt, a content type that contradicts the bytes, past `limit` bytes once inflated, or not JSON."""
    data = open_payload(payload, content_type, limit=limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"not JSON: {str(exc)[:80]}") from None


def layout_of(doc) -> tuple[str, str, Layout]:
    """(gateway, id, (device, names, units)) of a layout message; ValueError if it does not follow the schema."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_LAYOUT or set(doc) != _LAYOUT_KEYS:
        raise ValueError(f"a layout message is {SCHEMA_LAYOUT} with keys {', '.join(sorted(_LAYOUT_KEYS))}")
    dev, names, units = doc["dev"], doc["n"], doc["u"]
    if not (isinstance(doc["gateway"], str) and _ID.fullmatch(doc["gateway"])) or doc["stream"] != "layout" \
            or not (isinstance(doc["seq"], int) and not isinstance(doc["seq"], bool) and doc["seq"] >= 0) \
            or not (isinstance(doc["msg_id"], str) and re.fullmatch(r"[0-9a-f]{32}", doc["msg_id"])) \
            or not (isinstance(doc["ts"], str) and _UTC.fullmatch(doc["ts"])) \
            or not (isinstance(dev, str) and _ID.fullmatch(dev)):
        raise ValueError("gateway, stream, seq, msg_id, ts or dev does not follow the schema")
    if not (isinstance(names, list) and isinstance(units, list) and len(names) == len(units)
            and all(isinstance(n, str) and _NAME.fullmatch(n) for n in names) and all(isinstance(u, str) for u in units)):
        raise ValueError("n and u must be lists of point names and units of one length")
    if doc["id"] != layout_id(dev, names, units):
        raise ValueError(f"id {str(doc['id'])[:20]!r} is not the layout's hash {layout_id(dev, names, units)!r}")
    return doc["gateway"], doc["id"], (dev, tuple(names), tuple(units))


class HeadEnd:
    """What a head-end keeps to read gateways' telemetry: their layouts, the msg_ids seen, and the messages waiting
    for a layout. One for any number of gateways (layouts are kept per gateway)."""

    def __init__(self, *, limit: int = MAX_PAYLOAD, max_waiting: int = 1000, remember_ids: int = 1_000_000) -> None:
        self.limit = limit
        self.max_waiting, self.remember_ids = max_waiting, remember_ids
        self.layouts: dict[str, dict[str, Layout]] = {}  # gateway -> id -> layout
        self.waiting: list[dict] = []   # telemetry documents that name a layout not known yet, oldest first
        self.duplicates = self.dropped = 0  # messages seen before; waiting messages dropped past max_waiting
        self._seen: OrderedDict[str, None] = OrderedDict()

    def take(self, topic: str, payload: bytes, content_type: str | None = None) -> list[Sample]:
        """The samples a message gives now (those of messages that waited for its layout included). Raises
        ValueError (PayloadError, or the schema's complaint) for a message that cannot be read."""
        doc = decode(payload, content_type, limit=self.limit)
        level = topic.split("/")
        if len(level) >= 3 and level[-3] == "layout":
            gateway, lid, lay = layout_of(doc)
            self.layouts.setdefault(gateway, {})[lid] = lay
            waiting, self.waiting = self.waiting, []
            return [s for d in waiting for s in self._telemetry(d)]
        if level[-1] != "telemetry":
            return []
        return self._telemetry(doc)

    def _telemetry(self, doc) -> list[Sample]:
        if not isinstance(doc, dict) or not isinstance(doc.get("msg_id"), str) \
                or not isinstance(doc.get("gateway"), str):
            list(samples_of(doc))  # raises the schema's complaint
            raise ValueError("a telemetry message has the strings gateway and msg_id")
        msg_id = doc["msg_id"]
        if msg_id in self._seen:
            self.duplicates += 1
            return []
        try:
            samples = list(samples_of(doc, self.layouts.get(doc["gateway"], {})))
        except UnknownLayout:
            self.waiting.append(doc)
            if len(self.waiting) > self.max_waiting:
                self.waiting.pop(0)
                self.dropped += 1
            return []
        self._seen[msg_id] = None
        if len(self._seen) > self.remember_ids:
            self._seen.popitem(last=False)
        return samples
