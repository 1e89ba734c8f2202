"""OPC UA client driver: one subscription with many monitored items, data changes -> canonical Samples.

Why subscriptions: a substation RTU or PMU concentrator exposes hundreds of values; polling them costs a read per
cycle and hides changes between cycles, while one subscription lets the server push only what changed (with the
source timestamp of the change). Never one subscription per item (domain brief, section 5).

Quality: the OPC UA StatusCode of each DataValue maps onto IEC 61850-7-3 validity (Good -> GOOD, Uncertain ->
QUESTIONABLE, Bad -> INVALID) with a detail that says why (BadNotConnected -> COMM_FAILURE, BadTimeout -> TIMEOUT...).

Session loss (server restart, dropped link): the device reports every point INVALID / COMM_FAILURE once, then
reconnects with exponential back-off on a fresh client and re-creates its subscription and monitored items; the
server then sends the current value of every item, so the process image heals by itself. The driver is read-only.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent
from asyncua.crypto import security_policies

from gridedge.core.model import Detail, Sample, Validity, invalid
from gridedge.core.text import escape

from .modbus import DeviceError

log = logging.getLogger("gridedge.drivers.opcua")

__all__ = ["OpcUaDevice", "OpcUaError", "OpcUaSecurity", "quality", "unit_for", "to_value", "ts_ns",
           "STATUS_SUFFIXES"]

#: Unit per canonical name (the last dotted component of a point name: "F1.W" -> "W"). SI symbols as in SunSpec.
UNITS = {
    "W": "W", "VAr": "var", "VA": "VA", "PF": "", "Hz": "Hz", "A": "A",
    "PhVphA": "V", "PhVphB": "V", "PhVphC": "V", "PPVphAB": "V", "PPVphBC": "V", "PPVphCA": "V",
    "AphA": "A", "AphB": "A", "AphC": "A",
    "TotWhImp": "Wh", "TotWhExp": "Wh", "TotVArhImp": "varh", "TotVArhExp": "varh",
    "Ang": "deg", "ROCOF": "Hz/s", "Pos": "", "stVal": "",
}
#: Point names ending like this are status (event-worthy: every change matters, not only the periodic image).
STATUS_SUFFIXES = (".Pos", ".stVal")

_POLICIES = {"Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256}
_MODES = {"SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt, "Sign": ua.MessageSecurityMode.Sign}


class OpcUaError(DeviceError):
    """Connecting to (or configuring) an OPC UA server failed; `detail` says why."""


@dataclass(frozen=True)
class OpcUaSecurity:
    """Message security for the secure channel. server_cert pins the server (recommended); None takes whatever
    certificate the server's endpoint offers (trust on first use: bench only)."""

    policy: str
    mode: str
    client_cert: Path
    client_key: Path
    server_cert: Path | None = None

    @classmethod
    def parse(cls, sec: Any) -> "OpcUaSecurity | None":
        """None, ("None", ...), an OpcUaSecurity, or a (policy, mode, client_cert, client_key[, server_cert]) tuple."""
        if sec is None or isinstance(sec, str) and sec == "None":
            return None
        if isinstance(sec, (tuple, list)) and sec and sec[0] == "None":
            return None
        if isinstance(sec, (tuple, list)):
            if len(sec) not in (4, 5):
                raise ValueError("security must be (policy, mode, client_cert, client_key, server_cert), "
                                 f"got {len(sec)} items")
            sec = cls(sec[0], sec[1], Path(sec[2]), Path(sec[3]), Path(sec[4]) if len(sec) == 5 and sec[4] else None)
        if not isinstance(sec, cls):
            raise ValueError(f"security must be None, a tuple or OpcUaSecurity, got {type(sec).__name__}")
        if sec.policy not in _POLICIES:
            raise ValueError(f"unsupported security policy {sec.policy!r}; use one of {sorted(_POLICIES)} or None")
        if sec.mode not in _MODES:
            raise ValueError(f"unsupported security mode {sec.mode!r}; use one of {sorted(_MODES)}")
        for label, p in (("client_cert", sec.client_cert), ("client_key", sec.client_key),
                         ("server_cert", sec.server_cert)):
            if p is not None and not Path(p).is_file():
                raise ValueError(f"security {label}: no such file {str(p)!r}")
        return sec


