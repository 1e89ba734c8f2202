"""The simulators' curve models (705 volt-var, 711 frequency droop, 712 watt-var) refuse what a device refuses:
an enumerated point outside its symbols, a ranged point outside its range, an index outside the stored curves or
points: Modbus exception 3 (ILLEGAL DATA VALUE), nothing changed, nothing adopted. Raw register writes over Modbus
TCP (TcpLink against the real pymodbus server), so the gateway's own checks are not in the way; and a hypothesis
fuzz of arbitrary writes and adoptions straight into the simulator."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.drivers import sunspec as ss
from gridedge.drivers.modbus import DeviceError, write_runs
from gridedge.drivers.modbus_tcp import TcpLink
from gridedge.hil.inverter_sim import InverterSim
from gridedge.hil.sunspec_sim import ADOPT_COMPLETED, ADOPT_FAILED, ADOPT_IN_PROGRESS

from .aio import arun

ILLEGAL_DATA_VALUE = 3


def registers(sim: InverterSim, mid: int, values: dict[str, object]) -> list[tuple[int, list[int]]]:
    """Write requests for {point: engineering value} of model `mid`, with the simulator's scale factors."""
    lay, start, sfs = sim.image.layouts[mid], sim.image.model_addr[mid], sim.image.sfs.get(mid, {})
    encoded = [(start + lay.points[n].offset,
                ss.encode_point(lay.points[n], v, sf=sfs.get(lay.points[n].sf) if isinstance(lay.points[n].sf, str)
                                else None))
               for n, v in values.items()]
    return write_runs(encoded)


REFUSED = [
    (705, {"Crv[2].DeptRef": 7}),                   # symbols 0..3
    (705, {"Crv[2].Pri": 9}),                       # symbols 0..2
    (705, {"Crv[2].VRefAutoEna": 2}),
    (705, {"Ena": 2}),
    (705, {"Crv[2].ActPt": 5}),                     # NPt = 4
    (705, {"Crv[2].ActPt": 0}),
    (705, {"Crv[2].Pt[1].Var": 150.0}),             # % of the DeptRef base
    (705, {"AdptCrvReq": 4}),                       # NCrv = 3
    (705, {"AdptCrvReq": 0}),
    (705, {"RvrtCrv": 9}),
    (705, {"Crv[2].DeptRef": 3, "Crv[2].Pri": 9}),  # one bad value refuses the whole request
    (712, {"Crv[2].Pri": 2}),                       # 712 has no VENDOR priority
    (712, {"Crv[2].DeptRef": 4}),
    (712, {"Crv[2].Pt[3].W": 150.0}),               # % of WMax
    (712, {"Crv[2].Pt[3].Var": -101.0}),
    (711, {"Ctl[2].PMin": 150}),                    # "The valid range is -100 to 100"
    (711, {"Ctl[2].PMin": -101}),
    (711, {"AdptCtlReq": 3}),                       # NCtl = 2
]


def test_invalid_curve_writes_get_exception_3_and_change_nothing():
    async def main():
        sim = InverterSim()
        port = await sim.start()
        link = TcpLink("127.0.0.1", port, timeout_s=1.0)
        try:
            before = list(sim.image.image)
            for mid, values in REFUSED:
                (addr, regs), = registers(sim, mid, values)
                with pytest.raises(DeviceError) as ei:
                    await link.write(1, addr, regs)
                assert ei.value.exception_code == ILLEGAL_DATA_VALUE, (mid, values)
            assert sim.image.image == before and sim.writes_applied == 0
            assert sim.writes_refused == len(REFUSED)
            assert all(h.adoptions == 0 for m, h in sim.handlers.items() if m in (705, 711, 712))
            # the same points with valid values are taken
            for mid, values in [(705, {"Crv[2].DeptRef": 3, "Crv[2].Pri": 2, "Crv[2].ActPt": 4}),
                                (712, {"Crv[2].Pri": 1, "Crv[2].Pt[3].W": 100.0, "Crv[2].Pt[3].Var": -100.0}),
                                (711, {"Ctl[2].PMin": -100}), (711, {"Ctl[2].PMin": 100})]:
                for addr, regs in registers(sim, mid, values):
                    await link.write(1, addr, regs)
            assert sim.handlers[705].curve(2)["DeptRef"] == 3 and sim.handlers[711].curve(2)["PMin"] == 100
        finally:
            await link.close()
            await sim.stop()
    arun(main())


