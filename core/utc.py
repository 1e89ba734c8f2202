"""UTC time stamps as the contract writes them: ISO 8601 with milliseconds and a Z, and back to ns."""
from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_utc(text: str) -> int:
    """ISO 8601 with an explicit UTC offset -> ns. Naive times are refused: the gateway cannot guess a zone."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("time has no UTC offset")
    return int(dt.timestamp() * 1e9)