# ---------------------------------------------------------------------- pure mapping (fuzz-tested)

_COMM = {"BadNotConnected", "BadCommunicationError", "BadNoCommunication", "BadServerNotConnected",
         "BadConnectionClosed", "BadShutdown", "BadServerHalted", "BadSecureChannelClosed", "BadSessionClosed",
         "BadSessionIdInvalid", "BadConnectionRejected", "BadDisconnect", "BadTcpInternalError",
         "BadOutOfService"}
_TIMEOUT = {"BadTimeout", "BadRequestTimeout", "BadWaitingForInitialData", "BadSubscriptionIdInvalid"}
_REFERENCE = {"BadNodeIdUnknown", "BadNodeIdInvalid", "BadAttributeIdInvalid", "BadNotReadable",
              "BadUserAccessDenied", "BadIndexRangeInvalid", "BadIndexRangeNoData", "BadTypeMismatch"}
_RANGE = {"BadOutOfRange", "UncertainEngineeringUnitsExceeded"}
_OLD = {"UncertainLastUsableValue", "UncertainNoCommunicationLastUsableValue", "UncertainInitialValue",
        "BadLastKnownValue"}


def _status_name(code: int) -> str:
    name, _ = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)   # low 16 bits are info bits (overflow, limits)
    return name


def quality(code: int | ua.StatusCode | None) -> tuple[Validity, Detail]:
    """OPC UA StatusCode -> (IEC 61850 validity, detail). Severity is the top two bits (Part 4, 7.39)."""
    if code is None:
        return Validity.GOOD, Detail.NONE
    value = code.value if isinstance(code, ua.StatusCode) else int(code)
    value &= 0xFFFFFFFF
    severity = value >> 30
    name = _status_name(value)
    if severity == 0:
        return Validity.GOOD, (Detail.SUBSTITUTED if name == "GoodLocalOverride" else Detail.NONE)
    if severity == 1:
        if name in _OLD:
            return Validity.QUESTIONABLE, Detail.OLD_DATA
        if name in _RANGE:
            return Validity.QUESTIONABLE, Detail.OUT_OF_RANGE
        if name == "UncertainSubstituteValue":
            return Validity.QUESTIONABLE, Detail.SUBSTITUTED
        return Validity.QUESTIONABLE, Detail.NONE
    # severity 2 (Bad) and 3 (reserved, treated as Bad)
    if name in _COMM:
        return Validity.INVALID, Detail.COMM_FAILURE
    if name in _TIMEOUT:
        return Validity.INVALID, Detail.TIMEOUT
    if name in _REFERENCE:
        return Validity.INVALID, Detail.BAD_REFERENCE
    if name in _RANGE:
        return Validity.INVALID, Detail.OUT_OF_RANGE
    if name in _OLD:
        return Validity.INVALID, Detail.OLD_DATA
    return Validity.INVALID, Detail.DEVICE_EXCEPTION


def unit_for(point: str) -> str:
    """Unit of a point from its canonical name ("F1.W" -> "W", "F1.XCBR1.Pos" -> ""); unknown names -> ""."""
    return UNITS.get(point.rsplit(".", 1)[-1], "")


def to_value(v: Any) -> tuple[bool, float | int | str | None]:
    """(ok, value) for a Sample: numbers and text pass, bool -> 0/1, enums -> int; arrays, structures and
    non-finite floats are not a scalar measurement (ok=False)."""
    if isinstance(v, bool):
        return True, int(v)
    if isinstance(v, int):        # includes IntEnum
        return True, int(v)
    if isinstance(v, float):
        return (True, v) if math.isfinite(v) else (False, None)
    if isinstance(v, str):
        return True, v
    return False, None


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def ts_ns(dt: _dt.datetime | None, fallback_ns: int) -> int:
    """UTC ns since the epoch from an OPC UA DateTime (naive = UTC); None or pre-1970 -> fallback."""
    if dt is None:
        return fallback_ns
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    delta = dt - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return ns if ns > 0 else fallback_ns


