"""OpcUaDevice against the real OpcUaSubstationSim (asyncua server and client on loopback)."""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from asyncua import ua
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.drivers.opcua import OpcUaDevice, OpcUaError, quality, to_value, ts_ns, unit_for
from gridedge.hil.opcua_certs import make_opcua_pki
from gridedge.hil.opcua_server import DBPOS_OFF, DBPOS_ON, OpcUaSubstationSim, ServerSecurity
from gridedge.core.model import Detail, Validity

from . import aio
from .aio import until

FEEDERS = 40    # 5 points per feeder + Hz = 201 monitored items


arun = functools.partial(aio.arun, timeout=40.0)


class ThreadedSim:
    """One simulator on its own event loop thread, shared by the tests (asyncua takes ~1.5 s to start)."""

    def __init__(self, **kw):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim: OpcUaSubstationSim = self.call(lambda: OpcUaSubstationSim(**kw))
        self.endpoint = asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(30)

    def call(self, fn, *args):
        """Run fn(*args) on the sim's loop and return its result (simulator state is not thread-safe)."""
        fut = asyncio.run_coroutine_threadsafe(self._call(fn, *args), self.loop)
        return fut.result(10)

    @staticmethod
    async def _call(fn, *args):
        return fn(*args)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def shared():
    s = ThreadedSim(feeders=FEEDERS, period_s=0.1, seed=1)
    yield s
    s.close()


class Collector:
    """A run() sink that keeps every sample, per point."""

    def __init__(self):
        self.samples = []

    def __call__(self, batch):
        self.samples.extend(batch)

    def of(self, point):
        return [s for s in self.samples if s.point.endswith("/" + point)]

    def last(self, point):
        got = self.of(point)
        return got[-1] if got else None


async def started(dev: OpcUaDevice, connect: bool = True):
    col = Collector()
    if connect:
        await dev.connect()
    task = asyncio.create_task(dev.run(col))
    return col, task


async def stopped(dev: OpcUaDevice, task):
    await dev.close()
    await asyncio.wait_for(task, 10)   # run() returns after close()


# ---------------------------------------------------------------------- shared server

def test_many_items_in_one_subscription(shared):
    points = shared.call(shared.sim.points)
    assert len(points) == FEEDERS * 5 + 1

    async def main():
        dev = OpcUaDevice("sub1", shared.endpoint, points, publishing_ms=100)
        col, task = await started(dev)
        try:
            await until(lambda: all((s := col.last(p)) is not None and s.good for p in points), 15)
            # exactly one subscription, carrying every item: on the server and on the client
            assert shared.call(shared.sim.subscription_count) == 1
            assert shared.call(shared.sim.monitored_item_count) == len(points)
            assert len(dev.subscription_ids()) == 1
            first = col.last("F1.W").value
            await until(lambda: col.last("F1.W").value != first, 5)          # values keep changing
            image = {s.point: s for s in await dev.poll()}
            assert len(image) == len(points) and all(s.good for s in image.values())
            w, v, a, hz, pos = (image[f"sub1/{n}"] for n in ("F7.W", "F7.PhVphA", "F7.A", "Hz", "F7.XCBR1.Pos"))
            assert (w.unit, v.unit, a.unit, hz.unit, image["sub1/F7.VAr"].unit) == ("W", "V", "A", "Hz", "var")
            assert 50e3 < w.value < 500e3 and 200 < v.value < 240 and 49 < hz.value < 51 and pos.value == DBPOS_ON
            assert abs(w.ts_ns - time.time_ns()) < 60e9        # source timestamps are UTC ns, not local time
        finally:
            await stopped(dev, task)
        assert shared.call(shared.sim.subscription_count) == 0   # close() removes the subscription on the server

    arun(main())


def test_breaker_toggle_arrives_as_event(shared):
    points = shared.call(shared.sim.points)

    async def main():
        dev = OpcUaDevice("sub1", shared.endpoint, points, publishing_ms=100)
        assert "F3.XCBR1.Pos" in dev.status_points and "F3.W" not in dev.status_points
        col, task = await started(dev)
        try:
            await until(lambda: (s := col.last("F3.XCBR1.Pos")) is not None and s.value == DBPOS_ON)
            n_before = len(col.of("F3.XCBR1.Pos"))
            t_open = time.time_ns()
            shared.call(shared.sim.set_breaker, 3, False)
            s = await until(lambda: (s := col.last("F3.XCBR1.Pos")) is not None and s.value == DBPOS_OFF and s)
            assert s.good and s.ts_ns >= t_open - 50_000_000       # stamped at the change, by the source
            assert len(col.of("F3.XCBR1.Pos")) == n_before + 1      # one sample per change, not per tick
            await until(lambda: col.last("F3.W").value == 0.0)      # the feeder is de-energised
            shared.call(shared.sim.set_breaker, 3, True)
            await until(lambda: col.last("F3.XCBR1.Pos").value == DBPOS_ON)
        finally:
            shared.call(shared.sim.set_breaker, 3, True)
            await stopped(dev, task)

    arun(main())


