"""An asyncio face on paho-mqtt 2.x (MQTT 5 or 3.1.1, TLS 1.2+ with client certificates).

The network runs in one thread of ours, not paho's loop_forever: ours connects, serves the connection with
paho's loop() while there is one, and waits out the back-off, so it knows why an attempt failed (paho's loop
swallows the reason and then logs "Client is not connected" at ERROR on every retry and clean stop). Every
callback is handed to the asyncio loop with call_soon_threadsafe, so the rest of gridedge never sees a thread.
Both the agent's uplink and the rig's DSO simulator use this class.

A client has a list of broker URLs (the nodes of a cluster): it starts on the first, and every attempt after a
failed one or a lost connection goes to the next, round robin, so a gateway leaves a dead node.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
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
_paho_log = logging.getLogger("gridedge.paho")

CLOSE_TIMEOUT_S = 3.0  # a clean close waits this long for the DISCONNECT to go out, then drops the socket
Will = tuple[str, bytes]  # (topic, payload), retained, QoS 1

#: Inbound flow control, by default. The broker sends at most RECEIVE_MAXIMUM QoS 1 messages that are not yet
#: acknowledged (MQTT 5 Receive Maximum), and a message is acknowledged when the consumer takes it off `messages`:
#: a flood, or what a persistent session kept through an outage, waits at the broker, not in our memory. 1, not
#: more: mosquitto before 2.0.13 sends past a larger window after each PUBACK (eclipse/mosquitto#2301), and
#: commands are few (about 100/s on loopback with 1). QoS 0 has no flow control: beyond INBOX_LIMIT waiting
#: messages it is dropped and counted in `dropped`.
RECEIVE_MAXIMUM = 1
INBOX_LIMIT = 64

#: The MQTT versions spoken (docs/mqtt-api.md, "MQTT 3.1.1"). 3.1.1 has no session expiry (a kept session is clean
#: session off, for as long as the broker keeps it), no Receive Maximum (the broker's own in-flight window bounds
#: what arrives) and no reason code in a PUBACK.
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


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
    content_type: str | None = None  # MQTT 5 Content Type, if the sender gave one (edge/compression.py)


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
    """One MQTT session (5 or 3.1.1). publish() resolves on PUBACK (QoS 1); messages arrive on `messages` (bounded; a QoS 1
    message is acknowledged when it is taken off it).

    `will`: the last will (topic, payload), or a callable that makes it: called in the network thread before every
    connect attempt (so it may only read what does not change, and the time), because MQTT 5 sets the will at
    CONNECT and cannot change it on a live connection.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        client_id: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        keepalive_s: int = 30,
        will: Will | Callable[[], Will] | None = None,
        session_expiry_s: int = 0,
        receive_maximum: int = RECEIVE_MAXIMUM,
        inbox_limit: int = INBOX_LIMIT,
        retry: bool = True,
        protocol: str = "5",
    ) -> None:
        """url: one broker URL or a list (the nodes of a cluster, tried in turn). receive_maximum and inbox_limit
        bound what arrives (see RECEIVE_MAXIMUM; 3.1.1 cannot send the window); a consumer that must see every
        message of a busy stream, like the rig's head-end, passes a large window and inbox_limit=0 (unbounded).
        retry=False: one attempt only, and connect() raises its reason at once (a test connection)."""
        self.endpoints = [Endpoint.parse(u) for u in ([url] if isinstance(url, str) else url)]
        if not self.endpoints:
            raise MqttError("no broker URL")
        if len({e.tls for e in self.endpoints}) > 1:
            raise MqttError("broker URLs must be all mqtts:// or all mqtt://")
        if protocol not in PROTOCOLS:
            raise MqttError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self._node = 0  # the index of the endpoint the current (or next) attempt goes to
        if self.endpoint.tls and ssl_context is None:
            raise MqttError("mqtts:// needs a TLS context")
        if not self.endpoint.tls and not allow_plaintext:
            raise MqttError("plaintext mqtt:// refused: set allow_plaintext to use it")
        self.allow_plaintext = allow_plaintext
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.retry = retry
        self.connects = 0  # successful connections so far: a caller can wait for the one after a change
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
        self._switching = False  # use_identity() ended the connection: not a loss to warn about
        self._first_connect: asyncio.Future = self._loop.create_future()
        self._first_connect.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no GC warning
        self._will = will
        self._stop = threading.Event()
        self._now = threading.Event()  # end the back-off wait: close(), or a new identity to connect with
        self._identity: tuple[Path, Path] | None = None  # a client certificate and key to load before the next attempt
        self._ssl_context = ssl_context
        self._thread: threading.Thread | None = None
        # the network thread's own: how the current attempt went, and the failure last logged
        self._session_up = False
        self._why: tuple[str, bool] | None = None  # why this attempt or connection ended (explain())
        self._failure: str | None = None
        self._failures = 0

        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol],
                        manual_ack=True, clean_session=None if v5 else session_expiry_s == 0)
        if ssl_context is not None:
            c.tls_set_context(ssl_context)
        self.backoff = Backoff()
        c.enable_logger(_PahoLog(self))
        # paho writes from the caller's thread unless someone "registers" writes; then only our loop() writes
        c.on_socket_register_write = lambda client, userdata, sock: None
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self._client = c

    @property
    def endpoint(self) -> Endpoint:
        """The broker of the current connection, or of the next attempt."""
        return self.endpoints[self._node]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; the network thread retries with back-off until it gets through.

        With session_expiry_s > 0 every connect, the first of a process included, resumes the broker's session
        (clean start off; in 3.1.1 clean session off, kept as long as the broker keeps it): what was sent at QoS 1
        to our subscriptions while we were away, restarts included, is delivered when we are back. With 0 the
        session ends with each connection."""
        self._aim()
        self._thread = threading.Thread(target=self._network, name=f"mqtt {self.endpoint.host}:{self.endpoint.port}",
                                        daemon=True)
        self._thread.start()

    async def connect(self, timeout_s: float = 10.0) -> None:
        """start(), then wait for the first CONNACK; on failure the client is closed."""
        self.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            why = f" (last failure: {self._failure})" if self._failure else ""
            raise MqttError(f"no CONNACK from {self.endpoint.host}:{self.endpoint.port} within {timeout_s} s{why}") \
                from None
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
        self._stop.set()
        self._now.set()
        self._client.disconnect()  # queues DISCONNECT (the broker then drops the will) and wakes the network thread
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self.connected.clear()
        self._fail_pending(MqttError("client closed"))

    def _aim(self) -> None:
        """Point paho at self.endpoint for the next attempt (only between connections)."""
        if self.protocol != "5":
            self._client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=self.keepalive_s)
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=self.keepalive_s,
                                   clean_start=self.session_expiry_s == 0, properties=props)

    def _next_node(self) -> None:
        """The attempt failed or the connection ended: the next one goes to the next broker of the list."""
        if len(self.endpoints) > 1 and not self._stop.is_set():
            self._node = (self._node + 1) % len(self.endpoints)
            self._aim()

    # -- the network thread --------------------------------------------------------------------
    def _network(self) -> None:
        """Connect, serve the connection until it ends, wait the back-off; until close()."""
        c = self._client
        while not self._stop.is_set():
            self._session_up, self._why = False, None
            self._now.clear()
            try:
                identity, self._identity = self._identity, None
                if identity is not None:  # here, between connections: no handshake sees half a change
                    self._ssl_context.load_cert_chain(str(identity[0]), str(identity[1]))
                will = self._will() if callable(self._will) else self._will
                if will is not None:
                    c.will_set(will[0], will[1], qos=1, retain=True)
                self._new_link()
                c.reconnect()  # TCP and the TLS handshake; CONNECT is queued
            except Exception as exc:  # OSError: refused, unreachable, TLS; anything else must not end the thread
                self._attempt_failed(*explain(exc, self.endpoint))
            else:
                if self._stop.is_set():  # close() came during the handshake: nothing to say to the broker
                    self._drop("client closed")
                    break
                try:
                    self._serve()
                except Exception:  # a callback's bug: drop this connection and make a new one, never end the thread
                    log.exception("MQTT network loop failed; connecting again")
                    self._drop("network loop failed")
                if not self._session_up and not self._stop.is_set():
                    self._attempt_failed(*(self._why or ("the broker closed the connection before CONNACK", False)))
            self._next_node()
            self._now.wait(self.backoff.next())

    def _serve(self) -> None:
        """paho's loop() while the socket is open: it ends on a lost connection, on close() (DISCONNECT sent), or
        for a new identity (use_identity: DISCONNECT sent here, then the next attempt loads it)."""
        c = self._client
        rc = paho.MQTT_ERR_SUCCESS
        deadline = None
        while rc == paho.MQTT_ERR_SUCCESS and c.socket() is not None:
            if self._stop.is_set() or self._identity is not None:
                if deadline is None:
                    deadline = time.monotonic() + CLOSE_TIMEOUT_S
                    if not self._stop.is_set():
                        c.disconnect()
                if time.monotonic() > deadline:  # the DISCONNECT cannot go out (the link is dead)
                    self._drop("client closed")
                    return
            rc = c.loop(timeout=0.2 if deadline else 1.0)

    def _drop(self, reason: str) -> None:
        """Close the socket without a word to the broker (it is gone, or never heard our CONNECT)."""
        self._new_link()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        if self._session_up:
            self._loop.call_soon_threadsafe(self._disconnected, reason)

    def _new_link(self) -> None:
        """A connection ended or a new one starts: acknowledgements of messages taken before are not sent."""
        with self._link_lock:
            self._link += 1

    def _attempt_failed(self, reason: str, operator: bool) -> None:
        """Log a failed attempt once per distinct reason (then at DEBUG): a broker down for a day is one line."""
        self._failures += 1
        if not self.retry:  # a test connection: its one attempt failed, connect() says why
            self._failure = reason
            self._stop.set()
            self._now.set()
            self._loop.call_soon_threadsafe(self._resolve_first, MqttError(reason))
            return
        if reason == self._failure:
            log.debug("MQTT connect to %s:%s failed again (%d attempts): %s", self.endpoint.host, self.endpoint.port,
                      self._failures, reason)
            return
        self._failure = reason
        log.log(logging.ERROR if operator else logging.WARNING,
                "MQTT connect to %s:%s failed: %s; retrying with back-off up to %.0f s (the same failure again is "
                "logged at DEBUG)", self.endpoint.host, self.endpoint.port, reason, self.backoff.max_s)

    # -- API ---------------------------------------------------------------------------------
    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       content_type: str | None = None) -> asyncio.Future:
        """Hand a message to the broker now; the future resolves on its PUBACK (at once for QoS 0).

        Calls go out in call order, so a publisher can keep a window of messages in flight and stay ordered.
        `content_type`: the MQTT 5 Content Type property (how the payload is encoded: edge/compression.py).
        """
        if not self.connected.is_set():
            raise MqttError("not connected")
        fut = self._loop.create_future()
        props = None
        if content_type is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = content_type
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
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

    @property
    def last_failure(self) -> str | None:
        """Why the last connection attempt failed (None once connected)."""
        return self._failure

    def use_identity(self, cert_file: Path, key_file: Path) -> None:
        """Connect again, at once, with this client certificate and key (certificate rotation, docs/fleet.md): the
        connection ends with a clean DISCONNECT (the broker drops the will: no "offline" for a planned switch) and
        the network thread loads them into the TLS context before its next attempt."""
        if self._ssl_context is None:
            raise MqttError("a plaintext connection has no client certificate")
        self._switching = True
        self.backoff.reset()
        self._identity = (Path(cert_file), Path(key_file))  # the network thread ends the connection (_serve)
        self._now.set()  # or, between attempts, makes the next one now

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:  # the broker closes the socket next: the network thread logs the attempt
            self._why = (f"the broker refused the connection: {reason_code}", True)
            err = MqttError(f"broker refused the connection: {reason_code}")
            self._loop.call_soon_threadsafe(self._resolve_first, err)
            return
        self._session_up = True
        failures, self._failures, self._failure = self._failures, 0, None
        self.backoff.reset()
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        self._loop.call_soon_threadsafe(self._connected, failures, self.endpoint)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._new_link()
        if self._why:
            reason = self._why[0]
        elif reason_code == "Unspecified error" and not flags.is_disconnect_packet_from_server:
            reason = "closed by the peer without a DISCONNECT"  # what paho calls an end of stream
        else:
            reason = str(reason_code)
        self._loop.call_soon_threadsafe(self._disconnected, reason)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho refuses a topic that is not UTF-8; a broker should never forward one
            topic = None
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
        self._loop.call_soon_threadsafe(self._receive, Message(topic, msg.payload, msg.retain, msg.qos, msg.mid,
                                                               self._link, ctype))

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

    def _connected(self, failures: int, at: Endpoint) -> None:
        self.connected.set()
        self.connects += 1
        self._switching = False
        after = f" after {failures} failed attempts" if failures else ""
        log.info("MQTT connected to %s:%s%s", at.host, at.port, after)
        if at.tls is False:
            log.warning("MQTT connected WITHOUT TLS to %s:%s (allow_plaintext is set)", at.host, at.port)
        self._resolve_first(None)
        for hook in self.on_connect_hooks:
            self._loop.create_task(hook())

    def _disconnected(self, reason: str) -> None:
        if self._switching:
            log.info("MQTT connection closed to connect again with a new client certificate")
        elif self.connected.is_set() and not self._closing:
            log.warning("MQTT connection lost: %s", reason)
        self.connected.clear()
        self._fail_pending(MqttError(f"connection lost: {reason}"))

    def _fail_pending(self, err: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
        for fut in pending.values():
            _settle(fut, err)


class _PahoLog:
    """paho's logger. paho tells why a socket died only in its log (an ERROR "failed to receive on socket: %s"
    with the OSError as argument); that error becomes the reason of the failed attempt or lost connection, which
    MqttClient logs once, so here it goes to DEBUG. Everything else goes to the gridedge.paho logger as it is."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client

    def log(self, level: int, msg: str, *args) -> None:
        err = next((a for a in args if isinstance(a, OSError)), None)
        if err is not None:
            if self.client._why is None:  # the first error is the cause; what follows is its consequence
                self.client._why = explain(err, self.client.endpoint)
            level = logging.DEBUG
        _paho_log.log(level, msg, *args)


