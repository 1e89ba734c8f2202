"""An asyncio face on paho-mqtt 2.x (MQTT 5, TLS 1.2+ with client certificates).

paho runs its network loop in its own thread; every callback is handed to the asyncio loop with
call_soon_threadsafe, so the rest of gridedge never sees a thread. Both the agent's uplink and the
rig's DSO simulator use this class.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from .core.rate import TokenBucket
from .core.text import escape

log = logging.getLogger(__name__)

#: Inbound flow control, by default. The broker sends at most RECEIVE_MAXIMUM QoS 1 messages that are not yet
#: acknowledged (MQTT 5 Receive Maximum), and a message is acknowledged when the consumer takes it off `messages`:
#: a flood, or what a persistent session kept through an outage, waits at the broker, not in our memory. 1, not
#: more: mosquitto before 2.0.13 sends past a larger window after each PUBACK (eclipse/mosquitto#2301), and
#: commands are few (about 100/s on loopback with 1). QoS 0 has no flow control: beyond INBOX_LIMIT waiting
#: messages it is dropped and counted in `dropped`.
RECEIVE_MAXIMUM = 1
INBOX_LIMIT = 64


class MqttError(Exception):
    pass


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttError(f"broker URL must look like mqtts://host:port, got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Verify the broker against our CA and its host name; authenticate ourselves with a certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int = 0
    mid: int = 0
    link: int = 0  # the connection it came on: its PUBACK may go on that connection only


class _Inbox(asyncio.Queue):
    """The inbound queue, bounded; a message is acknowledged to the broker as the consumer takes it."""

    def __init__(self, maxsize: int, on_take) -> None:
        super().__init__(maxsize)
        self._on_take = on_take

    def _get(self) -> Message:
        msg = super()._get()
        self._on_take(msg)
        return msg


class MqttClient:
    """One MQTT 5 session. publish() resolves on PUBACK (QoS 1); messages arrive on `messages` (bounded; a QoS 1
    message is acknowledged when it is taken off it)."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        keepalive_s: int = 30,
        will: tuple[str, bytes] | None = None,
        session_expiry_s: int = 0,
        receive_maximum: int = RECEIVE_MAXIMUM,
        inbox_limit: int = INBOX_LIMIT,
    ) -> None:
        """receive_maximum and inbox_limit bound what arrives (see RECEIVE_MAXIMUM); a consumer that must see every
        message of a busy stream, like the rig's head-end, passes a large window and inbox_limit=0 (unbounded)."""
        self.endpoint = Endpoint.parse(url)
        if self.endpoint.tls and ssl_context is None:
            raise MqttError("mqtts:// needs a TLS context")
        if not self.endpoint.tls and not allow_plaintext:
            raise MqttError("plaintext mqtt:// refused: set allow_plaintext to use it")
        self.allow_plaintext = allow_plaintext
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.messages: asyncio.Queue[Message] = _Inbox(inbox_limit, self._ack)
        self.dropped = 0  # inbound messages dropped: the queue was full (QoS 0) or the topic was not UTF-8
        self._drop_log = TokenBucket(rate=1 / 60, burst=1)
        self._link = 0  # +1 at every disconnect (paho thread, under _link_lock): acks of older messages are stale
        self._link_lock = threading.Lock()
        self.connected = asyncio.Event()
        self.on_connect_hooks: list = []  # async callables run after every (re)connect
        self._loop = asyncio.get_running_loop()
        self._subscriptions: dict[str, int] = {}
        self._pending: dict[int, asyncio.Future] = {}
        self._early_acks: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._first_connect: asyncio.Future = self._loop.create_future()
        self._first_connect.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no GC warning

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=True)
        if ssl_context is not None:
            c.tls_set_context(ssl_context)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        self.backoff = Backoff()
        c.reconnect_delay_set(*self.backoff.next())
        c.on_connect_fail = self._on_connect_fail
        c.enable_logger(logging.getLogger("gridedge.paho"))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self._client = c

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho retries with back-off until it gets through.

        With session_expiry_s > 0 every connect, the first of a process included, resumes the broker's session
        (clean start off): what was sent at QoS 1 to our subscriptions while we were away, restarts included,
        is delivered when we are back. With 0 the session ends with each connection."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(
            self.endpoint.host, self.endpoint.port, keepalive=self.keepalive_s,
            clean_start=self.session_expiry_s == 0, properties=props,
        )
        self._client.loop_start()

    async def connect(self, timeout_s: float = 10.0) -> None:
        """start(), then wait for the first CONNACK; on failure the client is closed."""
        self.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise MqttError(f"no CONNACK from {self.endpoint.host}:{self.endpoint.port} within {timeout_s} s") from None
        except MqttError:
            await self.close()
            raise

    async def close(self, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly, publishing `final` (topic, payload) first as a retained message."""
        if final is not None and self.connected.is_set():
            try:
                await asyncio.wait_for(self.publish(final[0], final[1], retain=True), 5)
            except (asyncio.TimeoutError, MqttError) as exc:
                log.warning("final message not acknowledged: %s", exc)
        self._closing = True
        if self.connected.is_set():
            self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._fail_pending(MqttError("client closed"))

    # -- API ---------------------------------------------------------------------------------
    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> asyncio.Future:
        """Hand a message to the broker now; the future resolves on its PUBACK (at once for QoS 0).

        Calls go out in call order, so a publisher can keep a window of messages in flight and stay ordered.
        """
        if not self.connected.is_set():
            raise MqttError("not connected")
        fut = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            fut.set_result(None)
            return fut
        with self._lock:
            # Only the message just handed over can have been acknowledged before we got here; anything else in
            # _early_acks is a PUBACK for a message paho re-sent on its own after a reconnect, and must not
            # resolve a later message that happens to reuse its mid.
            early = self._early_acks.pop(info.mid, None) is not None
            self._early_acks.clear()
            if early:
                fut.set_result(None)
            else:
                self._pending[info.mid] = fut
        return fut

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await self.publish_nowait(topic, payload, qos=qos, retain=retain)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    # -- paho thread callbacks ---------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            err = MqttError(f"broker refused the connection: {reason_code}")
            self._loop.call_soon_threadsafe(self._resolve_first, err)
            return
        self.backoff.reset()
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        self._loop.call_soon_threadsafe(self._connected)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._link_lock:
            self._link += 1
        client.reconnect_delay_set(*self.backoff.next())
        self._loop.call_soon_threadsafe(self._disconnected, str(reason_code))

    def _on_connect_fail(self, client, userdata) -> None:
        client.reconnect_delay_set(*self.backoff.next())

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho refuses a topic that is not UTF-8; a broker should never forward one
            topic = None
        self._loop.call_soon_threadsafe(self._receive, Message(topic, msg.payload, msg.retain, msg.qos, msg.mid,
                                                               self._link))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early_acks[mid] = 1
                return
        err = MqttError(f"broker rejected publish: {reason_code}") if reason_code.is_failure else None
        self._loop.call_soon_threadsafe(_settle, fut, err)

    # -- loop-side handlers ------------------------------------------------------------------
    def _receive(self, msg: Message) -> None:
        if msg.topic is not None and not self.messages.full():
            self.messages.put_nowait(msg)
            return
        self.dropped += 1
        self._ack(msg)  # not handled, but acknowledged: an unacknowledged message holds a flow-control slot
        if self._drop_log.take():
            log.warning("inbound message on %s dropped (queue full or topic not UTF-8); %d dropped so far",
                        escape(msg.topic), self.dropped)

    def _ack(self, msg: Message) -> None:
        """PUBACK a QoS 1 message, on the connection it came on only (a mid means nothing on another)."""
        if msg.qos:
            with self._link_lock:
                if msg.link == self._link:
                    self._client.ack(msg.mid, msg.qos)

    def _resolve_first(self, err: Exception | None) -> None:
        if not self._first_connect.done():
            if err is None:
                self._first_connect.set_result(None)
            else:
                self._first_connect.set_exception(err)

    def _connected(self) -> None:
        self.connected.set()
        log.info("MQTT connected to %s:%s", self.endpoint.host, self.endpoint.port)
        if self.endpoint.tls is False:
            log.warning("MQTT connected WITHOUT TLS to %s:%s (allow_plaintext is set)", self.endpoint.host, self.endpoint.port)
        self._resolve_first(None)
        for hook in self.on_connect_hooks:
            self._loop.create_task(hook())

    def _disconnected(self, reason: str) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("MQTT connection lost: %s", reason)
        self.connected.clear()
        self._fail_pending(MqttError(f"connection lost: {reason}"))

    def _fail_pending(self, err: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
        for fut in pending.values():
            _settle(fut, err)


class Backoff:
    """Exponential reconnect delay with jitter: a fleet that lost its broker together does not return together.

    Attempt n waits uniformly in [d/2, d] with d = min(max_s, base_s * 2**n) ("equal jitter").
    """

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.base_s, self.max_s, self.attempt = base_s, max_s, 0
        self.rng = rng or random.Random()

    def next(self) -> tuple[float, float]:
        d = min(self.max_s, self.base_s * 2 ** self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        delay = self.rng.uniform(d / 2, d)
        return delay, delay  # paho's (min, max): we do the doubling ourselves

    def reset(self) -> None:
        self.attempt = 0


def _settle(fut: asyncio.Future, err: Exception | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)