def test_status_codes_become_quality(shared):
    points = {k: v for k, v in shared.call(shared.sim.points).items() if k.startswith("F2.")}

    async def main():
        dev = OpcUaDevice("sub1", shared.endpoint, points, publishing_ms=100)
        col, task = await started(dev)
        try:
            await until(lambda: (s := col.last("F2.W")) is not None and s.good)
            shared.call(shared.sim.set_status, 2, ua.StatusCodes.BadSensorFailure)
            s = await until(lambda: (s := col.last("F2.W")) and s.validity is Validity.INVALID and s)
            assert s.detail is Detail.DEVICE_EXCEPTION and s.value is None and s.unit == "W"
            shared.call(shared.sim.set_status, 2, ua.StatusCodes.UncertainLastUsableValue)
            s = await until(lambda: (s := col.last("F2.W")) and s.validity is Validity.QUESTIONABLE and s)
            assert s.detail is Detail.OLD_DATA and isinstance(s.value, float)
            shared.call(shared.sim.set_status, 2, ua.StatusCodes.Good)
            await until(lambda: col.last("F2.W").good)
        finally:
            shared.call(shared.sim.set_status, 2, ua.StatusCodes.Good)
            await stopped(dev, task)

    arun(main())


def test_unknown_node_is_bad_reference_and_others_flow(shared):
    points = {"F1.W": shared.call(shared.sim.points)["F1.W"], "Ghost.W": "ns=2;s=NoSuchNode"}

    async def main():
        dev = OpcUaDevice("sub1", shared.endpoint, points, publishing_ms=100)
        col, task = await started(dev)
        try:
            await until(lambda: (s := col.last("F1.W")) is not None and s.good)
            ghost = {s.point: s for s in await dev.poll()}["sub1/Ghost.W"]
            assert ghost.validity is Validity.INVALID and ghost.detail is Detail.BAD_REFERENCE
            assert dev.rejected == {"Ghost.W": "BadNodeIdUnknown"}
        finally:
            await stopped(dev, task)

    arun(main())


# ---------------------------------------------------------------------- own servers

def test_server_restart_reconnects_and_resubscribes():
    async def main():
        sim = OpcUaSubstationSim(feeders=4, period_s=0.1, seed=2)
        ep = await sim.start()
        points = sim.points()
        dev = OpcUaDevice("rtu", ep, points, publishing_ms=100, backoff_s=(0.2, 2.0))
        col, task = await started(dev)
        try:
            await until(lambda: all((s := col.last(p)) is not None and s.good for p in points))
            sub_before = dev.subscription_ids()
            await sim.stop()
            await until(lambda: all(col.last(p).validity is Validity.INVALID for p in points))
            assert {col.last(p).detail for p in points} == {Detail.COMM_FAILURE}
            assert all(s.validity is Validity.INVALID for s in await dev.poll())
            failures = dev.connect_failures
            await until(lambda: dev.connect_failures >= failures + 2)   # several retries fail during the outage
            t_back = time.time_ns()
            assert await sim.start() == ep    # same port
            await asyncio.wait_for(dev.connected.wait(), 15)
            await until(lambda: all((s := col.last(p)).good and s.ts_ns >= t_back for p in points), 10)
            # INVALID exactly once per point during the outage, however many retries there were
            for p in points:
                assert sum(s.validity is Validity.INVALID for s in col.of(p)) == 1, p
            assert dev.reconnects == 1 and sim.subscription_count() == 1
            assert len(sub_before) == 1 and len(dev.subscription_ids()) == 1
            t_flow = col.last("F1.W").ts_ns
            await until(lambda: col.last("F1.W").ts_ns > t_flow)   # values flow again on the new subscription
        finally:
            await stopped(dev, task)
            await sim.stop()

    arun(main())


