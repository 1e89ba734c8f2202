"""A gateway behind a real network path: Linux network namespaces joined by veth pairs, with delay, loss and a
blackhole applied per packet on the path.

Why: the TCP proxy (faultproxy.py) ends the agent's TCP connection, so it can only model a lossy link as stalls.
Here the agent's own kernel sends every segment across the path: lost segments are retransmitted by TCP, delay
stretches the handshakes and the keepalives, and a blackhole leaves a half-open connection that only the agent's
MQTT keepalive can find, as in the field.

    this namespace (broker, DSO)  host ==veth== m1 [path ns] m0 ==veth== wan  gateway ns (agent, inverter sim)

In the path namespace the two veth ends are bridged. Where the kernel has tc netem (sch_netem), the kernel bridges
them and netem delays and drops on both ends. Where it has not (many CI and VM kernels), a userspace bridge does the
same on raw packet sockets: `python -m gridedge.hil.netns bridge m0 m1`, driven by JSON lines on its stdin.
Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2 (`ip`, `tc`).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections import deque

__all__ = ["WanPath", "parse_settings", "unavailable"]

_SOL_PACKET, _PACKET_VNET_HDR, _ETH_P_ALL = 263, 15, 3
_FRAME_MAX = 65536 + 256        # a GSO frame with its virtio-net header
_KNOBS = {"latency_s": (0.0, 60.0), "loss": (0.0, 1.0)}


def unavailable() -> str | None:
    """Why the path cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


def parse_settings(line: str | bytes) -> dict:
    """One control line of the bridge: a JSON object with any of latency_s (0..60), loss (0..1), blackhole (bool).
    Raises ValueError on anything else, so a bad line changes nothing."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("settings must be a JSON object")
    out = {}
    for key, value in doc.items():
        if key == "blackhole":
            if not isinstance(value, bool):
                raise ValueError(f"blackhole must be true or false, got {value!r}")
        elif key in _KNOBS:
            lo, hi = _KNOBS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"{key} must be a number in {lo:g}..{hi:g}, got {value!r}")
            value = float(value)
        else:
            raise ValueError(f"unknown setting {key[:40]!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------- the userspace bridge (runs in the path namespace)

class _Bridge:
    """Forwards every frame between two interfaces, after `latency_s`, unless lost (`loss`) or blackholed.

    PACKET_VNET_HDR carries the kernel's checksum-offload and segmentation metadata with each frame, so a frame
    whose TCP checksum the sender left to the NIC arrives as valid on the other side."""

    def __init__(self, if_a: str, if_b: str, seed: int | None = None) -> None:
        self.latency_s, self.loss, self.blackhole = 0.0, 0.0, False
        self.counts = {"passed": 0, "lost": 0, "blackholed": 0}
        self.rng = random.Random(seed)
        self.socks = [self._open(if_a), self._open(if_b)]
        self.queues: list[deque[tuple[float, bytes]]] = [deque(), deque()]   # per direction, towards socks[i]

    @staticmethod
    def _open(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        s.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
        s.bind((ifname, 0))
        s.setblocking(False)
        return s

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.socks[0].fileno(), self._receive, 0)
        loop.add_reader(self.socks[1].fileno(), self._receive, 1)

    def _receive(self, src: int) -> None:
        dst = 1 - src
        queue = self.queues[dst]
        while True:
            try:
                frame, addr = self.socks[src].recvfrom(_FRAME_MAX)
            except BlockingIOError:
                return
            if addr[2] == socket.PACKET_OUTGOING:      # our own transmissions, seen on the way out
                continue
            if self.blackhole:
                self.counts["blackholed"] += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.counts["lost"] += 1
                continue
            due = self.loop.time() + self.latency_s
            if queue:
                due = max(due, queue[-1][0])            # a shorter delay set meanwhile must not reorder frames
            else:
                self.loop.call_at(due, self._deliver, dst)
            queue.append((due, frame))

    def _deliver(self, dst: int) -> None:
        queue, now = self.queues[dst], self.loop.time()
        while queue and queue[0][0] <= now:
            frame = queue.popleft()[1]
            try:
                self.socks[dst].send(frame)
                self.counts["passed"] += 1
            except OSError:                             # a full or downed interface drops, like a real one
                self.counts["lost"] += 1
        if queue:
            self.loop.call_at(queue[0][0], self._deliver, dst)

    def apply(self, settings: dict) -> None:
        for key, value in settings.items():
            setattr(self, key, value)


async def _bridge_main(if_a: str, if_b: str, seed: int | None) -> None:
    loop = asyncio.get_running_loop()
    bridge = _Bridge(if_a, if_b, seed)
    bridge.start(loop)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("READY", flush=True)
    while line := await reader.readline():
        try:
            bridge.apply(parse_settings(line))
            reply = dict(bridge.counts, latency_s=bridge.latency_s, loss=bridge.loss, blackhole=bridge.blackhole)
        except ValueError as exc:
            reply = {"error": str(exc)}
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------- the topology (runs in the caller's namespace)

def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.0.0.0/8 that no address of this namespace is in (parallel runs each take their own)."""
    used = [ipaddress.ip_interface(w).network for line in _run("ip", "-4", "-o", "addr").splitlines()
            for w in line.split()[3:4]]
    for _ in range(100):
        a, b, c = random.randint(64, 254), random.randint(0, 255), random.randrange(0, 256, 4)
        net = ipaddress.ip_network(f"10.{a}.{b}.{c}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /30 in 10.0.0.0/8 for the path")


