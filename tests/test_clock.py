"""The gateway's clock (edge/clock.py): the tools' outputs as recorded from real chrony, linuxptp and
systemd-timesyncd, the real tools where they run here (a chronyd of the test's own, a ptp4l pair in a network
namespace), hostile text, a step of the wall clock, and the flex energy series across a step."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.clock import (UNKNOWN, Clock, ClockSettings, parse_chronyc_tracking, parse_pmc, parse_timedatectl)
from gridedge.core.isp import IspGrid
from gridedge.core.model import Sample, TimeQuality
from gridedge.flex.metering import MeterSeries

from . import clocks
from .aio import arun, until

DATA = Path(__file__).parent / "data" / "clock"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_chronyc_synchronised_to_ntp():
    s = parse_chronyc_tracking(recorded("chronyc_tracking_ntp.txt"))
    assert s.synchronised and s.source == "chrony" and s.stratum == 3 and s.leap == "insert_pending"
    assert s.offset_s == pytest.approx(-0.000412873)
    assert s.error_s == pytest.approx(0.000412873 + 0.001190271 + 0.024133602 / 2)
    assert s.reference.startswith("C0A80101")


def test_chronyc_unsynchronised_and_local():
    assert not parse_chronyc_tracking(recorded("chronyc_tracking_unsynchronised.txt")).synchronised
    local = parse_chronyc_tracking(recorded("chronyc_tracking_local.txt"))
    assert local.synchronised and local.stratum == 8 and local.error_s == 0.0


def test_timedatectl_and_pmc():
    assert parse_timedatectl(recorded("timedatectl_show_synced.txt")).synchronised
    assert not parse_timedatectl(recorded("timedatectl_show_unsynced.txt")).synchronised
    ptp = parse_pmc(recorded("pmc_time_status_synced.txt"))
    assert ptp.synchronised and ptp.offset_s == pytest.approx(441e-9) and "86923a.fffe.d4afa3" in ptp.reference
    assert not parse_pmc(recorded("pmc_time_status_listening.txt")).synchronised


def test_time_quality_the_gateway_stamps():
    clock = Clock(ClockSettings(max_error_ms=20.0))
    assert clock.quality() == TimeQuality("gateway", False, leap_known=False)       # nobody said: not synchronised
    clock.update(parse_chronyc_tracking(recorded("chronyc_tracking_ntp.txt")))
    q = clock.quality()
    assert q.synchronised and q.accuracy == 6 and q.leap == "insert_pending"          # error 13.7 ms < 2**-6 s
    clock.settings = ClockSettings(max_error_ms=10.0)
    clock.update(clock.status)
    assert not clock.quality().synchronised                                           # worse than allowed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600) | st.sampled_from([recorded(n) for n in sorted(p.name for p in DATA.iterdir())])
       .flatmap(lambda t: st.integers(0, len(t)).map(lambda i: t[:i] + "\u0000\n: x" + t[i:])))
def test_parsers_take_any_text(text):
    for parse in (parse_chronyc_tracking, parse_timedatectl, parse_pmc):
        try:
            s = parse(text)
        except ValueError:
            continue
        assert isinstance(s.synchronised, bool)
        assert all(ch.isprintable() for ch in s.reference)


@pytest.mark.skipif(clocks.chrony_missing() is not None, reason=str(clocks.chrony_missing()))
@pytest.mark.parametrize("synchronised", [False, True])
def test_a_real_chronyd(tmp_path, synchronised):
    with clocks.chronyd(tmp_path, synchronised) as sock:
        clock = Clock(ClockSettings(source="chrony", chrony_socket=sock))
        status = arun(clock.read())
    assert status.source == "chrony" and status.synchronised is synchronised
    assert status.stratum == (8 if synchronised else 0)


@pytest.mark.skipif(clocks.ptp_missing() is not None, reason=str(clocks.ptp_missing()))
def test_a_real_ptp4l_slave(tmp_path):
    with clocks.ptp_pair(tmp_path) as sock:
        clock = Clock(ClockSettings(source="ptp", ptp_socket=sock))

        async def synced():
            return (await clock.read()).synchronised
        arun(until(synced, 40, every=0.5), 45)
        status = arun(clock.read())
    assert status.source == "ptp" and status.reference.startswith("PTP ")


def test_no_tool_answers_means_not_synchronised(tmp_path):
    """timedatectl needs systemd as PID 1 (not in a container): it fails, and so does a chronyc without a daemon;
    the gateway then says its clock is not synchronised rather than vouch for it."""
    for source, extra in (("timedatectl", {}), ("chrony", {"chrony_socket": str(tmp_path / "none.sock")})):
        status = arun(Clock(ClockSettings(source=source, **extra)).read())
        assert status == UNKNOWN or status.source == source
    assert arun(Clock(ClockSettings(source="none")).read()) == UNKNOWN


class Wall:
    def __init__(self):
        self.mono = 1_000_000_000
        self.offset = 1_790_000_000 * 10**9

    def wall(self):
        return self.offset + self.mono


def test_a_step_is_seen_and_flagged_for_a_while():
    """The machine's clock is not a test's to step: a wall clock of the test's own, against a monotonic one."""
    t = Wall()
    clock = Clock(ClockSettings(step_ms=100, step_hold_s=30), wall=t.wall, mono=lambda: t.mono)
    t.mono += 10**9
    assert not clock.quality().step
    t.offset -= 3 * 10**9                         # the wall clock goes back 3 s
    t.mono += 10**9
    assert clock.quality().step and clock.steps == 1
    t.mono += 20 * 10**9
    t.offset += 50 * 10**6                        # 50 ms of slewing: not a step
    assert clock.quality().step                   # still within the hold
    t.mono += 11 * 10**9
    assert not clock.quality().step and clock.steps == 1