def test_sign_and_encrypt_and_untrusted_client_refused(tmp_path):
    pki = make_opcua_pki(tmp_path)

    async def main():
        sim = OpcUaSubstationSim(feeders=2, security=ServerSecurity(pki.server_cert, pki.server_key,
                                                                    trust_dir=pki.trusted_dir))
        ep = await sim.start()
        points = sim.points()
        try:
            good = ("Basic256Sha256", "SignAndEncrypt", pki.client_cert, pki.client_key, pki.server_cert)
            dev = OpcUaDevice("sec", ep, points, security=good, publishing_ms=100)
            col, task = await started(dev)
            try:
                await until(lambda: all((s := col.last(p)) is not None and s.good for p in points))
                assert dev._session.client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            finally:
                await stopped(dev, task)
            # a client certificate from an untrusted CA is refused by the server's trust store
            rogue = ("Basic256Sha256", "SignAndEncrypt", pki.rogue_cert, pki.rogue_key, pki.server_cert)
            dev = OpcUaDevice("sec", ep, points, security=rogue)
            with pytest.raises(OpcUaError, match="BadCertificateUntrusted"):
                await dev.connect()
            await dev.close()
            # no security against a server that requires it: a clear refusal
            dev = OpcUaDevice("sec", ep, points)
            with pytest.raises(OpcUaError, match="rejected"):
                await dev.connect()
            await dev.close()
        finally:
            await sim.stop()

    arun(main())


def test_bad_endpoint_is_a_clear_error_not_a_crash():
    async def main():
        import socket
        with socket.socket() as s:       # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dev = OpcUaDevice("x", f"opc.tcp://127.0.0.1:{port}/", {"W": "ns=2;s=W"}, timeout_s=1.0,
                          backoff_s=(0.1, 0.2))
        with pytest.raises(OpcUaError) as err:
            await dev.connect()
        assert err.value.detail is Detail.COMM_FAILURE and str(port) in str(err.value)
        polled = await dev.poll()        # keeps retrying in the background; the image says why there is no value
        assert [(s.point, s.validity, s.detail, s.unit) for s in polled] == \
            [("x/W", Validity.INVALID, Detail.COMM_FAILURE, "W")]
        failures = dev.connect_failures
        await until(lambda: dev.connect_failures >= failures + 2, 5)
        await dev.close()

        # a peer that accepts TCP but never speaks OPC UA: TIMEOUT, within the configured time
        async def mute(reader, writer):
            await reader.read(100000)
        srv = await asyncio.start_server(mute, "127.0.0.1", 0)
        mport = srv.sockets[0].getsockname()[1]
        dev = OpcUaDevice("x", f"opc.tcp://127.0.0.1:{mport}/", {"W": "i=2258"}, timeout_s=0.3)
        with pytest.raises(OpcUaError) as err:
            await dev.connect()
        assert err.value.detail is Detail.TIMEOUT
        await dev.close()
        srv.close()

        with pytest.raises(OpcUaError, match="read-only"):
            await dev.write_points({"W": 1.0})

    arun(main())


def test_ec_key_is_refused_with_a_hint(tmp_path):
    from gridedge.hil.pki import make_pki
    pki = make_pki(tmp_path)            # EC P-256: fine for MQTT/TLS, not for Basic256Sha256
    cert, key = pki.client("gw")

    async def main():
        dev = OpcUaDevice("d", "opc.tcp://127.0.0.1:1/", {"W": "i=2258"},
                          security=("Basic256Sha256", "SignAndEncrypt", cert, key, None))
        with pytest.raises(OpcUaError, match="needs an RSA key") as err:
            await dev.connect()
        assert err.value.detail is Detail.BAD_REFERENCE
        await dev.close()

    arun(main())


@pytest.mark.parametrize("kwargs, match", [
    (dict(endpoint="http://x:1/"), "opc.tcp"),
    (dict(endpoint="opc.tcp://:4840"), "opc.tcp"),
    (dict(endpoint="opc.tcp://h:99999/"), "port"),
    (dict(nodes={}), "non-empty"),
    (dict(nodes={"W": "ns=2;q=oops"}), "invalid node id"),
    (dict(nodes={"a/b": "i=1"}), "point names"),
    (dict(security=("Basic128Rsa15", "SignAndEncrypt", "c", "k", None)), "unsupported security policy"),
    (dict(security=("Basic256Sha256", "Encrypt", "c", "k", None)), "unsupported security mode"),
    (dict(security=("Basic256Sha256", "SignAndEncrypt", "/nonexistent.der", "k", None)), "no such file"),
    (dict(publishing_ms=0), "publishing_ms"),
])
def test_bad_config_is_refused_clearly(kwargs, match):
    args = dict(device_id="d", endpoint="opc.tcp://127.0.0.1:4840/", nodes={"W": "ns=2;s=W"}) | kwargs
    with pytest.raises(ValueError, match=match):
        OpcUaDevice(args.pop("device_id"), args.pop("endpoint"), args.pop("nodes"), **args)


