"""Outbox -> broker. A record leaves the outbox only after its PUBACK, so nothing is lost whatever the link does.

Per connection: live records (appended since the connection came up) go out at once, in order, on their own
topic; the backlog (what was stored before) follows after a random delay (fleet jitter: 10,000 gateways
reconnecting after a broker restart must not stampede it), oldest first, rate-limited, on
`<prefix>backfill/<kind>`. Each topic is in seq order on its own, so a consumer that de-duplicates by msg_id
sees every seq exactly once, and can tell a gap being filled from data going backwards.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

from .compression import encoding_of
from .mqtt import MqttClient, MqttError
from .outbox import Outbox, Record, Replay

log = logging.getLogger("gridedge.uplink")

#: Streams whose messages are retained, on their own topic even in a replay: what they say holds until replaced
#: (a layout, edge/layouts.py), so a head-end that subscribes later gets it from the broker.
RETAINED_STREAMS = ("layout",)


class Publisher:
    def __init__(self, mqtt: MqttClient, outbox: Outbox, prefix: str, *, window: int = 20,
                 backfill_rate: float = 20.0, backfill_jitter_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.mqtt, self.outbox, self.prefix = mqtt, outbox, prefix
        self.window = window
        self.backfill_rate = backfill_rate
        self.backfill_jitter_s = backfill_jitter_s
        self.rng = rng or random.Random()
        self.published = 0
        self.backfilled = 0
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Call after appending to the outbox: the publisher wakes at once instead of polling."""
        self._wake.set()

    def backfill_topic(self, rec: Record) -> str:
        return self.prefix + "backfill/" + rec.topic[len(self.prefix):] if rec.topic.startswith(self.prefix) \
            else rec.topic

    async def run(self) -> None:
        while True:
            await self.mqtt.connected.wait()
            try:
                await self._session()
            except MqttError as exc:
                log.info("publishing paused: %s; unacknowledged records stay in the outbox", exc)
            # a lost connection clears `connected`; wait for the next one

    async def _session(self) -> None:
        replay = Replay(self.outbox, backlog_rate=self.backfill_rate, burst=max(1, self.window))
        hold_until = time.monotonic() + (self.rng.uniform(0, self.backfill_jitter_s) if not replay.backlog_done else 0)
        if not replay.backlog_done:
            log.info("backlog up to record %d: replay starts in %.1f s at %.0f msg/s",
                     replay.mark, hold_until - time.monotonic(), self.backfill_rate)
        inflight: collections.deque[tuple[Record, asyncio.Future]] = collections.deque()
        try:
            while self.mqtt.connected.is_set():
                room = self.window - len(inflight)
                if room > 0:
                    self._wake.clear()
                    batch = replay.take(room, backlog=time.monotonic() >= hold_until)
                    for rec, backfill in batch:
                        retain = rec.stream in RETAINED_STREAMS
                        topic = self.backfill_topic(rec) if backfill and not retain else rec.topic
                        inflight.append((rec, self.mqtt.publish_nowait(topic, rec.payload, retain=retain,
                                                                       content_type=encoding_of(rec.payload))))
                        self.backfilled += backfill
                if inflight:
                    done = await self._settle(inflight)
                    if done:
                        continue
                await self._idle(replay, hold_until, bool(inflight))
        finally:
            for _, fut in inflight:
                fut.cancel() if not fut.done() else fut.exception()

    async def _settle(self, inflight) -> int:
        """Wait for the oldest in-flight PUBACK, then ack every leading record that is acknowledged."""
        if not inflight[0][1].done():
            await asyncio.wait([inflight[0][1]], timeout=1.0)
        acked = []
        while inflight and inflight[0][1].done():
            rec, fut = inflight.popleft()
            fut.result()  # raises MqttError when the connection dropped: the record stays pending
            acked.append(rec.id)
        if acked:
            self.outbox.ack(acked)
            self.published += len(acked)
        return len(acked)

    async def _idle(self, replay: Replay, hold_until: float, busy: bool) -> None:
        if busy:
            return
        waits = []
        now = time.monotonic()
        if not replay.backlog_done:
            waits.append(max(hold_until - now, replay.wait_s() or 0.0))
        timeout = min(waits) if waits else 1.0
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the wake-up
            async with asyncio.timeout(max(timeout, 0.001)):
                await self._wake.wait()
        except TimeoutError:
            pass