def test_a_step_back_never_makes_a_negative_interval_in_the_isp_series():
    """A meter's samples stamped with a wall clock that goes back 40 s in the middle of an ISP: the samples that
    repeat times already seen are dropped, every interval's energy and coverage stay positive and the ISP closes
    with what the meter really delivered (5 kW for the part before the step, then again from where it left)."""
    grid = IspGrid(1)
    series = MeterSeries("site", grid, power="m/W", max_gap_s=5.0)
    t0 = 1_790_000_040 * 10**9 - (1_790_000_040 * 10**9) % grid.ns
    ts = [t0 + i * 10**9 for i in range(30)] + [t0 + (i - 40) * 10**9 + 30 * 10**9 for i in range(0, 120)]
    for t in ts:
        series.feed(Sample("m/W", t, 5000.0, "W"))
    closed = series.close(t0 + 3 * grid.ns)
    assert closed and series.stats["out_of_order"] == 40
    for e in closed:
        assert e.wh is None or e.wh >= 0
        assert 0 <= e.completeness <= 1.0 + 1e-9
    first = closed[0]
    assert first.start_ns == t0 and first.wh == pytest.approx(5000 * 59 / 3600, rel=0.02)


def test_every_block_the_gateway_stamps_says_how_good_its_clock_is():
    """The agent's encoding: a block without a time quality of its own gets the gateway clock's."""
    import json

    from gridedge import telemetry
    from gridedge.core.model import BlockLayout, SampleBlock

    gw = TimeQuality("gateway", False, leap_known=False, step=True)
    dev = TimeQuality("device", True, accuracy=20)
    lay = BlockLayout("pmu1", ["F"], ["Hz"])
    own = json.loads(telemetry.encode_block(SampleBlock(lay, 5, [50.0], tq=dev), gw))
    stamped = json.loads(telemetry.encode_block(SampleBlock(lay, 5, [50.0]), gw))
    loose = [json.loads(b) for b in telemetry.encode_samples([Sample("inv/W", 5, 1.0, "W")], gw)]
    assert own["tq"] == {"src": "device", "sync": True, "acc": 20}
    assert stamped["tq"] == loose[0]["tq"] == {"src": "gateway", "sync": False, "lsk": False, "step": True}
    doc = {"schema": "gridedge.telemetry/2", "gateway": "gw", "stream": "telemetry", "seq": 0, "msg_id": "0" * 32,
           "ts": "2026-12-07T00:00:00.000Z", "blocks": [own, stamped] + loose}
    samples = list(telemetry.samples_of(doc))
    assert [s.tq for s in samples] == [dev, gw, gw]
    for bad in ({"src": "gateway"}, {"src": "x", "sync": True}, {"src": "gateway", "sync": True, "fail": False},
                {"src": "gateway", "sync": 1}, {"src": "device", "sync": True, "acc": 25}):
        doc["blocks"] = [dict(own, tq=bad)]
        with pytest.raises(ValueError):
            list(telemetry.samples_of(doc))
    asyncio.get_event_loop_policy()


@pytest.mark.parametrize("form, report", [("blocks", "all"), ("layouts", "all"), ("layouts", "exception")])
def test_time_quality_travels_in_every_telemetry_form(tmp_path, form, report):
    """Contract 3.1's forms (edge/telemetry_writer.py): a full block, a layout block, a by-exception block all carry
    the gateway clock's tq, or the device's own where it has one, and the head-end's decoder gives it back."""
    from gridedge.config_telemetry import TELEMETRY, build_telemetry
    from gridedge.core.model import BlockLayout, SampleBlock
    from gridedge.core.schema import validate
    from gridedge.headend import HeadEnd
    from gridedge.outbox import Outbox
    from gridedge.telemetry_writer import TelemetryWriter

    from .test_thrift import receive

    gw = TimeQuality("gateway", False, leap_known=False, step=True)
    dev = TimeQuality("device", True, accuracy=20)
    w = TelemetryWriter(build_telemetry(validate(TELEMETRY, {"form": form, "report": report})[0]))
    lay = BlockLayout("pmu1", ["F", "V"], ["Hz", "V"])
    blocks = [SampleBlock(lay, 10**18, [50.0, 230.0], tq=dev), SampleBlock(BlockLayout("m1", ["W"], ["W"]), 10**18,
                                                                          [5.0])]
    frags = [w.block(b, tq=gw)[0] for b in blocks] + w.samples([Sample("inv1/W", 10**18, 1.0, "W")], tq=gw)[0]
    with Outbox(tmp_path / "o.sqlite", gateway_id="gw-1") as box:
        items = [("layout", "p/" + suffix, body, "event") for suffix, body in w.take_layouts()]
        items.append(("telemetry", "p/telemetry", w.body("2026-12-07T00:00:00Z", frags, 4), "telemetry"))
        got = receive(box.append_many(items), HeadEnd())
    assert {s.point: s.tq for s in got} == {"pmu1/F": dev, "pmu1/V": dev, "m1/W": gw, "inv1/W": gw}
