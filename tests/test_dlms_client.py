"""gridedge's DLMS client against the rig's meters (hil/dlms_sim.py) on real pseudo-terminals and TCP sockets:
the three security levels, block transfer and HDLC segmentation, selective access, the mode E start-up, and the
faults a field line shows (silence, broken frames, a dropped association, a repeated frame counter)."""
from __future__ import annotations

import time

import pytest

from gridedge.core.model import Detail
from gridedge.drivers.dlms import apdu as A
from gridedge.drivers.dlms import axdr, cosem
from gridedge.drivers.dlms.client import Meter, Settings
from gridedge.drivers.dlms.security import InvocationCounter, Keys
from gridedge.drivers.dlms.transport import SerialLine, TcpLine
from gridedge.drivers.modbus import DeviceError
from gridedge.hil.dlms_meter import SimMeter
from gridedge.hil.dlms_sim import DlmsLineSim, DlmsTcpSim

from .aio import arun

KEYS = Keys(bytes(range(16)), bytes(range(16, 32)))
CLOCK = A.Attribute(8, cosem.CLOCK_OBIS, 2)
ENERGY = A.Attribute(3, cosem.obis("1.0.1.8.0"), 2)
PROFILE = A.Attribute(7, cosem.obis("1.0.99.1.0"), 2)
NS = 10**9

SECURITY = {
    "none": (dict(), dict()),
    "low": (dict(authentication="low", password=b"LLS-pass"), dict(authentication="low", password=b"LLS-pass", client=32)),
    "high_gmac": (dict(authentication="high_gmac", keys=KEYS), dict(authentication="high_gmac", keys=KEYS, client=1)),
    "high_gmac_dedicated": (dict(authentication="high_gmac", keys=KEYS),
                            dict(authentication="high_gmac", keys=KEYS, client=1, dedicated_key=True)),
}


async def _line(sim: DlmsLineSim, **kw) -> SerialLine:
    line = SerialLine(sim.port, 9600, timeout_s=kw.pop("timeout_s", 1.0), **kw)
    await line.connect()
    return line


@pytest.mark.parametrize("level", sorted(SECURITY))
def test_reads_every_class_at_each_security_level_on_an_hdlc_line(level):
    meter_kw, client_kw = SECURITY[level]

    async def main():
        sim_meter = SimMeter(**meter_kw)
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            line = await _line(sim)
            m = Meter(Settings(physical=17, **client_kw))
            clock = axdr.DateTime.decode(await m.get(line, CLOCK))
            assert abs(clock.to_ns() - time.time_ns()) < 5 * NS and clock.deviation == -60
            values = await m.get_list(line, [ENERGY, A.Attribute(3, ENERGY.obis, 3),
                                             A.Attribute(5, cosem.obis("1.0.1.4.0"), 4),
                                             A.Attribute(4, cosem.obis("1.0.1.6.0"), 5),
                                             A.Attribute(1, cosem.obis("0.0.96.1.0"), 2),
                                             A.Attribute(3, cosem.obis("1.0.99.99.0"), 2)])
            assert values[0] == pytest.approx(sim_meter.registers()[ENERGY.obis][0], abs=2)
            assert values[1] == (0, 30) and values[2] == (0, 27)
            assert isinstance(values[3], bytes) and len(values[3]) == 12           # capture time
            assert values[4] == b"GRE0000001" and values[5] == A.AccessResult(4)   # object-undefined, not a failure
            if level.startswith("high"):
                assert m.assoc.server_title == sim_meter.system_title
            await m.release(line)
            await line.close()
    arun(main())


