"""Report by exception (IEC 61850 reporting: data change with a deadband, a buffer time, an integrity period).

Each point is compared, at every read, with what was last *sent* for it (not last read: a slow drift is sent once
it has drifted past the deadband). A value is sent when
- its quality changed (IEC 61850 qchg), or its heartbeat is due (the integrity period: the head-end knows the
  point is alive and holds what it was sent), whatever else; else
- it changed, at least `min_interval` after the point was last sent (IEC 61850 BufTm), and by more than the
  deadband: max(`deadband`, `deadband_pct` % of the value last sent), so a relative band has an absolute floor
  near zero. Strings and numbers without a unit (states, enums, flags) are sent at every change.
Energy counters (Wh, varh, VAh) and the points flex settles are sent at every change, exactly: FULL.

The head-end holds each point's last value until the next one: between two reports every read was within the
deadband of the value it holds. The first read of a layout sends every point, so a restart is an integrity report.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .core.model import BlockLayout, Detail, Sample, SampleBlock, Validity

ENERGY_UNITS = frozenset(p + u for p in ("", "k", "M", "G") for u in ("Wh", "varh", "VAh"))
_UNSENT = object()  # the quality of a point never sent: differs from every quality


def data_class(unit: str) -> str:
    """energy (a counter, full resolution), measurement (a number with a unit) or status (no unit)."""
    return "energy" if unit in ENERGY_UNITS else "measurement" if unit else "status"


@dataclass(frozen=True, slots=True)
class Policy:
    deadband: float = 0.0        # absolute, in the point's unit
    deadband_pct: float = 0.0    # relative to the value last sent, %
    min_interval_ns: int = 0
    heartbeat_ns: int = 300 * 10**9

    @property
    def exact(self) -> bool:
        """Every change is sent at once."""
        return self.deadband == 0 and self.deadband_pct == 0 and self.min_interval_ns == 0


PolicyOf = Callable[[str, str, str], Policy]
"""(device, point name, unit) -> the point's policy."""


class _State:
    __slots__ = ("last", "lastq", "sent", "policies", "exact", "due_ns")

    def __init__(self, policies: list[Policy]) -> None:
        n = len(policies)
        self.last: list = [None] * n
        self.lastq: list = [_UNSENT] * n
        self.sent = [0] * n
        self.policies = policies
        self.exact = all(p.exact for p in policies)
        self.due_ns = 0  # no heartbeat is due before this


class Reporter:
    """Which values of each read to send. Counts what it was given (`read`) and what it let through (`sent`)."""

    def __init__(self, policy_of: PolicyOf) -> None:
        self.policy_of = policy_of
        self._layouts: dict[BlockLayout, _State] = {}
        self._points: dict[str, _State] = {}  # loose samples, by point id
        self.read = self.sent = 0

    def select(self, block: SampleBlock) -> list[int] | None:
        """The positions of the block's values to send, in order; None: all of them."""
        lay = block.layout
        st = self._layouts.get(lay)
        if st is None:
            st = self._layouts[lay] = _State([self.policy_of(lay.device, n, u) for n, u in zip(lay.names, lay.units)])
        n = len(block.values)
        self.read += n
        ts = block.ts_ns
        # the common case, in C: nothing changed, nothing is due
        if st.exact and block.quality is None and ts < st.due_ns and block.values == st.last \
                and all(q is None for q in st.lastq):
            return []
        picked = _changed(st, block.values, block.quality, ts)
        self.sent += len(picked)
        return None if len(picked) == n else picked

    def select_samples(self, samples: list[Sample]) -> list[Sample]:
        """Loose samples (no fixed read): the same rules, point by point."""
        out = []
        for s in samples:
            st = self._points.get(s.point)
            if st is None:
                device, _, name = s.point.rpartition("/")
                st = self._points[s.point] = _State([self.policy_of(device, name, s.unit)])
            q = None if s.validity is Validity.GOOD and s.detail is Detail.NONE else (s.validity, s.detail)
            if _changed(st, [s.value], [q], s.ts_ns):
                out.append(s)
        self.read += len(samples)
        self.sent += len(out)
        return out


def _changed(st: _State, values: list, quality: list | None, ts: int) -> list[int]:
    """Positions to send now; the state then holds what they sent."""
    picked = []
    last, lastq, sent, policies = st.last, st.lastq, st.sent, st.policies
    for i, v in enumerate(values):
        q = quality[i] if quality is not None else None
        p = policies[i]
        age = ts - sent[i]
        if q != lastq[i] or not 0 <= age < p.heartbeat_ns:
            pass
        elif v == last[i] or age < p.min_interval_ns:
            continue
        elif p.deadband or p.deadband_pct:
            old = last[i]
            if _number(v) and _number(old) and abs(v - old) <= max(p.deadband, p.deadband_pct / 100 * abs(old)):
                continue
        picked.append(i)
        last[i], lastq[i], sent[i] = v, q, ts
    if picked:
        st.due_ns = min(s + p.heartbeat_ns for s, p in zip(sent, policies))
    return picked


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
