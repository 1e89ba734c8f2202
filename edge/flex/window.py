"""An activation as flex sees it: who asked, which resources, which direction, when, and how much.

The control engine (issue 5) owns the activation's life; it hands flex one of these when an activation
starts, and again (or `FlexEngine.end_activation`) when its end changes. Plain data, JSON round-trip, so it is
stored with the history and survives a restart.

Direction follows the TSO/DSO usage: ``up`` = more injection or less consumption, ``down`` = less injection
or more consumption (curtailing PV is ``down``). The requested quantity is either a flexibility quantity
(``requested_w`` >= 0: the change from the baseline, constant or one value per ISP from the ISP that contains
the start) or a limit on the pool's injection (``limit_w``: a cap for ``down``, a floor for ``up``; the requested
quantity is then how far the baseline lies beyond it, never negative). Flex settles the `aligned()` window.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..contract import ISSUERS
from ..core.isp import IspGrid

DIRECTIONS = ("up", "down")
#: How late the gateway's own latency (command to confirmed set-point) may make an activation's edges: an edge less
#: than this after an ISP boundary (and less than 2 % of the ISP) is settled as if on it (docs/flex.md).
LATENCY_NS = 5 * 1_000_000_000


@dataclass(frozen=True)
class ActivationWindow:
    activation_id: str
    issuer: str
    resources: tuple[str, ...]
    direction: str
    start_ns: int
    end_ns: int
    requested_w: float | tuple[float, ...] | None = None
    limit_w: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.activation_id, str) or not 1 <= len(self.activation_id) <= 128:
            raise ValueError("activation_id: must be a string of 1 to 128 characters")
        if self.issuer not in ISSUERS:
            raise ValueError(f"issuer: must be one of {', '.join(ISSUERS)}, got {self.issuer!r}")
        res = tuple(self.resources) if isinstance(self.resources, (list, tuple)) else None
        if not res or not all(isinstance(r, str) and r for r in res) or len(set(res)) != len(res):
            raise ValueError("resources: must be a non-empty list of distinct resource ids")
        object.__setattr__(self, "resources", res)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: must be up or down, got {self.direction!r}")
        for name in ("start_ns", "end_ns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: must be an integer (UTC ns)")
        if self.end_ns <= self.start_ns:
            raise ValueError("end_ns must be after start_ns")
        if (self.requested_w is None) == (self.limit_w is None):
            raise ValueError("give exactly one of requested_w and limit_w")
        if self.requested_w is not None:
            values = self.requested_w if isinstance(self.requested_w, (list, tuple)) else (self.requested_w,)
            if not values or not all(_finite(v) and v >= 0 for v in values):
                raise ValueError("requested_w: must be a finite number >= 0 or a non-empty list of them")
            if isinstance(self.requested_w, (list, tuple)):
                object.__setattr__(self, "requested_w", tuple(float(v) for v in values))
            else:
                object.__setattr__(self, "requested_w", float(self.requested_w))
        if self.limit_w is not None:
            if not _finite(self.limit_w):
                raise ValueError("limit_w: must be a finite number")
            object.__setattr__(self, "limit_w", float(self.limit_w))

    @property
    def sign(self) -> int:
        """+1 for up, -1 for down: delivered = sign * (measured - baseline)."""
        return 1 if self.direction == "up" else -1

    def aligned(self, grid: IspGrid) -> "ActivationWindow":
        """The settlement window: each edge that lies less than the latency allowance after an ISP boundary moves
        back to it. An activation offered for whole ISPs goes active, and ends, a moment after their boundaries;
        that moment must count against delivery in its first ISP, not make a settlement record of its own."""
        allowance = min(LATENCY_NS, grid.ns // 50)

        def back(ts: int) -> int:
            a = grid.start(ts)
            return a if ts - a < allowance else ts

        start, end = back(self.start_ns), back(self.end_ns)
        if end <= start:
            end = self.end_ns
        return dataclasses.replace(self, start_ns=start, end_ns=end)

    def check(self, grid: IspGrid) -> None:
        """A per-ISP request must cover every ISP of the window."""
        if isinstance(self.requested_w, tuple):
            need = len(grid.starts(self.start_ns, self.end_ns))
            if len(self.requested_w) < need:
                raise ValueError(f"requested_w: has {len(self.requested_w)} values, the window spans {need} ISPs")

    def requested_wh(self, isp_start_ns: int, grid: IspGrid, baseline_wh: float | None) -> float | None:
        """Requested energy in one ISP: the quantity times the part of the ISP inside the window. For a limit,
        how far the baseline (of that part) lies beyond the limit; None when that needs a baseline it lacks."""
        overlap_h = grid.overlap_ns(isp_start_ns, self.start_ns, self.end_ns) / 3.6e12
        if self.requested_w is not None:
            if isinstance(self.requested_w, tuple):
                k = (isp_start_ns - grid.start(self.start_ns)) // grid.ns
                return self.requested_w[k] * overlap_h if 0 <= k < len(self.requested_w) else 0.0
            return self.requested_w * overlap_h
        if baseline_wh is None:
            return None
        part = baseline_wh * overlap_h / grid.hours
        return max(0.0, self.sign * (self.limit_w * overlap_h - part))

    def requested_w_at(self, ts_ns: int, grid: IspGrid, baseline_w: float | None) -> float | None:
        """Requested power at one instant (near-real-time records)."""
        if not self.start_ns <= ts_ns < self.end_ns:
            return 0.0
        if self.requested_w is not None:
            if isinstance(self.requested_w, tuple):
                k = (grid.start(ts_ns) - grid.start(self.start_ns)) // grid.ns
                return self.requested_w[k] if 0 <= k < len(self.requested_w) else 0.0
            return self.requested_w
        if baseline_w is None:
            return None
        return max(0.0, self.sign * (self.limit_w - baseline_w))

    def to_json(self) -> dict:
        return {"activation_id": self.activation_id, "issuer": self.issuer, "resources": list(self.resources),
                "direction": self.direction, "start_ns": self.start_ns, "end_ns": self.end_ns,
                "requested_w": list(self.requested_w) if isinstance(self.requested_w, tuple) else self.requested_w,
                "limit_w": self.limit_w}

    @classmethod
    def from_json(cls, doc: dict) -> "ActivationWindow":
        req = doc.get("requested_w")
        return cls(doc["activation_id"], doc["issuer"], tuple(doc["resources"]), doc["direction"], doc["start_ns"],
                   doc["end_ns"], tuple(req) if isinstance(req, list) else req, doc.get("limit_w"))


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
