"""A radial LV/MV feeder whose node voltages respond to what the DERs inject (linearised DistFlow), no I/O.

    source (v_source_pu) --seg 1-- node 1 --seg 2-- node 2 -- ... -- node n

Segment k has resistance r_k and reactance x_k (ohm, per phase). The flow through segment k is what the nodes
at and beyond k inject (P, Q > 0 = injection, balanced three-phase), and the voltage rise along it is
(r_k * P_k + x_k * Q_k) / V_nom per phase (LinDistFlow, losses neglected). So each node's voltage is

    v_j = v_source + sum over k <= j of (r_k P_k + x_k Q_k) / (n_phases * V_nom^2)      (pu, V_nom phase-neutral)

which is linear in the injections: `sensitivities()` gives dv/dP and dv/dQ. Background load is a negative
injection. The voltage angle (what a PMU sees) leads the source's by, per segment, (x_k P_k - r_k Q_k) / (n V^2)
rad (the same linearisation): exporting DERs push their node's angle ahead. The frequency is one value for the whole feeder (the transmission system sets it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Injection:
    p_w: float = 0.0
    q_var: float = 0.0


class Feeder:
    def __init__(self, segments: list[tuple[float, float]], *, v_nom_v: float = 230.0, v_source_pu: float = 1.0,
                 f_hz: float = 50.0, n_phases: int = 3) -> None:
        if not segments:
            raise ValueError("a feeder needs at least one segment")
        for i, (r, x) in enumerate(segments):
            if not (r >= 0 and x >= 0):
                raise ValueError(f"segment {i + 1}: r and x must be >= 0 ohm, got {r}, {x}")
        if not v_nom_v > 0:
            raise ValueError("v_nom_v must be > 0")
        if n_phases not in (1, 3):
            raise ValueError("n_phases must be 1 or 3")
        self.segments = [(float(r), float(x)) for r, x in segments]
        self.v_nom_v = float(v_nom_v)
        self.v_source_pu = float(v_source_pu)
        self.f_hz = float(f_hz)
        self.n_phases = n_phases
        self.der: dict[int, dict[str, Injection]] = {}   # node -> name -> injection
        self.load: dict[int, Injection] = {}

    @property
    def nodes(self) -> int:
        return len(self.segments)

    def _check(self, node: int) -> None:
        if not 1 <= node <= self.nodes:
            raise ValueError(f"node must be 1..{self.nodes}, got {node}")

    def set_injection(self, node: int, name: str, p_w: float, q_var: float) -> None:
        self._check(node)
        self.der.setdefault(node, {})[name] = Injection(float(p_w), float(q_var))

    def set_load(self, node: int, p_w: float, q_var: float = 0.0) -> None:
        """Background consumption at a node (W, var consumed)."""
        self._check(node)
        self.load[node] = Injection(-float(p_w), -float(q_var))

    def _net(self, node: int) -> tuple[float, float]:
        inj = list(self.der.get(node, {}).values()) + ([self.load[node]] if node in self.load else [])
        return sum(i.p_w for i in inj), sum(i.q_var for i in inj)

    def voltage_pu(self, node: int) -> float:
        self._check(node)
        nets = [self._net(j) for j in range(1, self.nodes + 1)]
        base = self.n_phases * self.v_nom_v ** 2
        v = self.v_source_pu
        for k in range(1, node + 1):
            p_flow = sum(p for p, _ in nets[k - 1:])
            q_flow = sum(q for _, q in nets[k - 1:])
            r, x = self.segments[k - 1]
            v += (r * p_flow + x * q_flow) / base
        return v

    def voltage_v(self, node: int) -> float:
        return self.voltage_pu(node) * self.v_nom_v

    def angle_rad(self, node: int) -> float:
        """The voltage angle at a node against the source's, rad (LinDistFlow: small angles)."""
        self._check(node)
        nets = [self._net(j) for j in range(1, self.nodes + 1)]
        base = self.n_phases * self.v_nom_v ** 2
        a = 0.0
        for k in range(1, node + 1):
            p_flow = sum(p for p, _ in nets[k - 1:])
            q_flow = sum(q for _, q in nets[k - 1:])
            r, x = self.segments[k - 1]
            a += (x * p_flow - r * q_flow) / base
        return a

    def sensitivities(self) -> tuple[list[list[float]], list[list[float]]]:
        """dv_i/dP_j and dv_i/dQ_j in pu per W and pu per var (nodes 1..n, 0-based lists)."""
        base = self.n_phases * self.v_nom_v ** 2
        n = self.nodes
        dp = [[sum(self.segments[k][0] for k in range(min(i, j) + 1)) / base for j in range(n)] for i in range(n)]
        dq = [[sum(self.segments[k][1] for k in range(min(i, j) + 1)) / base for j in range(n)] for i in range(n)]
        return dp, dq

    def tap(self, node: int, name: str) -> "FeederTap":
        """The connection point of one DER: what a plant model sees of the grid."""
        self._check(node)
        self.set_injection(node, name, 0.0, 0.0)
        return FeederTap(self, node, name)


@dataclass
class FeederTap:
    feeder: Feeder
    node: int
    name: str

    def update(self, p_w: float, q_var: float) -> tuple[float, float]:
        """The DER now injects p_w, q_var: the voltage (V, phase-neutral) and frequency (Hz) at its terminals."""
        self.feeder.set_injection(self.node, self.name, p_w, q_var)
        return self.feeder.voltage_v(self.node), self.feeder.f_hz


async def grid_commands(stream, feeder: Feeder | None, plant) -> None:
    """Read 'grid v_pu=1.08 hz=50.3' lines (a simulator's stdin) and apply them: the test bench's hand on the
    grid. v_pu sets the feeder's source voltage (or, without a feeder, the plant's terminal voltage), hz the
    frequency. A bad line is logged and skipped."""
    import asyncio
    import logging
    import threading

    log = logging.getLogger("gridedge.hil.feeder")
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def reader() -> None:  # a daemon thread: a blocked readline never holds up the process's exit
        for raw in iter(stream.readline, ""):
            loop.call_soon_threadsafe(lines.put_nowait, raw)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=reader, name="grid-commands", daemon=True).start()
    while True:
        line = await lines.get()
        if not line:
            return
        words = line.split()
        if not words or words[0] != "grid":
            log.warning("ignored control line %r (expected 'grid v_pu=... hz=...')", line.strip())
            continue
        try:
            for word in words[1:]:
                key, _, value = word.partition("=")
                v = float(value)
                if key == "v_pu":
                    if feeder is not None:
                        feeder.v_source_pu = v
                    else:
                        plant.v = v * 230.0
                elif key == "hz":
                    if feeder is not None:
                        feeder.f_hz = v
                    plant.hz = v
                else:
                    raise ValueError(f"unknown key {key!r}")
        except ValueError as exc:
            log.warning("ignored control line %r: %s", line.strip(), exc)
            continue
        log.info("grid set: %s", " ".join(words[1:]))
