"""A fleet in one process: hundreds to thousands of gateway uplinks on one broker (issue 17, storms).

The moments that hurt a fleet are fleet-wide: the broker restarts and every gateway reconnects at once; a
region's link comes back and every gateway backfills at once. One gateway in a test cannot show them.

Each simulated gateway is the agent's own uplink, not a model of it: an Outbox (its own SQLite file), a
Publisher (window, backfill rate and jitter) and an MqttClient (its own network thread, reconnect back-off and
jitter) with the gateway's own client certificate (CN = gateway id, so the broker's per-gateway ACL of
hil/acl.py confines it). Readings are synthetic; devices, control and commands are not simulated. The head-end
side (HeadEnd) de-duplicates with hil/stream_audit.py, and the broker's connection rate is read from its log.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from gridedge.mqtt import Backoff, MqttClient, tls_context
from gridedge.outbox import Outbox
from gridedge.uplink import Publisher

from .acl import ROOT
from .pki import Pki
from .stream_audit import StreamAudit

#: Gateways one process can hold. paho's network loop uses select(), which takes file descriptors below 1024 only,
#: and a simulated gateway holds six (its socket, paho's wake-up socket pair, the outbox's database, WAL and
#: shared-memory files): past ~165 gateways new connections fail in the TLS handshake, and at 143 a storm's failed
#: attempts, whose sockets close late, still pushed some past 1023. More run in more processes.
MAX_PER_PROCESS = 100

POINTS = (["W", "VAr", "PhVphA", "Hz"], ["W", "var", "V", "Hz"])  # names, units (docs/points.md)


def telemetry_body(ts_ns: int, rng: random.Random) -> dict:
    """One synthetic telemetry message (gridedge.telemetry/2 without the envelope the outbox adds)."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns // 10**9)) + f".{ts_ns // 10**6 % 1000:03d}Z"
    values = [round(rng.uniform(0, 8000), 1), round(rng.uniform(-500, 500), 1), round(rng.gauss(230, 2), 1),
              round(rng.gauss(50, 0.02), 3)]
    return {"schema": "gridedge.telemetry/2", "ts": iso,
            "blocks": [{"dev": "inv1", "n": POINTS[0], "u": POINTS[1], "t": ts_ns, "v": values}]}


class SimGateway:
    """One gateway's uplink: outbox -> publisher -> MQTT client, as in the agent."""

    def __init__(self, gateway_id: str, urls: Sequence[str], pki: Pki | None, workdir: Path, *, protocol: str = "5",
                 backfill_rate: float = 20.0, backfill_jitter_s: float = 30.0, session_expiry_s: int = 3600,
                 jitter: bool = True, rng: random.Random | None = None) -> None:
        self.gateway_id = gateway_id
        self.prefix = f"{ROOT}/{gateway_id}/"
        self.rng = rng or random.Random()
        self.outbox = Outbox(workdir / f"{gateway_id}.sqlite", gateway_id=gateway_id, durability="normal",
                             verify=False)
        tls = tls_context(pki.ca_cert, *pki.client(gateway_id)) if pki else None  # no pki: plaintext, a lab cluster
        self.mqtt = MqttClient(list(urls), gateway_id, ssl_context=tls, allow_plaintext=tls is None,
                               session_expiry_s=session_expiry_s, protocol=protocol)
        self.mqtt.backoff = Backoff(rng=self.rng, jitter=jitter)
        self.publisher = Publisher(self.mqtt, self.outbox, self.prefix, backfill_rate=backfill_rate,
                                   backfill_jitter_s=backfill_jitter_s, rng=self.rng)

    def store(self, ts_ns: Sequence[int]) -> None:
        """Store one telemetry message per timestamp, in one transaction (an outage's backlog: many at once)."""
        self.outbox.append_many([("telemetry", self.prefix + "telemetry", telemetry_body(t, self.rng), "telemetry")
                                 for t in ts_ns])
        self.publisher.notify()

    def pending(self) -> int:
        return self.outbox.stats()["count"]


class Fleet:
    """n gateways, each storing one telemetry message every beat_s (spread over the beat) and publishing it."""

    def __init__(self, workdir: Path, urls: str | Sequence[str], pki: Pki | None, n: int, *, beat_s: float = 1.0,
                 seed: int = 17, id_prefix: str = "gw-sim-", first: int = 0, **gateway_options) -> None:
        """Gateways first .. first+n-1 (ids id_prefix + number). One process holds at most MAX_PER_PROCESS of them
        (hil/fleet_shards.py runs more in several)."""
        if n > MAX_PER_PROCESS:
            raise ValueError(f"{n} gateways in one process: at most {MAX_PER_PROCESS} (MAX_PER_PROCESS says why)")
        self.workdir = Path(workdir)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.pki, self.n, self.beat_s = pki, n, beat_s
        self.ids = [f"{id_prefix}{i:05d}" for i in range(first, first + n)]
        self.rng = random.Random(seed + first)
        self.options = gateway_options
        self.gateways: list[SimGateway] = []
        self.certificates_s = 0.0  # time spent issuing the client certificates (pki.client caches them)
        self._tasks: list[asyncio.Task] = []
        self.beating = True  # False: no new telemetry (a drain can be measured to its end)

    async def start(self, timeout_s: float = 120.0) -> None:
        """Issue the certificates, start every uplink, and wait until all are connected."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if self.pki:
            await asyncio.to_thread(lambda: [self.pki.client(i) for i in self.ids])
        self.certificates_s = time.perf_counter() - t0
        for gid in self.ids:
            gw = SimGateway(gid, self.urls, self.pki, self.workdir, rng=random.Random(self.rng.random()),
                            **self.options)
            self.gateways.append(gw)
            gw.mqtt.start()
            self._tasks.append(asyncio.create_task(gw.publisher.run(), name=f"publisher {gid}"))
            self._tasks.append(asyncio.create_task(self._beat(gw, self.rng.uniform(0, self.beat_s))))
        await self.wait(lambda: self.connected() == self.n, timeout_s, "every gateway connected")

    async def _beat(self, gw: SimGateway, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        while True:
            if self.beating:
                gw.store([time.time_ns()])
            await asyncio.sleep(self.beat_s)

    def connected(self) -> int:
        return sum(gw.mqtt.connected.is_set() for gw in self.gateways)

    def pending(self) -> int:
        return sum(gw.pending() for gw in self.gateways)

    def backlog(self, duration_s: float, now_ns: int | None = None) -> int:
        """Store the telemetry of an outage of duration_s that just ended (one message per beat per gateway), as
        gateways that were cut off would hold it; returns how many messages that is."""
        now_ns = now_ns or time.time_ns()
        k = max(1, int(duration_s / self.beat_s))
        step = int(self.beat_s * 1e9)
        for gw in self.gateways:
            gw.store([now_ns - (k - j) * step for j in range(k)])
        return k * self.n

    async def wait(self, condition, timeout_s: float, what: str, poll_s: float = 0.2) -> float:
        """Wait for condition(); returns the seconds it took. TimeoutError names what did not happen."""
        t0 = time.monotonic()
        while not condition():
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{what}: not within {timeout_s} s")
            await asyncio.sleep(poll_s)
        return time.monotonic() - t0

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(gw.mqtt.close() for gw in self.gateways), return_exceptions=True)
        for gw in self.gateways:
            gw.outbox.close()


class HeadEnd:
    """The consumer: reads every gateway's telemetry (live and backfill) with a persistent session, de-duplicates
    it (StreamAudit) and counts messages per second of arrival."""

    def __init__(self, urls: str | Sequence[str], ssl_context, client_id: str, *, protocol: str = "5") -> None:
        self.mqtt = MqttClient(urls, client_id, ssl_context=ssl_context, allow_plaintext=ssl_context is None,
                               session_expiry_s=600, protocol=protocol, receive_maximum=65535, inbox_limit=0)
        self.audit = StreamAudit()
        self.received = 0
        self.per_second: Counter[int] = Counter()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        for topic in (f"{ROOT}/+/telemetry", f"{ROOT}/+/backfill/telemetry"):
            await self.mqtt.subscribe(topic, qos=1)
        await self.mqtt.connect()
        self._task = asyncio.create_task(self._take())

    async def _take(self) -> None:
        while True:
            msg = await self.mqtt.messages.get()
            self.received += 1
            self.per_second[int(time.time())] += 1
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                continue  # counted in received; the audit shows what is missing
            self.audit.add(msg.topic, doc)

    def seen(self, gateway_id: str) -> int:
        """The last seq of gateway_id's telemetry seen, or -1."""
        last = self.audit.report(gateway_id, "telemetry").last
        return -1 if last is None else last

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.mqtt.close()


_CONNECTED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d): New client connected from ")


def connections_per_second(log_path: Path, since: str = "") -> Counter[str]:
    """CONNECTs the broker accepted in each second (mosquitto's log; its timestamps are whole seconds), from the
    second `since` (an ISO second as the log writes it) on."""
    out: Counter[str] = Counter()
    with open(log_path, errors="replace") as f:
        for line in f:
            m = _CONNECTED.match(line)
            if m and m.group(1) >= since:
                out[m.group(1)] += 1
    return out