def test_load_profile_by_range_by_entry_in_blocks_and_segments():
    async def main():
        sim_meter = SimMeter()
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            sim.fault(17, "segmented")             # 32-byte HDLC segments, 128-byte GET blocks
            line = await _line(sim)
            m = Meter(Settings(physical=17))
            now = time.time_ns()
            day = await m.get(line, PROFILE, cosem.range_selection(now - 86400 * NS, now, -60))
            assert len(day) == 96
            times = [axdr.DateTime.decode(e[0]).to_ns() for e in day]
            assert times == sorted(times) and all(t % (900 * NS) == 0 for t in times)
            assert list(day[-1][2:]) == [x.value for x in sim_meter.entry(times[-1] // NS)[2:]]
            last3 = await m.get(line, PROFILE, cosem.entry_selection(len(sim_meter.entry_times()) - 2, 0))
            assert [axdr.DateTime.decode(e[0]).to_ns() for e in last3] == times[-3:]
            assert sim.bus.frames[17] > 100 and m.associations == 1          # many segments, one association
            await line.close()
    arun(main())


def test_several_meters_on_one_line_and_a_dead_one_answers_nothing():
    async def main():
        meters = {17: SimMeter(serial="A"), 18: SimMeter(serial="B"), 19: SimMeter(serial="C")}
        async with DlmsLineSim(meters, baudrate=None) as sim:
            sim.fault(18, "silent")
            line = await _line(sim, timeout_s=0.3)
            serials = []
            for addr in (17, 19):
                m = Meter(Settings(physical=addr))
                serials.append(await m.get(line, A.Attribute(1, cosem.obis("0.0.96.1.0"), 2)))
            assert serials == [b"A", b"C"]
            with pytest.raises(DeviceError) as ei:
                await Meter(Settings(physical=18)).get(line, CLOCK)
            assert ei.value.detail is Detail.TIMEOUT
            await line.close()
    arun(main())


def test_broken_frames_are_malformed_not_silence():
    async def main():
        async with DlmsLineSim({17: SimMeter()}, baudrate=None) as sim:
            sim.fault(17, "bad_crc")
            line = await _line(sim, timeout_s=0.3)
            with pytest.raises(DeviceError) as ei:
                await Meter(Settings(physical=17)).get(line, CLOCK)
            assert ei.value.detail is Detail.MALFORMED and "FCS" in str(ei.value)
            await line.close()
    arun(main())


def test_a_dropped_association_is_reopened_once():
    async def main():
        sim_meter = SimMeter()
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            line = await _line(sim)
            m = Meter(Settings(physical=17))
            await m.get(line, CLOCK)
            sim_meter.drop_next = True              # the meter forgets the association (and the HDLC link)
            assert isinstance(await m.get(line, ENERGY), int)
            assert m.associations == 2
            await line.close()
        async with DlmsTcpSim(sim_meter) as tcp:
            line = TcpLine("127.0.0.1", tcp.port)
            m = Meter(Settings())
            await m.get(line, CLOCK)
            sim_meter.drop_next = True
            assert isinstance(await m.get(line, ENERGY), int) and m.associations == 2
            await line.close()
    arun(main())


def test_a_repeated_frame_counter_is_refused():
    """The meter ciphers its answers with the same invocation counter again (a replay): never accepted."""
    async def main():
        sim_meter = SimMeter(authentication="high_gmac", keys=KEYS)
        async with DlmsTcpSim(sim_meter) as tcp:
            line = TcpLine("127.0.0.1", tcp.port)
            m = Meter(Settings(authentication="high_gmac", keys=KEYS, client=1))
            await m.get(line, CLOCK)
            sim_meter.repeat_counter = True
            with pytest.raises(DeviceError) as ei:
                await m.get(line, CLOCK)
            assert ei.value.detail is Detail.MALFORMED and "not above" in str(ei.value)
            await line.close()
    arun(main())


def test_wrong_secrets_are_refused_both_ways():
    async def main():
        async with DlmsTcpSim(SimMeter(authentication="low", password=b"right")) as tcp:
            line = TcpLine("127.0.0.1", tcp.port)
            with pytest.raises(DeviceError) as ei:
                await Meter(Settings(authentication="low", password=b"wrong", client=32)).get(line, CLOCK)
            assert ei.value.detail is Detail.DEVICE_EXCEPTION and "authentication failure" in str(ei.value)
            await line.close()
        async with DlmsTcpSim(SimMeter(authentication="high_gmac", keys=KEYS)) as tcp:
            line = TcpLine("127.0.0.1", tcp.port)
            wrong = Keys(KEYS.ek, bytes(16))                # the right EK, a wrong AK: the tag gives it away
            with pytest.raises(DeviceError) as ei:
                await Meter(Settings(authentication="high_gmac", keys=wrong, client=1)).get(line, CLOCK)
            assert "association failed" in str(ei.value)
            await line.close()
    arun(main())


def test_hdlc_over_tcp():
    async def main():
        async with DlmsTcpSim(SimMeter(), framing="hdlc", physical=33) as tcp:
            line = TcpLine("127.0.0.1", tcp.port)
            m = Meter(Settings(physical=33))
            assert len(await m.get(line, PROFILE, cosem.entry_selection(1, 4))) == 4
            await line.close()
    arun(main())


def test_mode_e_start_up_on_an_optical_probe():
    async def main():
        async with DlmsLineSim({17: SimMeter()}, baudrate=None, mode_e=True) as sim:
            line = await _line(sim, mode_e=True)
            m = Meter(Settings(physical=17))
            assert isinstance(await m.get(line, ENERGY), int)
            assert line.identification == "GRE\\2SIMMETER" and line.baudrate == 9600
            await m.release(line)                       # DISC: the meter falls back to IEC 62056-21
            assert sim.bus.iec21
            line.restart_needed = True
            assert isinstance(await Meter(Settings(physical=17)).get(line, ENERGY), int)
            await line.close()
    arun(main())


def test_invocation_counter_survives_a_restart(tmp_path):
    """A gateway that restarts continues above every counter it used: the meter's replay check never trips."""
    async def main():
        sim_meter = SimMeter(authentication="high_gmac", keys=KEYS)
        async with DlmsTcpSim(sim_meter) as tcp:
            used = []
            for _ in range(3):                          # three runs of the gateway, one counter file
                line = TcpLine("127.0.0.1", tcp.port)
                counter = InvocationCounter(tmp_path / "m.ic", reserve=5)
                m = Meter(Settings(authentication="high_gmac", keys=KEYS, client=1), counter=counter)
                await m.get(line, CLOCK)
                used.append(counter.value)
                await line.close()
            assert used == sorted(set(used))
    arun(main())