def test_a_curve_whose_points_do_not_increase_is_not_adopted():
    sim = InverterSim()
    vv = sim.handlers[705]
    for mid, values in [(705, {"Crv[2].ActPt": 3, "Crv[2].Pt[1].V": 95.0, "Crv[2].Pt[2].V": 95.0,
                               "Crv[2].Pt[3].V": 105.0})]:
        for addr, regs in registers(sim, mid, values):
            assert sim.apply_write(addr, regs) is None
    (addr, regs), = registers(sim, 705, {"AdptCrvReq": 2})
    assert sim.apply_write(addr, regs) is None
    assert sim.image.get(705)["AdptCrvRslt"] == ADOPT_IN_PROGRESS
    vv.step()
    assert sim.image.get(705)["AdptCrvRslt"] == ADOPT_FAILED and vv.adoptions == 0
    assert [p[0] for p in vv.curve(1)["Pt"]] == [92.0, 98.0, 102.0, 108.0]


def test_default_curves_are_44_percent_of_rated_apparent_power():
    """IEEE 1547-2018 Cat B: Q = 44 % of the nameplate apparent power, so the reference is VA_MAX_PCT (3)."""
    sim = InverterSim()
    vv, wv = sim.handlers[705].curve(1), sim.handlers[712].curve(1)
    assert vv["DeptRef"] == 3 and vv["Pt"] == [(92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0)]
    assert wv["DeptRef"] == 3 and wv["Pt"] == [(20.0, 0.0), (50.0, 0.0), (100.0, -44.0)]
    assert sim.image.get(702)["VAMaxRtg"] == 10000


def test_writes_while_booting_are_refused_busy():
    sim = InverterSim()
    sim.booting = True
    (addr, regs), = registers(sim, 705, {"Crv[2].DeptRef": 3})
    assert sim.apply_write(addr, regs) == 6          # SERVER_DEVICE_BUSY
    assert sim.read(sim.base, 6) == [*ss.SUNS_MARKER, ss.END_MODEL_ID, 0, 0, 0]


# ---------------------------------------------------------------- fuzz

FUZZ_SIM = InverterSim()
CURVE_MODELS = (705, 711, 712)
WRITABLE = sorted((m, n) for m in CURVE_MODELS for n in FUZZ_SIM.handlers[m].writable)


def _unindexed(name: str) -> str:
    return re.sub(r"\[\d+\]", "", name)


def _consistent(sim: InverterSim) -> None:
    """What no accepted write may break: enumerations within their symbols, indexes and ranges within bounds."""
    for mid in CURVE_MODELS:
        h, lay, d = sim.handlers[mid], sim.image.layouts[mid], sim.image.get(mid)
        for name, p in lay.points.items():
            v = d.get(name)
            if p.symbols and v is not ss.NOT_IMPLEMENTED:
                assert v in p.symbols, (mid, name, v)
            base = _unindexed(name)
            if base == "Crv.ActPt" and v is not ss.NOT_IMPLEMENTED:
                assert 1 <= v <= h.n_pt, (mid, name, v)
            if base in ("Ctl.PMin", "Crv.Pt.Var", "Crv.Pt.W") and isinstance(v, (int, float)):
                assert -100 <= v <= 100, (mid, name, v)
        assert d[h.rslt] in (ADOPT_IN_PROGRESS, ADOPT_COMPLETED, ADOPT_FAILED)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WRITABLE), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=2),
                          st.booleans()), min_size=1, max_size=12))
def test_fuzz_curve_writes_and_adoptions(steps):
    sim = InverterSim()
    for (mid, name), raw, step in steps:
        p = sim.image.layouts[mid].points[name]
        addr = sim.image.model_addr[mid] + p.offset
        regs = (raw * p.size)[:p.size]
        before = list(sim.image.image)
        adopted = sim.handlers[mid].adoptions
        if sim.apply_write(addr, regs) is not None:
            assert sim.image.image == before            # a refused write changes nothing
        if step:
            sim.handlers[mid].step()
            active = sim.handlers[mid].curve(1)
            if sim.handlers[mid].adoptions > adopted and sim.handlers[mid].axes:
                xs = [x for x, _ in active["Pt"]]
                assert all(b > a for a, b in zip(xs, xs[1:])), xs
        _consistent(sim)