class WanPath:
    """The gateway namespace and its impaired path to this namespace. `exec_prefix` runs a command in the gateway
    namespace; `broker_host` is this end's address (bind the broker to it), `gateway_host` the far end's."""

    def __init__(self, *, seed: int | None = None, netem: bool | None = None) -> None:
        """netem: True/False forces the kernel or the userspace path; None takes netem where the kernel has it."""
        tag = uuid.uuid4().hex[:8]
        self.gateway_ns, self.path_ns = f"gridedge-gw-{tag}", f"gridedge-path-{tag}"
        self.host_if = f"ge{tag}"                       # at most 15 characters (IFNAMSIZ)
        self.exec_prefix = ("ip", "netns", "exec", self.gateway_ns)
        self.seed, self.netem = seed, netem
        self.broker_host = self.gateway_host = ""
        self._bridge: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Build the namespaces and the path; on any failure, remove what was built."""
        try:
            await asyncio.to_thread(self._build)
            if self.netem is None:
                self.netem = await asyncio.to_thread(self._kernel_has_netem)
            if self.netem:
                await asyncio.to_thread(self._kernel_bridge)
            else:
                await self._start_userspace_bridge()
        except BaseException:
            await self.stop()
            raise

    def _build(self) -> None:
        net = _free_subnet()
        host, gw = (str(a) for a in net.hosts())
        gns, pns = self.gateway_ns, self.path_ns
        _run("ip", "netns", "add", gns)
        _run("ip", "netns", "add", pns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "m1", "netns", pns)
        _run("ip", "-n", pns, "link", "add", "m0", "type", "veth", "peer", "name", "wan", "netns", gns)
        for ns, dev in ((None, self.host_if), (pns, "m0"), (pns, "m1"), (gns, "wan")):
            _run("ip", *(("-n", ns) if ns else ()), "link", "set", dev, "addrgenmode", "none", "up")   # IPv4 only
        _run("ip", "addr", "add", f"{host}/30", "dev", self.host_if)
        _run("ip", "-n", gns, "addr", "add", f"{gw}/30", "dev", "wan")
        _run("ip", "-n", gns, "link", "set", "lo", "up")
        self.broker_host, self.gateway_host = host, gw

    def _tc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.path_ns, "tc", *args], capture_output=True, text=True)

    def _kernel_has_netem(self) -> bool:
        probe = self._tc("qdisc", "add", "dev", "m0", "root", "netem", "delay", "0ms")
        if probe.returncode == 0:
            self._tc("qdisc", "del", "dev", "m0", "root")
        return probe.returncode == 0

    def _kernel_bridge(self) -> None:
        _run("ip", "-n", self.path_ns, "link", "add", "br0", "type", "bridge")
        for dev in ("m0", "m1"):
            _run("ip", "-n", self.path_ns, "link", "set", dev, "master", "br0")
        _run("ip", "-n", self.path_ns, "link", "set", "br0", "addrgenmode", "none", "up")
        self._netem = {"latency_s": 0.0, "loss": 0.0, "blackhole": False}

    async def _start_userspace_bridge(self) -> None:
        seed = [] if self.seed is None else ["--seed", str(self.seed)]
        self._bridge = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.path_ns, sys.executable, "-m", "gridedge.hil.netns", "bridge", "m0", "m1",
            *seed, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self._bridge.stdout.readline(), 20)
        if line.strip() != b"READY":
            raise RuntimeError(f"the path's bridge did not start (exit {await self._bridge.wait()})")

    async def set(self, **settings) -> dict:
        """Change latency_s (one way, each direction), loss (probability per packet) and/or blackhole (drop
        everything, no RST, nothing); returns the path's counters."""
        line = json.dumps(settings)
        parse_settings(line)                            # refuse a bad setting here, with its message
        async with self._lock:
            if self._bridge is None:
                return await asyncio.to_thread(self._netem_set, settings)
            self._bridge.stdin.write(line.encode() + b"\n")
            await self._bridge.stdin.drain()
            reply = json.loads(await asyncio.wait_for(self._bridge.stdout.readline(), 10))
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    async def stats(self) -> dict:
        """Frames passed, lost and blackholed so far (netem: passed and dropped, as `tc -s` counts them)."""
        return await self.set()

    def _netem_set(self, settings: dict) -> dict:
        want = dict(self._netem, **settings)
        loss = 100.0 if want["blackhole"] else want["loss"] * 100
        counts = {"passed": 0, "lost": 0}
        for dev in ("m0", "m1"):
            if settings:
                delay_ms = f"{want['latency_s'] * 1000:.3f}ms"
                done = self._tc("qdisc", "replace", "dev", dev, "root", "netem", "delay", delay_ms, "loss", f"{loss}%")
                if done.returncode != 0:
                    raise RuntimeError(f"tc netem on {dev}: {done.stderr.strip()}")
            for q in json.loads(self._tc("-s", "-j", "qdisc", "show", "dev", dev).stdout or "[]"):
                counts["passed"] += q.get("packets", 0)
                counts["lost"] += q.get("drops", 0)
        self._netem = want
        return dict(counts, **want)

    async def stop(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is not None and bridge.returncode is None:
            bridge.stdin.close()                        # EOF ends the bridge
            try:
                await asyncio.wait_for(bridge.wait(), 5)
            except asyncio.TimeoutError:
                bridge.kill()
                await bridge.wait()
        await asyncio.to_thread(self._tear_down)

    def _tear_down(self) -> None:
        """Deleting this end removes the veth pair at once; the namespaces go with their last process."""
        for cmd in (("ip", "link", "del", self.host_if), ("ip", "netns", "del", self.gateway_ns),
                    ("ip", "netns", "del", self.path_ns)):
            subprocess.run(cmd, capture_output=True)

    async def __aenter__(self) -> WanPath:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.netns", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    br = sub.add_parser("bridge", help="bridge two interfaces with delay/loss/blackhole (control: JSON lines on stdin)")
    br.add_argument("if_a")
    br.add_argument("if_b")
    br.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    asyncio.run(_bridge_main(args.if_a, args.if_b, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
