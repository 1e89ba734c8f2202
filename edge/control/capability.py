"""What a controlled device can do, whoever made it: its kind, rating and prequalified limits.

Controllers see devices only through this (and the canonical point names of docs/points.md), never through a
vendor. Every set-point is clamped here, to the device's capability and to the prequalified limits from the
configuration (`[[control.devices]]`), whichever is tighter.

Kinds: "inverter" (a generator: 0 <= P), "battery" (storage: P < 0 charges), "load" (a controllable load:
P <= 0, its consumption), "meter" (measures only; the site meter at the point of connection).
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("inverter", "battery", "load", "meter")
#: Reactive capability assumed when neither the device nor the configuration gives one: IEEE 1547-2018
#: Category B asks every DER for 44 % of its rating in each direction.
DEFAULT_Q_PU = 0.44


@dataclass(frozen=True)
class Capability:
    device: str
    kind: str
    writable: bool
    rated_w: float | None          # WMax from the device, else the configuration's rated_w; None = unknown
    p_min_w: float | None = None   # bounds of P (rating and prequalification combined); None with no rating
    p_max_w: float | None = None
    q_max_var: float | None = None

    @classmethod
    def build(cls, device: str, kind: str, writable: bool, rated_w: float | None, *, device_q_var: float | None = None,
              cfg_p_min_w: float | None = None, cfg_p_max_w: float | None = None,
              cfg_q_max_var: float | None = None) -> "Capability":
        """Combine what the device reports with the prequalified limits of the configuration."""
        if rated_w is None or not rated_w > 0:
            return cls(device, kind, writable, None)
        lo, hi = {"inverter": (0.0, rated_w), "battery": (-rated_w, rated_w), "load": (-rated_w, 0.0)}.get(
            kind, (0.0, 0.0))
        if cfg_p_min_w is not None:
            lo = min(max(lo, cfg_p_min_w), hi)
        if cfg_p_max_w is not None:
            hi = max(min(hi, cfg_p_max_w), lo)
        qs = [q for q in (device_q_var, cfg_q_max_var) if q is not None and q >= 0]
        q = min(qs) if qs else DEFAULT_Q_PU * rated_w
        return cls(device, kind, writable, float(rated_w), float(lo), float(hi), float(min(q, rated_w)))

    @property
    def known(self) -> bool:
        return self.rated_w is not None

    def clamp_w(self, w: float) -> tuple[float, bool]:
        """(P within [p_min_w, p_max_w], whether it had to be clamped)."""
        c = min(max(w, self.p_min_w), self.p_max_w)
        return c, c != w

    def clamp_var(self, var: float) -> tuple[float, bool]:
        c = min(max(var, -self.q_max_var), self.q_max_var)
        return c, c != var

    def pu(self, w: float) -> float:
        return w / self.rated_w

    def describe(self) -> str:
        if not self.known:
            return f"{self.device}: rating unknown"
        return (f"{self.device}: P {self.p_min_w:g}..{self.p_max_w:g} W, |Q| <= {self.q_max_var:g} var "
                f"(rated {self.rated_w:g} W)")
