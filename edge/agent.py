"""The gateway agent: poll devices into a process image, publish telemetry, execute operator commands."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from . import __version__, contract
from .clock import Clock
from .control.activation import State
from .control.engine import ControlEngine
from .config import Config, DeviceConfig
from .commands import CommandGate
from .fleet import Fleet, configure as fleet_configure, device_health as fleet_device_health, metrics as fleet_metrics
from .fleet.certificate import CertificateRotation
from .fleet import update as fleet_update
from .service import Service
from .devices import make_device
from .image import ProcessImage
from .flex.bridge import resources_of, window_for
from .core.model import BlockLayout, Detail, Reading, Sample, SampleBlock, Validity, flatten
from .core.text import escape
from .mqtt import MqttClient, MqttError, tls_context
from .outbox import Outbox
from .security import certs
from .security.audit import AuditLog
from .security.replay import ReplayGuard
from .security.trust import TrustStore
from .telemetry_writer import TelemetryWriter
from .uplink import Publisher

log = logging.getLogger("gridedge.agent")

MAX_MESSAGE_BYTES = 256 * 1024  # a telemetry message is stored as soon as it is this big: bounds memory and message size
STATE_INTERVAL_S = 60.0  # the retained state (drop counters, next seq) is refreshed this often
FLEX_TICK_S = 1.0  # flex closes ISPs and emits its records this often
AUDIT_COPIED = "mark:audit_copied"  # the last audit seq copied into the outbox for the head-end
FINAL_DRAIN_S = 3.0  # on a clean stop, try this long to publish what is stored; the rest waits in the outbox


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.prefix = config.uplink.topic_prefix
        self.boot_id = uuid.uuid4().hex
        self.image = ProcessImage()
        self.buffer: list[tuple[list[bytes], int]] = []  # encoded telemetry blocks, and how many values each holds
        self.buffered_values = self.buffered_bytes = 0
        self.buffered_newest_ns = 0  # the newest sample time in the buffer: stored with it, for last_stored_t
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self.dropped_samples = 0  # values lost because the outbox could not store them
        self.devices = {d.id: make_device(d) for d in config.devices}
        self.clock = Clock(config.clock)  # the time quality of what the gateway stamps (edge/clock.py)
        st = config.storage
        st.dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(st.dir / "outbox.sqlite", gateway_id=self.gateway_id,
                             quota_bytes=int(st.quota_mb * 2**20), max_age_s=st.max_age_h * 3600,
                             durability=st.durability)
        self.last_stored_t = self.outbox.stats()["newest_sample_ns"]  # before this boot: the start of a loss window
        for dev in self.devices.values():  # devices with state of their own, or a record of the past (DLMS meters)
            if callable(getattr(dev, "bind", None)):
                dev.bind(st.dir / "devices", self._backfill)
            if hasattr(dev, "on_event"):  # devices that detect events (PMUs): their own stream, through the outbox
                dev.on_event = self._device_event
        self.mqtt: MqttClient | None = None
        self.publisher: Publisher | None = None   # made by run()
        self.audit = AuditLog(st.dir / "audit", fsync=st.durability == "full")
        copied = self.outbox.marked(AUDIT_COPIED) or 0
        self._audit_pending: list[dict] = list(self.audit.records_after(copied)) if self.audit.seq > copied else []
        self.audit.listeners.append(self._audit_uplink)
        self.trust, self.trust_error = self._load_trust()
        self.certs = certs.read_certs(certs.config_certs(config))
        self.replay = ReplayGuard(st.dir / "replay.sqlite", skew_s=self.trust.skew_s if self.trust else 30.0,
                                  durable=st.durability == "full")
        self.control = ControlEngine(config, self.devices, self.image, self.report, uplink_up=self._uplink_up,
                                     storage_dir=st.dir)
        self.flex = None  # gridedge.flex.FlexEngine, loaded only with resources to settle (it needs numpy)
        if config.flex.resources:
            from .flex.engine import FlexEngine

            self.flex = FlexEngine(config.flex, st.dir)
            self._flex_points = self.flex.points
            self._flex_index: dict[BlockLayout, tuple[int, ...]] = {}
            self._flex_devices = resources_of(config.flex.resources)
            self._step_tests: set[str] = set()  # activations that are step tests: no settlement window
            self.control.add_listener(self._on_activation)
        self.writer = TelemetryWriter(config.telemetry, frozenset(self._flex_points) if self.flex else frozenset())
        self.gate = CommandGate(self)
        self.fleet = Fleet(self)
        fleet_device_health.install(self)  # agent.device_health: per device, in the state and the metrics
        fleet_configure.install(self)
        fleet_metrics.install(self)
        self.rotation = CertificateRotation(self)  # rotate_certificate, install_certificate, renewal
        fleet_update.install(self)
        self.control.on_write = self._audit_write
        self.control.restore_check = self._still_allowed
        self.service = Service(self)

    def topic(self, kind: str) -> str:
        return self.prefix + kind

    # -- trust and audit -------------------------------------------------------------------
    def _load_trust(self) -> tuple[TrustStore | None, str]:
        """The trusted issuers, or (None, why): then every command is refused until a restart loads them."""
        sec = self.config.security
        if sec is None:
            return None, "no [security] section was loaded"
        try:
            return TrustStore(sec.section, sec.resolve, self.gateway_id), ""
        except Exception as exc:  # a key file that vanished or changed since `check`: deny, do not crash
            why = escape(f"{type(exc).__name__}: {exc}", 300)
            log.error("trust configuration not loaded (%s): every command will be refused", why)
            return None, why

    def audit_event(self, event: str, **fields) -> None:
        """One record in the local hash-chained audit trail (and, through the outbox, at the head-end)."""
        try:
            self.audit.append(event, **{k: v for k, v in fields.items() if v is not None})
        except OSError as exc:  # a full disk must not stop control; it is said loudly
            log.error("audit record %s not written: %s", event, exc)

    def _notify(self) -> None:
        """The publisher wakes for what was just stored (once it runs)."""
        if self.publisher is not None:
            self.publisher.notify()

    def _audit_uplink(self, rec: dict) -> None:
        """The head-end's copy goes into the outbox with the next telemetry beat, in its transaction: a command's way
        to its device never waits for it. The local trail is the record; what a crash leaves uncopied is copied
        again at the next start (the outbox remembers the last seq it took: mark:audit_copied)."""
        self._audit_pending.append(rec)

    def _audit_write(self, device: str, points: dict, activations: list[str], error: str | None) -> None:
        self.audit_event("write", device=device, points=points, activations=activations, error=error)

    def _still_allowed(self, act) -> str | None:
        """A restored activation against this run's trust configuration: None, or why it may not go on."""
        if self.trust is None:
            return f"the trust configuration is not loaded ({self.trust_error})"
        entry = self.trust.issuers.get(act.principal) if act.principal else None
        if entry is None:
            return f"its issuer {act.principal or act.issuer!r} is not trusted any more"
        who = self.trust.principal(entry, "restored", "restored")
        return self.trust.authorize(who, act.type, tuple(act.devices))

    async def fleet_command(self, cmd: contract.Command, who) -> None:
        """configure, update, rotate_certificate, install_certificate (docs/fleet.md)."""
        await self.fleet.handle(cmd, who)

    def devices_of(self, cmd: contract.Command) -> tuple[str, ...] | None:
        """The devices a command acts on, for the issuer's device scope; None: it names none (the site)."""
        if cmd.type in ("terminate", "cancel"):
            act = self.control.book.get(cmd.params["activation_id"])
            return tuple(act.devices) if act is not None else None
        if cmd.type == "prequalification_test":
            res = self.flex.resources.get(cmd.params["resource"]) if self.flex is not None else None
            return tuple(res.devices) if res is not None and res.devices else None
        return (cmd.device,) if cmd.device else None

    # -- process image ---------------------------------------------------------------------
    def _uplink_up(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected.is_set()

    def _take(self, readings: list[Reading]) -> None:
        """Into the process image, and encoded into the telemetry buffer (bytes, not objects, until the flush)."""
        self.image.put(readings)
        self.device_health.observe(readings)
        self._telemetry(readings)
        if self.flex is not None:
            self._feed_flex(readings)

    def _backfill(self, readings: list[Reading]) -> None:
        """Readings from a device's own record of the past (a meter's load profile after an outage): telemetry and
        flex's ISP energies, not the process image (it holds the present)."""
        self._telemetry(readings, backfill=True)
        if self.flex is not None:
            self.flex.backfill([s for s in flatten(readings) if s.point in self._flex_points])

    def _telemetry(self, readings: list[Reading], backfill: bool = False) -> None:
        """Encoded at once, in the configured form (edge/telemetry_writer.py): bytes, not objects, until the flush.
        What the gateway stamped carries its clock's time quality now (a device that stamps its own values, a PMU,
        gives its own)."""
        tq = self.clock.quality()
        loose: list[Sample] = []
        for r in readings:
            if isinstance(r, SampleBlock):
                if loose:
                    self._loose(loose, backfill, tq)
                    loose = []
                frag, n = self.writer.block(r, backfill=backfill, tq=tq)
                if frag is not None:
                    self._buffer([frag], n, r.ts_ns)
            else:
                loose.append(r)
        if loose:
            self._loose(loose, backfill, tq)

    def _loose(self, samples: list[Sample], backfill: bool, tq) -> None:
        frags, n = self.writer.samples(samples, backfill=backfill, tq=tq)
        if frags:
            self._buffer(frags, n, max(s.ts_ns for s in samples))

    def _device_event(self, kind: str, body: dict) -> None:
        """An event a device detected (a PMU: contract kinds event, event_window), stored at once on the event
        stream; an event carries the gateway clock's time quality beside the device's (gw_tq)."""
        if kind == "event":
            body = dict(body, gw_tq=self.clock.quality().to_json())
        try:
            self._append("event", kind, body, "event")
        except Exception:  # the store failed: the event is lost, the agent goes on (and says so)
            log.exception("%s of %s not stored", kind, escape(body.get("device")))

    def _feed_flex(self, readings: list[Reading]) -> None:
        """Only the points flex reads: for a block, the positions of its layout found once."""
        points = self._flex_points
        wanted: list[Sample] = []
        for r in readings:
            if isinstance(r, SampleBlock):
                idx = self._flex_index.get(r.layout)
                if idx is None:
                    lay = r.layout
                    idx = self._flex_index[lay] = tuple(i for i, n in enumerate(lay.names)
                                                        if f"{lay.device}/{n}" in points)
                wanted.extend(r.sample(i) for i in idx)
            elif r.point in points:
                wanted.append(r)
        if wanted:
            self.flex.feed(wanted)

    def _buffer(self, fragments: list[bytes], values: int, newest_ns: int) -> None:
        self.buffer.append((fragments, values))
        self.buffered_values += values
        self.buffered_newest_ns = max(self.buffered_newest_ns, newest_ns)
        self.buffered_bytes += sum(map(len, fragments))
        if self.buffered_bytes >= self.max_message_bytes:  # a full message: store it now, memory stays bounded
            self._flush_telemetry()

    async def _poll_loop(self, cfg: DeviceConfig) -> None:
        dev = self.devices[cfg.id]
        period = cfg.poll_ms / 1000
        if callable(getattr(dev, "run", None)):
            # The device keeps its own schedule and connection (poll groups on the bus, an OPC UA subscription)
            # and hands its samples over as they come; faults arrive as INVALID samples, never as exceptions.
            while True:
                try:
                    await dev.run(self._take)
                    return
                except Exception:  # a driver bug must not end this device's acquisition for good
                    log.exception("device %s: run loop failed; restarting in %.1f s", cfg.id, period)
                    await asyncio.sleep(period)
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
                    log.warning("device %s: connect failed: %s (retry in %.1f s)", cfg.id, escape(exc), backoff)
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
    def _identity(self) -> dict:
        """What the state says that does not change while this agent runs: all that its last will can know."""
        return {"version": __version__, "boot_id": self.boot_id, "config_sha256": self.config.sha256,
                "devices": sorted(self.devices)}

    def _state(self, status: str) -> bytes:
        stats = self.outbox.stats()
        return contract.dumps(contract.state(
            self.gateway_id, status, time.time_ns(), **self._identity(), next_seq=stats["next_seq"],
            dropped_samples=self.dropped_samples, dropped=stats["dropped"],
            outbox={"count": stats["count"], "bytes": stats["bytes"], "oldest_age_s": stats["oldest_age_s"],
                    "store_resets": stats["store_resets"]},
            last_stored_t=self.last_stored_t,
            commands=dict(self.gate.counts, dropped=self.mqtt.dropped if self.mqtt else 0),
            security=self._security_state(), config=self.fleet_config.state(),
            device_health=self.device_health.summary(),
            clock=dict(self.clock.status.to_json(), steps=self.clock.steps),
        ))

    def _security_state(self) -> dict:
        return {"signed_only": not (self.trust.allow_unsigned if self.trust else False),
                "trust_loaded": self.trust is not None, "issuers": len(self.trust.issuers) if self.trust else 0,
                "audit": {"seq": self.audit.seq, "head": self.audit.head}, "expiring": certs.expiring(self.certs),
                "certificate": self.rotation.state()}

    def _will(self) -> tuple[str, bytes]:
        """The last will, made before every connect attempt (in the MQTT network thread, so it reads nothing that
        changes): `ts` is that connect's time; the broker sends it when the connection dies."""
        return self.topic(contract.TOPIC_STATE), contract.dumps(contract.state(
            self.gateway_id, "offline", time.time_ns(), **self._identity(), will=True))

    async def _publish_state(self) -> None:
        try:
            await self.mqtt.publish(self.topic(contract.TOPIC_STATE), self._state("online"), retain=True)
        except MqttError as exc:
            log.warning("state not sent: %s", exc)

    async def _on_connect(self) -> None:
        self.writer.reconnected()  # the layouts are stored again before their next use (edge/layouts.py)
        for topic in self.gate.subscriptions():
            await self.mqtt.subscribe(topic, qos=1)
        await self._publish_state()

    async def _state_loop(self) -> None:
        last = None
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            dropped = self.outbox.stats()["dropped"]
            self.gate.summarise()
            if self.mqtt.connected.is_set():
                await self._publish_state()
                if dropped != last:
                    log.warning("outbox drops so far: %s", dropped) if any(dropped.values()) else None
                    last = dropped

    def _append(self, stream: str, kind: str, body: dict, data_class: str):
        rec = self.outbox.append(stream, self.topic(kind), body, data_class)
        self._notify()
        return rec

    async def _telemetry_loop(self) -> None:
        interval = self.config.uplink.telemetry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._flush_telemetry()

    def _flush_telemetry(self) -> None:
        """Everything buffered into telemetry messages of at most max_message_bytes, and the audit records waiting
        for the head-end, stored in one transaction (one fsync)."""
        if not self.buffer and not self._audit_pending:
            return
        items, newest_ns, dropped = [("layout", self.topic(suffix), body, "event")
                                     for suffix, body in self.writer.take_layouts()], None, 0
        if self.buffer:
            ts = contract.iso_utc(time.time_ns())
            bodies, frags, size, values = [], [], 0, 0
            for fragments, n in self.buffer:
                for f in fragments:
                    if frags and size + len(f) > self.max_message_bytes:
                        bodies.append(self.writer.body(ts, frags, values))
                        frags, size, values = [], 0, 0
                    frags.append(f)
                    size += len(f) + 1
                values += n
            bodies.append(self.writer.body(ts, frags, values))
            dropped, newest_ns = self.buffered_values, self.buffered_newest_ns
            self.buffer.clear()
            self.buffered_values = self.buffered_bytes = self.buffered_newest_ns = 0
            topic = self.topic(contract.TOPIC_TELEMETRY)
            items += [("telemetry", topic, b, "telemetry") for b in bodies]
        audit, self._audit_pending = self._audit_pending, []
        items += [("audit", self.topic(contract.TOPIC_AUDIT), contract.audit(r), "event") for r in audit]
        marks = {AUDIT_COPIED: audit[-1]["seq"]} if audit else None
        try:
            self.outbox.append_many(items, newest_sample_ns=newest_ns, marks=marks)
        except Exception:  # the store failed (disk full, I/O error): count what is lost, keep running
            self.dropped_samples += dropped
            self._audit_pending = audit + self._audit_pending   # the local trail has them: copied again later
            self.writer.reconnected()  # the layouts that were not stored go with their next block
            log.exception("telemetry of %d values not stored", dropped)
            return
        self._notify()

    async def report(self, cmd_id: str | None, status: str, reason: str | None = None, **detail) -> None:
        body = contract.result(time.time_ns(), cmd_id, status, reason, **detail)
        log.info("command %s: %s%s", escape(cmd_id), status, f" ({escape(reason, 500)})" if reason else "")
        rec = self._append("result", contract.TOPIC_RESULT, body, "result")
        if cmd_id is not None:
            self.outbox.remember_result(cmd_id, rec.payload)

    async def _command_loop(self) -> None:
        while True:
            msg = await self.mqtt.messages.get()
            await self.gate.handle(msg.topic, msg.payload, msg.content_type)

    # -- flexibility -------------------------------------------------------------------------
    async def step_test(self, cmd: contract.Command, now_ns: int) -> None:
        """Hold the set-point on the resource's device (an activation like any other: priorities, traffic light,
        fail-safe, results under this cmd_id) and record the response; flex publishes the analysis after it."""
        p = cmd.params
        res = self.flex.resources.get(p["resource"]) if self.flex is not None else None
        if res is None or not res.devices:
            known = ", ".join(self.flex.resources) if self.flex is not None else "none ([flex] has no resources)"
            why = "has no devices" if res is not None else f"unknown resource; known: {known}"
            await self.report(cmd.cmd_id, "rejected", f"params.resource: {p['resource']!r} {why}")
            return
        try:
            self.flex.start_step_test(cmd.cmd_id, res.id, now_ns, p["w"], p["duration_s"],
                                      before_w=self._latest_w(res.devices[0]))
        except ValueError as exc:
            await self.report(cmd.cmd_id, "rejected", str(exc))
            return
        self._step_tests.add(cmd.cmd_id)
        try:
            await self.control.hold_setpoint(res.devices[0], w=p["w"], duration_s=p["duration_s"], issuer=cmd.issuer,
                                             principal=cmd.principal, activation_id=cmd.cmd_id)
        except ValueError as exc:
            self.flex.cancel_step_test(cmd.cmd_id)
            await self.report(cmd.cmd_id, "rejected", str(exc))

    def _on_activation(self, event) -> None:
        """Control's observer hook: an activation that goes active on a flex resource is verified and settled."""
        if event.activation_id in self._step_tests:
            if event.state in (State.REJECTED, State.FAILED):  # the step never happened: nothing to analyse
                self.flex.cancel_step_test(event.activation_id)
            return
        if event.state is State.ACTIVE:
            found = window_for(event, self._flex_devices, self._latest_w)
            if isinstance(found, str):
                log.info("activation %s: not settled by flex: %s", escape(event.activation_id), found)
                return
            try:
                self.flex.activation(found)
            except ValueError as exc:
                log.error("activation %s: flex refused its window: %s", escape(event.activation_id), escape(exc))
        elif event.state.final and event.state is not State.COMPLETED and event.activation_id in self.flex.active:
            self.flex.end_activation(event.activation_id, event.ts_ns)

    def _latest_w(self, device: str) -> float | None:
        s = self.image.get(f"{device}/W")
        return s.value if s is not None and s.good and isinstance(s.value, (int, float)) else None

    async def _flex_loop(self) -> None:
        while True:
            await asyncio.sleep(FLEX_TICK_S)
            self._flex_tick()

    def _flex_tick(self) -> None:
        records = self.flex.tick(time.time_ns())  # never raises (failures are counted in flex.errors)
        if not records:
            return
        try:
            self.outbox.append_many([(r.kind, self.topic(r.kind), r.body, r.data_class) for r in records])
        except Exception:  # the store failed: the records are lost, the agent goes on (and says so)
            log.exception("%d flex records not stored", len(records))
            return
        self._notify()

    # -- lifecycle -------------------------------------------------------------------------
    def _make_client(self) -> MqttClient:
        up = self.config.uplink
        ctx = tls_context(up.ca_file, up.cert_file, up.key_file) if up.tls else None
        return MqttClient([up.broker, *up.failover], up.client_id, ssl_context=ctx, allow_plaintext=up.allow_plaintext,
                          keepalive_s=up.keepalive_s, will=self._will, session_expiry_s=up.session_expiry_s,
                          protocol=up.protocol)

    async def run(self, stop: asyncio.Event) -> None:
        self.stop_event = stop  # a fleet change that needs a new process sets it (Fleet.reexec)
        log.info("gridedge %s starting: gateway %s, config %s (sha256 %s), %s", __version__, self.gateway_id,
                 self.config.source, self.config.sha256[:12], self.control.kernels())
        self.clock.update(await self.clock.read())  # before the first sample is stamped
        self.audit_event("start", version=__version__, boot_id=self.boot_id, config=str(self.config.source),
                         config_sha256=self.config.sha256, trust="loaded" if self.trust else self.trust_error)
        certs.log_expiring(self.certs)
        self.mqtt = self._make_client()
        self.mqtt.on_connect_hooks.append(self._on_connect)
        up = self.config.uplink
        self.publisher = Publisher(self.mqtt, self.outbox, self.prefix, backfill_rate=up.backfill_rate,
                                   backfill_jitter_s=up.backfill_jitter_s)
        stats = self.outbox.stats()
        if stats["count"]:
            log.info("outbox holds %d messages (%d bytes) from before this start", stats["count"], stats["bytes"])
        tasks = [asyncio.create_task(self._poll_loop(d), name=f"poll:{d.id}") for d in self.config.devices]
        tasks.append(asyncio.create_task(self._telemetry_loop(), name="telemetry"))
        tasks.append(asyncio.create_task(self._command_loop(), name="commands"))
        tasks.append(asyncio.create_task(self._state_loop(), name="state"))
        tasks.append(asyncio.create_task(self.clock.run(), name="clock"))
        if self.flex is not None:
            tasks.append(asyncio.create_task(self._flex_loop(), name="flex"))
        publishing = asyncio.create_task(self.publisher.run(), name="publisher")
        await self.control.start()
        self.mqtt.start()
        tasks.append(asyncio.create_task(self.service.run(tasks + [publishing]), name="systemd"))
        tasks += self.fleet.start()  # not watched: a pending change's check ends when it has decided
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            n = self.service.notifier
            n.reloading() if self.fleet.exec_argv else n.stopping()
            self.gate.summarise(force=True)
            await self.control.close()           # the safe defaults written (and audited) before "stop"
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.audit_event("stop", boot_id=self.boot_id)
            self._flush_telemetry()
            w = self.writer
            log.info("telemetry: %d values read, %d sent (form %s, compression %s, report %s)", w.read, w.sent,
                     w.cfg.form, w.cfg.compression, w.cfg.report)
            if self.flex is not None:
                self._flex_tick()
                self.flex.close()
            await self._drain(FINAL_DRAIN_S)
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
            await self.mqtt.close(final=(self.topic(contract.TOPIC_STATE), self._state("offline")))
            self.outbox.close()
            self.audit.close()
            self.replay.close()
            for dev in self.devices.values():
                await dev.close()
            log.info("stopped")

    async def _drain(self, timeout_s: float) -> None:
        """On a clean stop, give the publisher up to timeout_s to empty the outbox; what remains stays stored."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.stats()["count"] and self.mqtt.connected.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # bounded by the deadline: there is no event for "outbox empty"