# ---------------------------------------------------------------------- helpers

def _der_cert(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    data = Path(path).read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    return cert.public_bytes(serialization.Encoding.DER)


def _der_key(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    data = Path(path).read_bytes()
    key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
           else serialization.load_der_private_key(data, None))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: Basic256Sha256 needs an RSA key, got {type(key).__name__} "
                         "(hil/opcua_certs.py makes suitable RSA certificates)")
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_uri(der: bytes) -> str | None:
    from cryptography import x509
    try:
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _connect_error(device_id: str, endpoint: str, exc: BaseException) -> OpcUaError:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return OpcUaError(f"{device_id}: {endpoint}: no answer (timeout)", Detail.TIMEOUT)
    if isinstance(exc, ua.UaStatusCodeError):
        name = _status_name(exc.code) if isinstance(getattr(exc, "code", None), int) else type(exc).__name__
        v, d = quality(exc.code) if isinstance(getattr(exc, "code", None), int) else (None, Detail.DEVICE_EXCEPTION)
        if d is Detail.BAD_REFERENCE:
            d = Detail.DEVICE_EXCEPTION
        return OpcUaError(f"{device_id}: {endpoint}: server refused: {name}", d)
    if isinstance(exc, ua.UaError):   # e.g. "No matching endpoints": the server does not offer our security
        return OpcUaError(f"{device_id}: {endpoint}: rejected: {exc}", Detail.DEVICE_EXCEPTION)
    if isinstance(exc, OSError):
        return OpcUaError(f"{device_id}: {endpoint}: cannot connect: {exc.strerror or exc}", Detail.COMM_FAILURE)
    return OpcUaError(f"{device_id}: {endpoint}: connect failed: {type(exc).__name__}: {exc}", Detail.COMM_FAILURE)


class _Session:
    """One client connection with its subscription; replaced as a whole after a loss."""

    def __init__(self, client: Client):
        self.client = client
        self.sub = None
        self.lost = asyncio.Event()
        self.reason = ""
        self.consumer: asyncio.Task | None = None


_CLOSED = object()


