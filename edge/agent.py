"""The gateway agent: poll devices into a process image, publish telemetry, execute operator commands."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid

from . import __version__, contract
from .activation import ActivationManager
from .config import Config, DeviceConfig
from .contract import CommandRejected, Streams
from .devices import make_device
from .model import Detail, Sample, Validity
from .mqtt import MqttClient, MqttError, tls_context

log = logging.getLogger("gridedge.agent")

MAX_BUFFERED_SAMPLES = 200_000  # bounds memory while the uplink is down
MAX_REMEMBERED_COMMANDS = 1000


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.prefix = config.uplink.topic_prefix
        self.boot_id = uuid.uuid4().hex
        self.streams = Streams(self.gateway_id)
        self.image: dict[str, Sample] = {}
        self.buffer: collections.deque[Sample] = collections.deque()
        self.dropped_samples = 0
        self.devices = {d.id: make_device(d) for d in config.devices}
        self.results: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self.unsent_results: list[bytes] = []
        self.activations = ActivationManager(
            self.devices, {d.id for d in config.devices if d.writable}, self._latest_value, self._report,
            priorities=config.control.priorities,
        )
        self.mqtt: MqttClient | None = None

    def topic(self, kind: str) -> str:
        return self.prefix + kind

    # -- process image ---------------------------------------------------------------------
    def _latest_value(self, point: str) -> float | None:
        s = self.image.get(point)
        return s.value if s is not None and s.validity is Validity.GOOD else None

    def _take(self, samples: list[Sample]) -> None:
        for s in samples:
            self.image[s.point] = s
        self.buffer.extend(samples)
        overflow = len(self.buffer) - MAX_BUFFERED_SAMPLES
        for _ in range(max(0, overflow)):
            self.buffer.popleft()
            self.dropped_samples += 1

    async def _poll_loop(self, cfg: DeviceConfig) -> None:
        dev = self.devices[cfg.id]
        period = cfg.poll_ms / 1000
        connected = False
        backoff = period
        next_t = time.monotonic()
        while True:
            if not connected:
                try:
                    await dev.connect()
                    connected = True
                    backoff = period
                    log.info("device %s connected", cfg.id)
                except Exception as exc:
                    log.warning("device %s: connect failed: %s (retry in %.1f s)", cfg.id, exc, backoff)
                    self._take([Sample(f"{cfg.id}/comm", time.time_ns(), None, "", Validity.INVALID, Detail.COMM_FAILURE)])
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    next_t = time.monotonic()
                    continue
            self._take(await dev.poll())
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # overran: skip missed slots rather than bursting to catch up
                next_t = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    # -- uplink ----------------------------------------------------------------------------
    def _state(self, status: str) -> bytes:
        return contract.dumps(contract.state(
            self.gateway_id, status, time.time_ns(), version=__version__, boot_id=self.boot_id,
            config_sha256=self.config.sha256, next_seq=dict(self.streams.next_seq),
            dropped_samples=self.dropped_samples, devices=sorted(self.devices),
        ))

    async def _on_connect(self) -> None:
        await self.mqtt.subscribe(self.topic(contract.TOPIC_CMD), qos=1)
        try:
            await self.mqtt.publish(self.topic(contract.TOPIC_STATE), self._state("online"), retain=True)
            pending, self.unsent_results = self.unsent_results, []
            for payload in pending:
                await self.mqtt.publish(self.topic(contract.TOPIC_RESULT), payload)
        except MqttError as exc:
            log.warning("birth message not sent: %s", exc)

    async def _telemetry_loop(self) -> None:
        interval = self.config.uplink.telemetry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self.buffer or not self.mqtt.connected.is_set():
                continue
            batch = list(self.buffer)
            self.buffer.clear()
            payload = contract.dumps(contract.telemetry(self.streams, time.time_ns(), batch))
            try:
                await self.mqtt.publish(self.topic(contract.TOPIC_TELEMETRY), payload)
            except MqttError as exc:
                log.warning("telemetry not acknowledged, kept for retry: %s", exc)
                self.buffer.extendleft(reversed(batch))

    async def _report(self, cmd_id: str | None, status: str, reason: str | None = None, **detail) -> None:
        payload = contract.dumps(contract.result(self.streams, time.time_ns(), cmd_id, status, reason, **detail))
        log.info("command %s: %s%s", cmd_id, status, f" ({reason})" if reason else "")
        if cmd_id is not None:
            self.results.setdefault(cmd_id, []).append(payload)
            while len(self.results) > MAX_REMEMBERED_COMMANDS:
                self.results.popitem(last=False)
        try:
            await self.mqtt.publish(self.topic(contract.TOPIC_RESULT), payload)
        except MqttError:
            self.unsent_results.append(payload)

    async def _command_loop(self) -> None:
        cmd_topic = self.topic(contract.TOPIC_CMD)
        while True:
            msg = await self.mqtt.messages.get()
            if msg.topic != cmd_topic:
                continue
            try:
                await self._command(msg.payload)
            except Exception:  # the agent keeps running whatever a command does
                log.exception("command handling failed")

    async def _command(self, payload: bytes) -> None:
        try:
            cmd = contract.parse_command(payload, time.time_ns(), max_activation_s=self.config.control.max_activation_s)
        except CommandRejected as rej:
            if rej.cmd_id is not None and rej.cmd_id in self.results:
                await self._resend(rej.cmd_id)
                return
            await self._report(rej.cmd_id, "rejected", rej.reason)
            return
        if cmd.cmd_id in self.results:
            log.info("command %s seen before: re-sending its results, not executing it again", cmd.cmd_id)
            await self._resend(cmd.cmd_id)
            return
        await self.activations.handle(cmd)

    async def _resend(self, cmd_id: str) -> None:
        for payload in self.results[cmd_id]:
            try:
                await self.mqtt.publish(self.topic(contract.TOPIC_RESULT), payload)
            except MqttError:
                self.unsent_results.append(payload)

    # -- lifecycle -------------------------------------------------------------------------
    def _make_client(self) -> MqttClient:
        up = self.config.uplink
        ctx = tls_context(up.ca_file, up.cert_file, up.key_file) if up.tls else None
        return MqttClient(up.broker, up.client_id, ssl_context=ctx, allow_plaintext=up.allow_plaintext,
                          keepalive_s=up.keepalive_s, will=(self.topic(contract.TOPIC_STATE), self._state("offline")))

    async def run(self, stop: asyncio.Event) -> None:
        from .cext import describe

        log.info("gridedge %s starting: gateway %s, config %s (sha256 %s), %s", __version__, self.gateway_id,
                 self.config.source, self.config.sha256[:12], describe())
        self.mqtt = self._make_client()
        self.mqtt.on_connect_hooks.append(self._on_connect)
        tasks = [asyncio.create_task(self._poll_loop(d), name=f"poll:{d.id}") for d in self.config.devices]
        tasks.append(asyncio.create_task(self._telemetry_loop(), name="telemetry"))
        tasks.append(asyncio.create_task(self._command_loop(), name="commands"))
        self.mqtt.start()
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await self.activations.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.mqtt.close(final=(self.topic(contract.TOPIC_STATE), self._state("offline")))
            for dev in self.devices.values():
                await dev.close()
            log.info("stopped")
