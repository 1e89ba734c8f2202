"""Load-profile catch-up into the flex engine's ISP energy series (simulated time, no I/O): a link outage leaves
ISPs missing or estimated; the meter's profile entries, read afterwards, complete them exactly; an activation's ISPs
settled with the gap are settled again."""
from __future__ import annotations

from gridedge.core.isp import IspGrid
from gridedge.core.model import Detail, Sample, Validity
from gridedge.flex.engine import FlexEngine
from gridedge.flex.metering import MeterSeries
from gridedge.flex import parse_flex
from gridedge.flex.window import ActivationWindow

from .conftest import validate_message

NS = 10**9
T0 = 1_800_000_000 * NS - (1_800_000_000 * NS) % (900 * NS)        # an ISP boundary
W_IMPORT = 2000.0                                                 # a constant 2 kW load


def _reg(t_ns: int) -> float:
    """The import register of a 2 kW load (Wh), at any instant."""
    return 10_000.0 + W_IMPORT * (t_ns - T0) / (3600 * NS)


def _live(series, t0: int, t1: int, step_s: int = 10) -> None:
    for t in range(t0, t1 + 1, step_s * NS):
        series.feed(Sample("m1/TotWhImp", t, _reg(t), "Wh"))


def _profile(t0: int, t1: int, status_bad_at: int | None = None) -> list[Sample]:
    out = []
    for t in range(t0, t1 + 1, 900 * NS):
        bad = t == status_bad_at
        out.append(Sample("m1/TotWhImp", t, None if bad else _reg(t), "Wh",
                          Validity.INVALID if bad else Validity.GOOD, Detail.DEVICE_EXCEPTION if bad else Detail.NONE))
    return out


def test_meter_series_completes_closed_isps_from_profile_entries():
    grid = IspGrid(15)
    m = MeterSeries("r1", grid, energy_import="m1/TotWhImp", max_gap_s=30)
    m.begin(T0)
    _live(m, T0, T0 + 900 * NS)
    outage_end = T0 + 4 * 900 * NS + 300 * NS                      # the link is down for 3 ISPs and 5 min
    closed = m.close(outage_end)                                    # the gap allowance closed the ISPs it hid
    assert [iv.quality for iv in closed] == ["good", "missing", "missing", "missing"]
    _live(m, outage_end, outage_end + 900 * NS)
    closed += m.close(outage_end + 900 * NS)
    assert closed[4].quality == "estimated" and "gap" in closed[4].flags
    ivs = m.backfill(_profile(T0, T0 + 6 * 900 * NS))
    assert [iv.start_ns for iv in ivs] == [T0 + k * 900 * NS for k in range(5)]       # only closed ISPs
    assert all(iv.quality == "good" and iv.source == "profile" and abs(iv.wh + 500.0) < 1e-6 for iv in ivs)


def test_a_profile_entry_with_a_bad_status_leaves_its_isps_alone():
    grid = IspGrid(15)
    m = MeterSeries("r1", grid, energy_import="m1/TotWhImp", max_gap_s=30)
    m.begin(T0)
    m.close(T0 + 5 * 900 * NS)
    ivs = m.backfill(_profile(T0, T0 + 4 * 900 * NS, status_bad_at=T0 + 2 * 900 * NS))
    # the readings at T0+1 and T0+3 ISPs bracket two ISPs: a span of 30 min with one reading missing is still exact
    assert [iv.start_ns for iv in ivs] == [T0 + k * 900 * NS for k in range(4)]
    assert all(abs(iv.wh + 500.0) < 1e-6 for iv in ivs)


def _engine(tmp_path) -> FlexEngine:
    cfg = parse_flex({"isp_min": 15, "resources": [{"id": "r1", "kind": "load", "energy_import": "m1/TotWhImp",
                                                     "baseline": {"method": "meter_before_after"}}]})
    return FlexEngine(cfg, tmp_path, now_ns=T0)


def test_engine_backfill_closes_the_gap_in_the_settlement_series(tmp_path):
    eng = _engine(tmp_path)
    eng.feed([Sample("m1/TotWhImp", t, _reg(t), "Wh") for t in range(T0, T0 + 900 * NS + 1, 10 * NS)])
    end = T0 + 4 * 900 * NS
    eng.tick(end + 60 * NS)                                           # the link has been down since T0 + 15 min
    hist = eng.history.intervals("r1", T0, end, eng.grid)
    assert [iv.quality for iv in hist] == ["good", "missing", "missing", "missing"]
    assert eng.backfill(_profile(T0, end)) == 3                        # the good one is kept as it was
    hist = eng.history.intervals("r1", T0, end, eng.grid)
    assert [iv.quality for iv in hist] == ["good"] * 4
    assert [iv.source for iv in hist] == ["register", "profile", "profile", "profile"]
    assert all(abs(iv.wh + 500.0) < 1e-3 for iv in hist)
    assert eng.backfill(_profile(T0, end)) == 0                        # a second read changes nothing
    eng.close()


def test_isps_of_an_activation_settled_during_the_outage_are_settled_again(tmp_path):
    eng = _engine(tmp_path)
    eng.feed([Sample("m1/TotWhImp", t, _reg(t), "Wh") for t in range(T0 - 3600 * NS, T0 + 900 * NS + 1, 10 * NS)])
    w = ActivationWindow("a1", "dso", ("r1",), "up", T0 + 900 * NS, T0 + 2 * 900 * NS, requested_w=500.0)
    eng.activation(w)
    first = [r for r in eng.tick(T0 + 3 * 900 * NS) if r.kind == "settlement"]
    assert [r.body["quality"] for r in first] == ["missing"]
    eng.backfill(_profile(T0 - 3600 * NS, T0 + 3 * 900 * NS))
    again = [r for r in eng.tick(T0 + 3 * 900 * NS + NS) if r.kind == "settlement"]
    assert [r.body["quality"] for r in again] == ["good"]
    assert again[0].body["resources"][0]["source"] == "profile"
    for r in first + again:                   # the outbox adds the envelope: check the body as it is published
        validate_message("gw/settlement", {"gateway": "gw1", "stream": "settlement", "seq": 1, "msg_id": "0" * 32,
                                           **r.body})
    eng.close()