class OpcUaDevice:
    """A read-only OPC UA data source (RTU, PMU concentrator, meter gateway) exposed as canonical points.

    nodes: point name -> node id ("ns=2;s=F1.MMXU1.TotW"). Samples are named "<device_id>/<point name>".
    """

    capability = "meter"

    def __init__(self, device_id: str, endpoint: str, nodes: dict[str, str], *, security: Any = None,
                 publishing_ms: float = 500.0, sampling_ms: float | None = None, units: dict[str, str] | None = None,
                 timeout_s: float = 4.0, watchdog_s: float = 1.0, backoff_s: tuple[float, float] = (0.5, 30.0),
                 session_timeout_ms: int = 60_000, queue_max: int = 100_000):
        if not isinstance(device_id, str) or not device_id or "/" in device_id:
            raise ValueError(f"device_id must be a non-empty string without '/', got {device_id!r}")
        u = urlparse(endpoint) if isinstance(endpoint, str) else None
        if u is None or u.scheme != "opc.tcp" or not u.hostname:
            raise ValueError(f"{device_id}: endpoint must look like opc.tcp://host:4840/path, got {endpoint!r}")
        try:
            u.port
        except ValueError:
            raise ValueError(f"{device_id}: bad port in endpoint {endpoint!r}") from None
        if not isinstance(nodes, dict) or not nodes:
            raise ValueError(f"{device_id}: nodes must be a non-empty dict of point name -> node id")
        self._by_node: dict[str, list[str]] = {}
        self._node_ids: dict[str, ua.NodeId] = {}
        for point, nid in nodes.items():
            if not isinstance(point, str) or not point or "/" in point:
                raise ValueError(f"{device_id}: point names must be non-empty strings without '/', got {point!r}")
            try:
                parsed = ua.NodeId.from_string(nid) if isinstance(nid, str) else None
            except Exception:
                parsed = None
            if parsed is None:
                raise ValueError(f"{device_id}: point {point!r}: invalid node id {nid!r} "
                                 "(expected e.g. 'ns=2;s=F1.MMXU1.TotW' or 'i=2258')")
            key = parsed.to_string()
            self._node_ids[key] = parsed
            self._by_node.setdefault(key, []).append(point)
        if not publishing_ms > 0:
            raise ValueError(f"{device_id}: publishing_ms must be > 0, got {publishing_ms!r}")
        if not (0 < backoff_s[0] <= backoff_s[1]):
            raise ValueError(f"{device_id}: backoff_s must be (min, max) with 0 < min <= max, got {backoff_s!r}")
        self.device_id = device_id
        self.endpoint = endpoint
        self.nodes = dict(nodes)
        self.security = OpcUaSecurity.parse(security)
        self.publishing_ms = float(publishing_ms)
        self.sampling_ms = float(publishing_ms if sampling_ms is None else sampling_ms)
        self.units = {p: (units or {}).get(p, unit_for(p)) for p in nodes}
        self.timeout_s = timeout_s
        self.watchdog_s = watchdog_s
        self.backoff_s = backoff_s
        self.session_timeout_ms = session_timeout_ms
        self.queue_max = queue_max
        self.latest: dict[str, Sample] = {}
        self.rejected: dict[str, str] = {}      # point -> status name of a monitored item the server refused
        self.reconnects = 0                      # sessions opened after the first one (observability)
        self.dropped = 0                         # samples dropped because a run() sink fell behind
        self.last_error: OpcUaError | None = None
        self.connect_failures = 0               # failed background (re)connect attempts (observability)
        self._session: _Session | None = None
        self._supervisor: asyncio.Task | None = None
        self._closing = asyncio.Event()
        self._queues: set[asyncio.Queue] = set()
        self._down_reported = False
        self._opened = 0
        self.connected = asyncio.Event()

    # ------------------------------------------------------------------ public API

    @property
    def status_points(self) -> list[str]:
        """Points whose every change is an event (breaker positions), to be forwarded without waiting."""
        return [p for p in self.nodes if p.endswith(STATUS_SUFFIXES)]

    async def connect(self) -> None:
        """Open the session and the subscription; raises OpcUaError (clear message) if that fails.
        Once connected, the device keeps itself connected (reconnects in the background) until close()."""
        if self._closing.is_set():
            raise OpcUaError(f"{self.device_id}: device is closed", Detail.COMM_FAILURE)
        if self._supervisor is not None and not self._supervisor.done():
            if self.connected.is_set():
                return
            raise self.last_error or OpcUaError(f"{self.device_id}: reconnecting to {self.endpoint}",
                                                Detail.COMM_FAILURE)
        await self._open()
        self._start_supervisor()

    async def run(self, sink: Callable[[list[Sample]], Any]) -> None:
        """Deliver samples to sink(list[Sample]) (sync or async): first the current image, then every change;
        handles reconnects; returns only after close(). Connects in the background if connect() was not called (or failed)."""
        q: asyncio.Queue = asyncio.Queue()
        for s in self.latest.values():   # what arrived before run() started (e.g. initial values after connect())
            q.put_nowait(s)
        self._queues.add(q)
        try:
            self._start_supervisor()
            while True:
                batch = [await q.get()]
                while not q.empty():
                    batch.append(q.get_nowait())
                closed = any(s is _CLOSED for s in batch)
                batch = [s for s in batch if s is not _CLOSED]
                if batch:
                    try:
                        r = sink(batch)
                        if inspect.isawaitable(r):
                            await r
                    except Exception:   # a failing sink must not stop acquisition
                        log.exception("%s: sink raised", self.device_id)
                if closed:
                    return
        finally:
            self._queues.discard(q)

    async def poll(self) -> list[Sample]:
        """The latest sample of every point (for the periodic process image); never raises."""
        if not self._closing.is_set():
            self._start_supervisor()
        now = time.time_ns()
        return [self.latest.get(p) or invalid(self._pid(p), now, Detail.COMM_FAILURE, self.units[p])
                for p in self.nodes]

    async def write_points(self, values: dict[str, float]) -> dict[str, float]:
        raise OpcUaError(f"{self.device_id}: the OPC UA driver is read-only (monitoring); cannot write "
                         f"{sorted(values) if isinstance(values, dict) else values!r}", Detail.BAD_REFERENCE)

    async def close(self) -> None:
        """Stop reconnecting, close the session, end run()."""
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except (asyncio.CancelledError, Exception):
                pass
            self._supervisor = None
        await self._drop(report=False)
        for q in list(self._queues):
            q.put_nowait(_CLOSED)

    def subscription_ids(self) -> list[int]:
        """Ids of this device's live subscriptions (always at most one)."""
        s = self._session
        return [s.sub.subscription_id] if s is not None and s.sub is not None and not s.lost.is_set() else []

    # ------------------------------------------------------------------ internals

    def _pid(self, point: str) -> str:
        return f"{self.device_id}/{point}"

    def _emit(self, samples: list[Sample]) -> None:
        for s in samples:
            self.latest[s.point.split("/", 1)[1]] = s
        for q in self._queues:
            for s in samples:
                if q.qsize() >= self.queue_max:
                    q.get_nowait()
                    self.dropped += 1
                q.put_nowait(s)

    def _start_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name=f"opcua:{self.device_id}")

    async def _supervise(self) -> None:
        backoff = self.backoff_s[0]
        while not self._closing.is_set():
            if self._session is None:
                try:
                    await self._open()
                    backoff = self.backoff_s[0]
                except OpcUaError as exc:
                    self.connect_failures += 1
                    log.warning("%s (retry in %.1f s)", escape(exc, 500), backoff)
                    self._report_down(exc.detail)
                    try:  # not wait_for: on 3.11 it can swallow a cancel racing the event
                        async with asyncio.timeout(backoff):
                            await self._closing.wait()
                    except TimeoutError:
                        pass
                    backoff = min(backoff * 2, self.backoff_s[1])
                    continue
            session = self._session
            await session.lost.wait()
            log.warning("%s: session lost (%s); reconnecting", self.device_id, escape(session.reason))
            await self._drop(report=True)

    def _report_down(self, detail: Detail) -> None:
        """INVALID for every point, once per outage (not once per retry)."""
        if self._down_reported:
            return
        self._down_reported = True
        now = time.time_ns()
        self._emit([invalid(self._pid(p), now, detail, self.units[p]) for p in self.nodes])

    async def _drop(self, report: bool) -> None:
        s, self._session = self._session, None
        self.connected.clear()
        if s is None:
            return
        if s.consumer is not None:
            s.consumer.cancel()
        try:
            await asyncio.wait_for(s.client.disconnect(), self.timeout_s)
        except (asyncio.CancelledError, Exception):   # the server is usually gone: closing is best effort
            log.debug("%s: disconnect after loss failed", self.device_id, exc_info=True)
        if report:
            self._report_down(Detail.COMM_FAILURE)

    async def _open(self) -> None:
        client = Client(self.endpoint, timeout=self.timeout_s, watchdog_intervall=self.watchdog_s)
        client.name = client.description = f"gridedge {self.device_id}"
        client.session_timeout = self.session_timeout_ms
        session = _Session(client)
        sec = self.security
        if sec is not None:
            try:
                cert, key = _der_cert(sec.client_cert), _der_key(sec.client_key)
                server_cert = _der_cert(sec.server_cert) if sec.server_cert else None
            except (OSError, ValueError) as exc:
                raise self._fail(OpcUaError(f"{self.device_id}: cannot load security material: {exc}",
                                            Detail.BAD_REFERENCE)) from None
            uri = _cert_uri(cert)
            if uri:
                client.application_uri = uri    # peers compare the ApplicationUri with the certificate SAN
            try:
                await asyncio.wait_for(client.set_security(_POLICIES[sec.policy], cert, key,
                                                           server_certificate=server_cert, mode=_MODES[sec.mode]),
                                       self.timeout_s * 2)
            except Exception as exc:   # without a pinned server cert, set_security asks the server for endpoints
                raise self._fail(_connect_error(self.device_id, self.endpoint, exc)) from None

        async def on_lost(exc: Exception) -> None:
            session.reason = f"{type(exc).__name__}: {exc}"
            session.lost.set()

        client.connection_lost_callback = on_lost
        try:
            await asyncio.wait_for(client.connect(auto_reconnect=False), self.timeout_s * 2)
        except BaseException as exc:
            try:
                await asyncio.wait_for(client.disconnect(), self.timeout_s)
            except (asyncio.CancelledError, Exception):
                pass
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._fail(_connect_error(self.device_id, self.endpoint, exc)) from None
        try:
            sub = await client.create_subscription(self.publishing_ms, None,
                                                   queue_maxsize=max(1000, 4 * len(self._node_ids)))
            session.sub = sub
            keys = list(self._node_ids)
            results = await sub.subscribe_data_change([client.get_node(self._node_ids[k]) for k in keys],
                                                      sampling_interval=self.sampling_ms)
        except BaseException as exc:
            try:
                await asyncio.wait_for(client.disconnect(), self.timeout_s)
            except (asyncio.CancelledError, Exception):
                pass
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._fail(_connect_error(self.device_id, self.endpoint, exc)) from None
        now = time.time_ns()
        refused: list[Sample] = []
        self.rejected = {}
        for key, r in zip(keys, results):
            if isinstance(r, ua.StatusCode):
                validity, detail = quality(r)
                for p in self._by_node[key]:
                    self.rejected[p] = r.name
                    refused.append(invalid(self._pid(p), now, detail if validity is Validity.INVALID
                                           else Detail.BAD_REFERENCE, self.units[p]))
        if self.rejected:
            log.warning("%s: server refused monitored items: %s", self.device_id, self.rejected)
        session.consumer = asyncio.create_task(self._consume(session), name=f"opcua-events:{self.device_id}")
        self._session = session
        self._opened += 1
        self.reconnects = self._opened - 1
        self._down_reported = False
        self.last_error = None
        self.connected.set()
        if refused:
            self._emit(refused)
        log.info("%s: subscribed to %d nodes on %s (subscription %s)", self.device_id,
                 len(keys) - len(self.rejected), self.endpoint, sub.subscription_id)

    def _fail(self, err: OpcUaError) -> OpcUaError:
        self.last_error = err
        return err

    async def _consume(self, session: _Session) -> None:
        """Turn subscription events into samples until the session ends."""
        try:
            async for ev in session.sub:
                if isinstance(ev, DataChangeEvent):
                    self._emit(self._samples(ev))
                elif isinstance(ev, StatusChangeEvent):
                    st = ev.notification.Status
                    if st is not None and st.is_bad():
                        session.reason = f"subscription status {st.name}"
                        session.lost.set()
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a decoding surprise must end up as a reconnect, not a silent stall
            log.exception("%s: subscription consumer failed", self.device_id)
            session.reason = f"consumer: {type(exc).__name__}: {exc}"
            session.lost.set()

    def _samples(self, ev: DataChangeEvent) -> list[Sample]:
        node = ev.data.subscription_data.node
        points = self._by_node.get(node.nodeid.to_string()) if node is not None else None
        if not points:
            return []
        dv = ev.data.monitored_item.Value
        now = time.time_ns()
        ts = ts_ns(dv.SourceTimestamp or dv.ServerTimestamp, now) if dv is not None else now
        validity, detail = quality(dv.StatusCode if dv is not None else None)
        out = []
        for p in points:
            unit = self.units[p]
            if validity is Validity.INVALID:
                out.append(invalid(self._pid(p), ts, detail, unit))
                continue
            ok, value = to_value(ev.value)
            if not ok:
                out.append(invalid(self._pid(p), ts, Detail.MALFORMED, unit))
                continue
            out.append(Sample(self._pid(p), ts, value, unit, validity, detail))
        return out

