"""The agent as systemd runs it: READY once connected and polling, WATCHDOG only while its loop runs and is healthy.

systemd itself is not PID 1 here, so the test plays its part: it listens on a notify socket of its own and hands
NOTIFY_SOCKET and WATCHDOG_USEC to a real agent process, exactly the protocol systemd speaks (sd_notify(3)).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import types

import pytest

from gridedge.hil.rig import Rig
from gridedge.sdnotify import Notifier
from gridedge.service import Service


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def datagrams(sock: socket.socket, until: float) -> list[str]:
    """Every datagram that arrives before the monotonic time `until`."""
    loop = asyncio.get_running_loop()
    got = []
    while (left := until - time.monotonic()) > 0:
        try:
            got.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), left)).decode())
        except asyncio.TimeoutError:
            break
    return got


async def next_datagram(sock: socket.socket, timeout: float) -> str:
    return (await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)).decode()


@pytest.fixture
def notify(tmp_path):
    """systemd's side: a datagram socket listening at a path (NOTIFY_SOCKET)."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


def test_ready_then_watchdog_and_a_stopped_loop_stops_the_petting(tmp_path, notify):
    path, sock = notify
    async def scenario():
        async with Rig(tmp_path / "rig", agent_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}) as rig:
            first = await next_datagram(sock, 30)
            assert first.startswith("READY=1\nSTATUS=connected, every device polled"), first
            t0 = time.monotonic()
            pets = []
            while len(pets) < 3:
                msg = await next_datagram(sock, 5)
                if msg == "WATCHDOG=1":
                    pets.append(time.monotonic())
            assert pets[-1] - t0 >= 1.5          # half of WatchdogSec (1 s) apart: never faster
            os.kill(rig.agent.pid, signal.SIGSTOP)   # a wedged process: its loop does not run
            try:
                await datagrams(sock, time.monotonic() + 0.3)  # what was in flight
                quiet = await datagrams(sock, time.monotonic() + 2.5)
            finally:
                os.kill(rig.agent.pid, signal.SIGCONT)
            assert quiet == []                    # systemd would now restart it
            assert await next_datagram(sock, 5) == "WATCHDOG=1"
            assert await rig.stop_agent() == 0
            assert "STOPPING=1" in await datagrams(sock, time.monotonic() + 2)
    run(scenario())


def test_an_unhealthy_agent_is_not_petted(notify):
    """A dead task or a control cycle that stopped: no WATCHDOG=1, one STATUS line saying why."""
    path, sock = notify
    async def scenario():
        dead = asyncio.create_task(asyncio.sleep(0), name="telemetry")
        await dead
        ctl = types.SimpleNamespace(cycles=1, _task=None, period=lambda: 0.2)
        agent = types.SimpleNamespace(image={"inv1/W": 1}, devices={"inv1": 0}, control=ctl,
                                      mqtt=types.SimpleNamespace(connected=asyncio.Event()))
        agent.mqtt.connected.set()
        svc = Service(agent, Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}))
        task = asyncio.create_task(svc.run([dead]))
        try:
            got = await datagrams(sock, time.monotonic() + 1.0)
        finally:
            task.cancel()
        assert got[0].startswith("READY=1")
        assert "WATCHDOG=1" not in got and got[1:] == ["STATUS=unhealthy: task telemetry ended"]
    run(scenario())


def test_ready_comes_after_60_s_even_offline():
    """A gateway whose uplink is down at boot still reads and stores: READY after READY_AFTER_S, never a restart
    loop for want of a broker."""
    from gridedge import service

    assert service.READY_AFTER_S < 120   # systemd/gridedge.service: TimeoutStartSec=120
    unit = open(os.path.join(os.path.dirname(__file__), "..", "systemd", "gridedge.service")).read()
    assert "TimeoutStartSec=120" in unit