def explain(exc: BaseException, endpoint: Endpoint) -> tuple[str, bool]:
    """Why a connection attempt failed, in words an operator can act on, and whether it needs one (a certificate
    or a refusal) rather than patience (a broker that is down or unreachable)."""
    if isinstance(exc, ssl.SSLCertVerificationError):  # we refused the broker's certificate
        what = _VERIFY.get(exc.verify_code, "was refused").format(host=endpoint.host)
        return f"the broker's certificate {what} (certificate verify failed: {exc.verify_message})", True
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        return f"the connection closed during the TLS handshake ({exc})", False
    if isinstance(exc, ssl.SSLError):  # the broker ended the handshake with an alert, or TLS failed on our side
        alert = (exc.reason or "").partition("ALERT_")[2].lower().replace("_", " ")
        if alert and ("certificate" in alert or alert in ("unknown ca", "access denied")):
            return f"the broker refused our client certificate (TLS alert: {alert})", True
        return f"TLS failed ({exc.reason or exc})", True
    return str(exc) or type(exc).__name__, False


#: OpenSSL's X509_V_ERR_* codes for a broker certificate we refused, as the operator's reason
_VERIFY = {9: "is not valid yet (is the clock right?)", 10: "has expired",
           62: "is not valid for host {host}", 64: "is not valid for host {host}",  # name, IP address mismatch
           # no or unknown issuer, bad signature, self-signed: another CA signed it
           **dict.fromkeys((2, 7, 18, 19, 20, 21), "is not signed by a CA in ca_file")}


class Backoff:
    """Exponential reconnect delay with jitter: a fleet that lost its broker together does not return together.

    Attempt n waits uniformly in [d/2, d] with d = min(max_s, base_s * 2**n) ("equal jitter"); jitter=False waits d
    (what a fleet without jitter does: the storm bench's comparison, not for use).
    """

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None,
                 jitter: bool = True) -> None:
        self.base_s, self.max_s, self.attempt, self.jitter = base_s, max_s, 0, jitter
        self.rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.max_s, self.base_s * 2 ** self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(d / 2, d) if self.jitter else d

    def reset(self) -> None:
        self.attempt = 0


def _settle(fut: asyncio.Future, err: Exception | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)
