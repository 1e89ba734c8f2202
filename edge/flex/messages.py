"""Flex messages of the MQTT contract (docs/mqtt-api.md, "Flexibility", and schemas/).

Each body is what the agent appends to the outbox: the outbox adds gateway, stream, seq and msg_id. The topic
is ``<prefix><kind>``, the stream is the kind, and each kind has its outbox data class (drop priority).
"""
from __future__ import annotations

import math

from ..core.utc import iso_utc

SCHEMAS = {
    "verification": "gridedge.verification/1",
    "settlement": "gridedge.settlement/1",
    "availability": "gridedge.availability/1",
    "prequalification": "gridedge.prequalification/1",
    "baseline_accuracy": "gridedge.baseline_accuracy/1",
}
DATA_CLASS = {
    "verification": "verification",
    "settlement": "settlement",
    "availability": "telemetry",     # superseded by the next one: dropped first under the quota
    "prequalification": "event",
    "baseline_accuracy": "event",
}
SIGN_CONVENTION = "injection_positive"


def num(v, digits: int = 3):
    """A JSON number (rounded) or null for None/NaN."""
    if v is None:
        return None
    f = float(v)
    return None if not math.isfinite(f) else round(f, digits)


def body(kind: str, ts_ns: int, /, **fields) -> dict:
    return {"schema": SCHEMAS[kind], "ts": iso_utc(ts_ns), **fields}


def isp(start_ns: int, isp_ns: int) -> dict:
    return {"start": iso_utc(start_ns), "end": iso_utc(start_ns + isp_ns), "isp_s": isp_ns // 1_000_000_000}
