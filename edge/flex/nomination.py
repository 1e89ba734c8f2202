"""Nominations: a schedule the FSP or DSO sends ex ante over MQTT, used as the ``nomination`` baseline.

Topic ``<prefix>nomination/<issuer>`` (an issuer -> gateway), schema ``gridedge.nomination/2``, signed like a
command (the document is the payload of a JWS, with the claims iss, aud, iat and exp; docs/mqtt-api.md)::

    {"schema": "gridedge.nomination/2", "nomination_id": "fsp-2026-11-23-007", "resource": "pv1",
     "start": "2026-11-23T14:00:00Z", "isp_s": 900, "w": [5200.0, 5100.0, 4800.0], "iss": "fsp-1", ...}

``w`` is the mean power per ISP from ``start`` on, net injection (+ = export, as the W point). ``start`` must be an
ISP boundary of the gateway's grid and ``isp_s`` its length. Ex ante: the first ISP must start no earlier than
``gate_closure_s`` after the time of receipt. A later nomination replaces earlier values for the ISPs it covers.
`parse_nomination` turns the document into a Nomination or raises NominationRejected naming the fault, like
commands; its issuer (actor class) is what authenticated it, never a field of the document.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

from ..contract import CLAIMS, ISSUERS, CommandRejected, decode
from ..core.utc import iso_utc
from ..core.isp import IspGrid

SCHEMA_NOMINATION = "gridedge.nomination/2"
MAX_NOMINATION_BYTES = 262_144
MAX_DAYS = 7
MAX_ABS_W = 1e9
_KEYS = {"schema", "nomination_id", "resource", "start", "isp_s", "w", *CLAIMS}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class NominationRejected(Exception):
    """Answer with a result "rejected" (cmd_id = nomination_id, None when it could not be read)."""

    def __init__(self, nomination_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.nomination_id = nomination_id
        self.reason = reason


@dataclass(frozen=True)
class Nomination:
    nomination_id: str
    issuer: str
    resource: str
    start_ns: int
    isp_s: int
    values_w: tuple[float, ...]
    repeated: bool = False  # the id was seen before: not applied again (FlexEngine.nomination)

    @property
    def end_ns(self) -> int:
        return self.start_ns + len(self.values_w) * self.isp_s * 1_000_000_000


def exact_ns(text: str) -> int:
    """ISO 8601 with an explicit offset -> UTC ns, exactly (no float rounding)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("time has no UTC offset")
    td = dt - _EPOCH
    return (td.days * 86_400 + td.seconds) * 1_000_000_000 + td.microseconds * 1_000


def parse_nomination(payload: bytes | dict, now_ns: int, *, grid: IspGrid, resources: Collection[str],
                     gate_closure_s: int = 0, issuer: str = "aggregator") -> Nomination:
    """A nomination document (bytes, or already decoded by the command gate) -> Nomination; `issuer` is the actor
    class of whoever it was authenticated as."""
    if isinstance(payload, (bytes, bytearray)):
        try:
            doc = decode(bytes(payload), "nomination", MAX_NOMINATION_BYTES)
        except CommandRejected as exc:
            raise NominationRejected(None, exc.reason) from None
    elif isinstance(payload, dict):
        doc = payload
    else:
        raise NominationRejected(None, "payload must be bytes")
    nid = doc.get("nomination_id")
    if not isinstance(nid, str) or not 1 <= len(nid) <= 128:
        raise NominationRejected(None, "nomination_id: must be a string of 1 to 128 characters")

    def reject(reason: str) -> NominationRejected:
        return NominationRejected(nid, reason)

    if doc.get("schema") != SCHEMA_NOMINATION:
        raise reject(f"schema: must be {SCHEMA_NOMINATION!r}, got {_show(doc.get('schema'))}")
    unknown = sorted(k for k in doc if k not in _KEYS)
    if unknown:
        raise reject(f"unknown key {unknown[0]!r}")
    if issuer not in ISSUERS:
        raise reject(f"issuer: must be one of {', '.join(ISSUERS)}, got {_show(issuer)}")
    resource = doc.get("resource")
    if not isinstance(resource, str) or resource not in resources:
        known = ", ".join(sorted(resources)) or "none configured"
        raise reject(f"resource: unknown resource {_show(resource)}; known: {known}")
    isp_s = doc.get("isp_s")
    if isinstance(isp_s, bool) or not isinstance(isp_s, int) or isp_s != grid.seconds:
        raise reject(f"isp_s: must be {grid.seconds} (this gateway's ISP), got {_show(isp_s)}")
    raw = doc.get("start")
    try:
        if not isinstance(raw, str):
            raise ValueError("not a string")
        start = exact_ns(raw)
    except (ValueError, OverflowError) as exc:
        raise reject(f"start: must be an ISO 8601 UTC time like 2026-11-23T14:00:00Z ({exc})") from None
    if start % grid.ns:
        raise reject(f"start: {raw} is not an ISP boundary ({grid.minutes}-min ISPs aligned to UTC)")
    earliest = now_ns + gate_closure_s * 1_000_000_000
    if start < earliest:
        raise reject(f"start: {raw} is past gate closure: the first ISP must start at or after {iso_utc(earliest)}")
    values = doc.get("w")
    limit = MAX_DAYS * grid.per_day
    if not isinstance(values, list) or not 1 <= len(values) <= limit:
        raise reject(f"w: must be an array of 1 to {limit} numbers ({MAX_DAYS} days of ISPs)")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise reject(f"w[{i}]: must be a number, got {_show(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f) or abs(f) > MAX_ABS_W:
            raise reject(f"w[{i}]: must be a finite power within +/-{MAX_ABS_W:g} W, got {_show(v)}")
        out.append(f)
    return Nomination(nid, issuer, resource, start, isp_s, tuple(out))


def _show(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"<{v.bit_length()}-bit integer>"
    try:
        text = repr(v)
    except ValueError:  # an integer of too many digits somewhere inside
        return f"<{type(v).__name__}>"
    return text if len(text) <= 60 else text[:56] + "..."