def test_cli_prints_ready_and_serves():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gridedge.hil.opcua_server", "--port", str(port),
                             "--feeders", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line == f"READY opc.tcp://127.0.0.1:{port}/gridedge/rtu"

        async def read():
            dev = OpcUaDevice("cli", line.split()[1], {"F2.PhVphA": "ns=2;s=F2.MMXU1.PhV.phsA"})
            await dev.connect()
            try:
                return await until(lambda: dev.latest.get("F2.PhVphA"))
            finally:
                await dev.close()

        s = arun(read(), timeout=20)
        assert s.good and 200 < s.value < 240
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


# ---------------------------------------------------------------------- pure mappings (fuzz)

def test_quality_examples():
    S = ua.StatusCodes
    assert quality(S.Good) == (Validity.GOOD, Detail.NONE)
    assert quality(None) == (Validity.GOOD, Detail.NONE)
    assert quality(S.GoodLocalOverride) == (Validity.GOOD, Detail.SUBSTITUTED)
    assert quality(S.UncertainSubstituteValue) == (Validity.QUESTIONABLE, Detail.SUBSTITUTED)
    assert quality(S.UncertainEngineeringUnitsExceeded) == (Validity.QUESTIONABLE, Detail.OUT_OF_RANGE)
    assert quality(S.BadNotConnected) == (Validity.INVALID, Detail.COMM_FAILURE)
    assert quality(S.BadTimeout) == (Validity.INVALID, Detail.TIMEOUT)
    assert quality(ua.StatusCode(S.BadNodeIdUnknown)) == (Validity.INVALID, Detail.BAD_REFERENCE)
    assert quality(S.BadOutOfRange | 0x0400) == (Validity.INVALID, Detail.OUT_OF_RANGE)   # info bits ignored
    assert quality(S.BadDeviceFailure) == (Validity.INVALID, Detail.DEVICE_EXCEPTION)
    assert unit_for("F1.VAr") == "var" and unit_for("Hz") == "Hz" and unit_for("F1.XCBR1.Pos") == ""


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_quality_fuzz(code):
    validity, detail = quality(code)
    severity = code >> 30
    assert validity is {0: Validity.GOOD, 1: Validity.QUESTIONABLE}.get(severity, Validity.INVALID)
    assert isinstance(detail, Detail)
    assert (detail is Detail.NONE) or validity is not Validity.GOOD or detail is Detail.SUBSTITUTED


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
                 st.lists(st.floats()), st.datetimes()))
def test_to_value_fuzz(v):
    """Numbers and text pass (bool as 0/1), non-finite floats and everything else do not."""
    scalar = isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v))
    want = (True, int(v) if isinstance(v, bool) else v) if scalar else (False, None)
    got = to_value(v)
    assert got == want and type(got[1]) is type(want[1])


@settings(max_examples=200, deadline=None)
@given(st.datetimes(timezones=st.just(dt.timezone.utc)) | st.datetimes(), st.integers(min_value=1, max_value=2**62))
def test_ts_ns_fuzz(d, fallback):
    got = ts_ns(d, fallback)
    ref = d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
    expect = (ref - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) * 1000
    if expect > 0:
        assert got == expect     # exact to the microsecond (asyncua's DateTime resolution)
    else:
        assert got == fallback


NODE_IDS = st.one_of(
    st.builds("i={}".format, st.integers(0, 2**32 - 1)),
    st.builds("ns={};i={}".format, st.integers(0, 65535), st.integers(0, 2**32 - 1)),
    st.builds("ns={};s={}".format, st.integers(0, 65535), st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True)))
POINTS = st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.just(True), POINTS, NODE_IDS) | st.tuples(st.just(False), st.text(max_size=40),
                                                                NODE_IDS | st.text(max_size=40)))
def test_node_id_config_fuzz(case):
    """Any text as point name / node id: accepted, or refused with ValueError, never anything else; a well-formed
    point and node id (the first kind drawn) is always accepted."""
    well_formed, point, nid = case
    try:
        dev = OpcUaDevice("d", "opc.tcp://127.0.0.1:4840/", {point: nid})
    except ValueError:
        assert not well_formed, (point, nid)
        return
    assert list(dev.nodes) == [point]
