"""Local status and metrics (issue 13): the Prometheus endpoint on loopback and `gridedge status` against a real
agent process, per-device health in the state message when an inverter stops answering, and the endpoint's own
bounds (methods, paths, request size, idle clients)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request

from hypothesis import given, settings, strategies as st

from gridedge.core.model import BlockLayout, Detail, Sample, SampleBlock, Validity
from gridedge.fleet.device_health import DeviceHealth
from gridedge.fleet.metrics import route
from gridedge.fleet.status import render, samples
from gridedge.hil.rig import Rig

from .aio import until
from .conftest import validate_message


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridedge", "status", *args], capture_output=True, text=True,
                          timeout=30)


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_metrics_status_and_device_health_when_the_inverter_stops_answering(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            url = f"http://127.0.0.1:{rig.metrics_port}/metrics"
            code, page = await asyncio.to_thread(get, url)
            m = samples(page)
            assert code == 200
            info = m["gridedge_info"][0][0]
            assert info["gateway"] == rig.gateway_id and info["version"] and len(info["config_sha256"]) == 64
            assert m["gridedge_uplink_connected"][0][1] == 1.0
            assert m["gridedge_device_up"] == [({"device": "inv1"}, 1.0)]
            assert m["gridedge_device_reads_total"][0][1] >= 1
            assert {lv[0]["role"] for lv in m["gridedge_certificate_expiry_timestamp_seconds"]} >= {"uplink.cert_file"}
            for name in ("gridedge_outbox_messages", "gridedge_outbox_oldest_age_seconds", "gridedge_control_cycles_total",
                         "gridedge_control_cycle_seconds", "gridedge_uplink_reconnects_total", "gridedge_commands_total"):
                assert name in m, name

            out = await asyncio.to_thread(status_cli, "-c", str(rig.config_path))
            lines = out.stdout.splitlines()
            assert lines[0].startswith(f"gridedge {info['version']} on gateway {rig.gateway_id}")
            assert "uplink         connected, 0 reconnects" in lines
            assert any(line.split()[:2] == ["inv1", "ok"] for line in lines), out.stdout
            # the rig's certificates live 30 days: within the warning, so it needs a look (exit 2)
            assert out.returncode == 2 and "needs a look: certificate uplink.cert_file ends " in out.stdout

            # the inverter goes away: the head-end sees it in a state message without asking
            t = time.monotonic()
            rig.sim.kill()
            state = await dso.wait_for(lambda: next((s.doc for s in dso.seen if s.t > t and s.topic == rig.prefix
                                                     + "state" and s.doc["device_health"]["inv1"]["status"]
                                                     == "failing"), None), 20, "a state with inv1 failing")
            inv1 = state["device_health"]["inv1"]
            assert inv1["errors"] >= 1 and inv1["last_error"] in ("comm_failure", "timeout") and inv1["last_good"]
            validate_message(rig.prefix + "state", state)

            def breaker_open():
                m = samples(get(url)[1])
                return m if ({"device": "inv1", "gridedge_device_breaker": "open"}, 1.0) in \
                    m["gridedge_device_breaker"] else None
            m = await until(lambda: asyncio.to_thread(breaker_open), 20, every=0.2)
            assert m["gridedge_device_up"] == [({"device": "inv1"}, 0.0)]
            assert m["gridedge_device_read_errors_total"][0][1] >= 1
            out = await asyncio.to_thread(status_cli, "--url", url)
            assert out.returncode == 2 and "device inv1 is failing" in out.stdout
            assert any(line.split()[:2] == ["inv1", "FAILING"] and " open " in line for line in out.stdout.splitlines())

            # the endpoint's bounds: other methods and paths, a head that never ends, an idle client
            port = rig.metrics_port
            assert (await raw(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
            assert (await raw(port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            assert (await raw(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")).endswith(b"Connection: close\r\n\r\n")
            assert await raw(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n") == b""
            idle = await asyncio.open_connection("127.0.0.1", port)   # says nothing: others are served meanwhile
            assert (await asyncio.to_thread(get, url))[0] == 200
            assert await asyncio.wait_for(idle[0].read(), 10) == b""  # and it is closed after its timeout
            idle[1].close()
            assert rig.agent.returncode is None
    run(scenario())


def test_status_says_when_no_agent_answers(tmp_path):
    out = status_cli("--url", "http://127.0.0.1:9/metrics")
    assert out.returncode == 1 and out.stderr.startswith("no agent answers at http://127.0.0.1:9/metrics")
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g"\n[uplink]\nbroker = "mqtt://x"\nallow_plaintext = true\n'
                   '[fleet.metrics]\nport = 0\n')
    out = status_cli("-c", str(cfg))
    assert out.returncode == 1 and "fleet.metrics.port is 0" in out.stderr


def test_device_health_from_what_devices_deliver():
    lay = BlockLayout("m1", ["W", "Hz"], ["W", "Hz"])
    h = DeviceHealth({"m1": object(), "inv1": object()})
    assert h.status("m1") == "unknown" and h.breaker("m1") is None
    h.observe([SampleBlock(lay, 1, [1.0, 50.0])])
    h.observe([SampleBlock.invalid(lay, 2, Detail.TIMEOUT)])
    assert h.status("m1") == "failing" and h.stats["m1"].last_error == "timeout" and h.changed.is_set()
    # a block with one good value is an answer; the failure of one point is not the device's
    h.observe([SampleBlock(lay, 3, [1.0, None], [None, (Validity.INVALID, Detail.NOT_IMPLEMENTED)])])
    assert h.status("m1") == "ok" and (h.stats["m1"].reads, h.stats["m1"].errors) == (3, 1)
    # loose samples: per device, good if any is; a device nobody configured is ignored
    h.observe([Sample("inv1/comm", 4, None, "", Validity.INVALID, Detail.COMM_FAILURE),
               Sample("inv1/W", 4, 5.0), Sample("ghost/W", 4, 1.0)])
    h.observe([Sample("inv1/comm", 5, None, "", Validity.INVALID, Detail.COMM_FAILURE)])
    s = h.summary()
    assert s["inv1"]["status"] == "failing" and s["inv1"]["last_error"] == "comm_failure" and s["inv1"]["reads"] == 2
    assert set(s) == {"m1", "inv1"} and not h.changed.is_set()


def test_render_flags_what_needs_a_look():
    page = "\n".join([
        'gridedge_info{version="1",gateway="g",config_sha256="ab",config_version="v1"} 1',
        "gridedge_config_local_edit 1", "gridedge_uplink_connected 0",
        'gridedge_device_reads_total{device="d"} 3', 'gridedge_device_up{device="d"} 1',
        f'gridedge_certificate_expiry_timestamp_seconds{{role="r",subject="s"}} {time.time() + 400 * 86400}', ""])
    text, look = render(samples(page))
    assert look == ["the configuration was edited locally", "the uplink is down"]
    assert "version v1; EDITED ON THE GATEWAY" in text and "d                ok" in text


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda m, p, r: m + b" " + p + b" " + r,
                                            st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b""]),
                                            st.sampled_from([b"/metrics", b"/metrics?x", b"/", b""]) | st.binary(max_size=20),
                                            st.binary(max_size=40)))
def test_fuzz_route(head):
    status, page, body = route(head)
    assert status[:3] in (b"200", b"404", b"405")
    assert page == (status == b"200 OK") and (not page or head.startswith((b"GET /metrics", b"HEAD /metrics")))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_status_of_a_foreign_page(page):
    """Whatever answers on the port, `gridedge status` says it cleanly (the parser raises ValueError at most)."""
    try:
        render(samples(page))
    except (ValueError, KeyError, IndexError, TypeError):
        pass
