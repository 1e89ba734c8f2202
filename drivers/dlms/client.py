"""The client side of one meter: its association (sans-IO xDLMS state) and the async exchange that drives it over
a shared line (transport.py) through HDLC or the wrapper.

    Association      AARQ/AARE with no security, LLS (password) or HLS-GMAC (mechanism 5), ciphering with the
                     global or a dedicated key, invoke ids, the peer's invocation counter checked to go up
    HdlcChannel      one meter's HDLC connection on a (multidrop) line: SNRM/UA, segments, RR
    WrapperChannel   one meter's wPorts on a TCP connection
    Meter            connect + associate on demand, GET (normal, with blocks, with-list), SET, ACTION, release;
                     every failure a DeviceError whose detail is the sample quality (TIMEOUT, COMM_FAILURE,
                     MALFORMED; DEVICE_EXCEPTION when the meter answered "no")

A refused attribute is not a failure of the exchange: get_list() returns an AccessResult in its place.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gridedge.core.model import Detail

from ..modbus import DeviceError
from . import apdu as A
from . import axdr, hdlc, wrapper
from .errors import DlmsError, SecurityError
from .security import (SC_AUTH, SC_AUTH_ENC, InvocationCounter, Keys, ReplayGuard, hls_gmac, is_ciphered,
                       protect, unprotect)

__all__ = ["AUTHENTICATIONS", "Settings", "Association", "HdlcChannel", "WrapperChannel", "Meter",
           "ASSOCIATION_LN", "MAX_RESPONSE"]

log = logging.getLogger(__name__)

AUTHENTICATIONS = {"none": A.MECH_NONE, "low": A.MECH_LOW, "high_gmac": A.MECH_HIGH_GMAC}
ASSOCIATION_LN = bytes((0, 0, 40, 0, 0, 255))      # the current association object (class 15)
MAX_RESPONSE = 4 << 20                             # a block-transfer answer larger than this is refused
_PROPOSED = A.conformance("get", "set", "action", "selective-access", "block-transfer-with-get-or-read",
                          "multiple-references", "attribute0-supported-with-get", "priority-mgmt-supported")


@dataclass(frozen=True)
class Settings:
    """How to reach and associate with one meter."""

    client: int = 16                         # client SAP: 16 public, 32 reading, 1 management (IDIS)
    logical: int = 1                         # server logical device (upper HDLC address, wrapper destination)
    physical: int | None = None              # server physical address on an HDLC line (lower); None: wrapper
    address_size: int | None = None          # HDLC server address bytes (1, 2, 4); None: the smallest that fits
    authentication: str = "none"
    password: bytes = b""                    # LLS
    keys: Keys | None = None                 # suite 0 EK/AK: ciphering (required with high_gmac)
    system_title: bytes = b"GRE\x00\x00\x00\x00\x01"
    dedicated_key: bool = False              # cipher with a fresh per-association key after the AARQ
    max_pdu: int = 0xFFFF
    hdlc_params: hdlc.HdlcParams = hdlc.HdlcParams()

    def __post_init__(self) -> None:
        if self.authentication not in AUTHENTICATIONS:
            raise ValueError(f"authentication must be one of {sorted(AUTHENTICATIONS)}, got {self.authentication!r}")
        if self.authentication == "high_gmac" and self.keys is None:
            raise ValueError("HLS-GMAC needs the encryption and authentication keys")
        if self.keys is not None:
            self.keys.check()
        if len(self.system_title) != 8:
            raise ValueError("the client's system title must be 8 bytes")
        if self.dedicated_key and self.keys is None:
            raise ValueError("a dedicated key needs ciphering (keys)")

    @property
    def ciphered(self) -> bool:
        return self.keys is not None


@dataclass
class Association:
    """xDLMS state of one association, sans-IO: the APDUs to send and the checks of what comes back."""

    settings: Settings
    counter: InvocationCounter = field(default_factory=lambda: InvocationCounter(None))
    server_title: bytes | None = None
    conformance: int = 0
    server_max_pdu: int = 0
    dedicated: bytes | None = None
    _ctos: bytes = b""
    _stoc: bytes = b""
    _invoke: int = 0
    _guard: ReplayGuard = field(default_factory=ReplayGuard)

    def aarq(self) -> bytes:
        s = self.settings
        mech = AUTHENTICATIONS[s.authentication]
        self.dedicated = os.urandom(16) if s.dedicated_key else None
        initiate = A.encode_initiate(A.Initiate(_PROPOSED, s.max_pdu, self.dedicated))
        auth = None
        if mech == A.MECH_LOW:
            auth = s.password
        elif mech == A.MECH_HIGH_GMAC:
            self._ctos = os.urandom(16)
            auth = self._ctos
        if s.ciphered:
            initiate = protect(initiate, SC_AUTH_ENC, s.system_title, self.counter.next(), s.keys)
        self._guard.reset()
        return A.encode_aarq(A.Aarq(A.CONTEXT_LN_CIPHERED if s.ciphered else A.CONTEXT_LN, mech,
                                    s.system_title if s.ciphered else None, auth, initiate))

    def on_aare(self, data: bytes) -> bool:
        """Check the AARE; True if HLS must still be completed (the reply to the meter's challenge)."""
        aare = A.decode_aare(data)
        s = self.settings
        if aare.result != 0:
            why = {1: "no reason given", 2: "application context not supported", 11: "mechanism not recognised",
                   12: "mechanism required", 13: "authentication failure", 14: "authentication required"}
            diag = why.get(aare.diagnostic & 0xFF, f"diagnostic {aare.diagnostic}")
            raise DeviceError(f"association refused: {diag}", Detail.DEVICE_EXCEPTION)
        info = aare.user_info
        if s.ciphered:
            if aare.responding_title is None or len(aare.responding_title) != 8:
                raise DlmsError("ciphered AARE without the meter's 8-byte system title")
            self.server_title = aare.responding_title
            info = self._unwrap(info)
        rsp = A.decode_initiate_response(info)
        if isinstance(rsp, A.ServiceError):
            raise DeviceError(f"initiate refused ({rsp})", Detail.DEVICE_EXCEPTION)
        self.conformance, self.server_max_pdu = rsp.conformance, rsp.max_pdu
        if AUTHENTICATIONS[s.authentication] == A.MECH_HIGH_GMAC:
            if aare.auth_value is None or not 8 <= len(aare.auth_value) <= 64:
                raise DlmsError("HLS AARE without a challenge of 8..64 bytes")
            self._stoc = aare.auth_value
            return True
        return False

    def hls_request(self) -> bytes:
        """The ACTION reply_to_HLS_authentication with f(StoC)."""
        s = self.settings
        f = hls_gmac(s.system_title, self.counter.next(), s.keys, self._stoc)
        return self.wrap(A.encode_request(A.ActionRequest(self.invoke(), A.Method(15, ASSOCIATION_LN, 1),
                                                          axdr.encode(f))))

    def on_hls_reply(self, data: bytes) -> None:
        """The meter's f(CtoS) must check with our challenge: otherwise it does not hold the keys."""
        rsp = A.decode_response(self.unwrap(data))
        if not isinstance(rsp, A.ActionResponse) or rsp.result.code != 0 or not isinstance(rsp.data, bytes):
            raise DeviceError(f"HLS authentication refused by the meter ({rsp!r})", Detail.DEVICE_EXCEPTION)
        f = axdr.decode_all(rsp.data)
        if not isinstance(f, bytes) or len(f) != 17 or f[0] != SC_AUTH:
            raise SecurityError("HLS reply is not SC || IC || GMAC")
        ic = int.from_bytes(f[1:5], "big")
        if hls_gmac(self.server_title, ic, self.settings.keys, self._ctos) != f:
            raise SecurityError("the meter's HLS reply does not check: it does not hold our keys")

    def invoke(self) -> int:
        self._invoke = (self._invoke + 1) & 0x0F
        return A.invoke_byte(self._invoke)

    def wrap(self, plain: bytes) -> bytes:
        s = self.settings
        if not s.ciphered:
            return plain
        return protect(plain, SC_AUTH_ENC, s.system_title, self.counter.next(), s.keys, dedicated_key=self.dedicated)

    def unwrap(self, data: bytes) -> bytes:
        if not self.settings.ciphered:
            if data and is_ciphered(data[0]):
                raise SecurityError("ciphered APDU on an unciphered association")
            return data
        if data and data[0] == A.EXCEPTION_RESPONSE:
            return data                       # sent in clear by meters that cannot decipher what we sent
        return self._unwrap(data)

    def _unwrap(self, data: bytes) -> bytes:
        u = unprotect(data, self.server_title, self.settings.keys, dedicated_key=self.dedicated)
        if u.sc & SC_AUTH_ENC != SC_AUTH_ENC:
            raise SecurityError(f"the meter answered with security control {u.sc:#04x}, not authenticated and "
                                f"encrypted")
        self._guard.check(self.server_title, u.ic)
        return u.apdu

    def release(self) -> bytes:
        return A.encode_release(A.Release(False, 0))


# ---------------------------------------------------------------- channels: one meter's framing on a line

def _failure(line, what: str, errors_before: int) -> DeviceError:
    """No (usable) answer: TIMEOUT for silence, MALFORMED when broken frames arrived."""
    reader = line.reader
    bad = reader.errors[errors_before:] if reader is not None and hasattr(reader, "errors") else []
    if bad:
        return DeviceError(f"{line.name}: {what}: broken answer ({bad[-1]})", Detail.MALFORMED)
    return DeviceError(f"{line.name}: {what}: no answer within {line.timeout_s} s", Detail.TIMEOUT)


class HdlcChannel:
    """One meter's HDLC connection on a line that may carry several meters (multidrop RS-485)."""

    def __init__(self, settings: Settings):
        if settings.physical is None:
            raise ValueError("HDLC needs the meter's physical address")
        self.hdlc = hdlc.HdlcClient(hdlc.client_address(settings.client),
                                    hdlc.server_address(settings.logical, settings.physical, settings.address_size),
                                    settings.hdlc_params)
        self.open = False
        self._pending: list[hdlc.Frame] = []

    @staticmethod
    def reader_for(line) -> hdlc.FrameReader:
        if not isinstance(line.reader, hdlc.FrameReader):
            line.reader = hdlc.FrameReader()
        return line.reader

    async def _frame(self, line, deadline: float, what: str, errors_before: int) -> hdlc.Frame:
        while not self._pending:
            data = await line.recv(deadline)
            if not data:
                raise _failure(line, what, errors_before)
            self._pending.extend(self.reader_for(line).feed(data))
        return self._pending.pop(0)

    def _begin(self, line) -> int:
        line.flush_input()
        reader = self.reader_for(line)
        reader.reset()
        self._pending.clear()
        return len(reader.errors)

    async def connect(self, line) -> None:
        if getattr(line, "mode_e", False) and line.restart_needed:
            await line.start_mode_e()
        errors = self._begin(line)
        await line.send(self.hdlc.connect())
        deadline = time.monotonic() + line.timeout_s
        while True:
            f = await self._frame(line, deadline, "SNRM", errors)
            if f.dst == self.hdlc.client and f.src == self.hdlc.server:
                break
        try:
            self.hdlc.connected(f)
        except hdlc.FrameError as exc:
            raise DeviceError(f"{line.name}: {exc}", Detail.DEVICE_EXCEPTION) from None
        self.open = True

    async def exchange(self, line, apdu: bytes) -> bytes:
        errors = self._begin(line)
        frames = self.hdlc.request_frames(apdu)
        for i, frame in enumerate(frames):
            await line.send(frame)
            if i < len(frames) - 1:
                deadline = time.monotonic() + line.timeout_s
                while (await self._receive(line, deadline, errors))[0] != "rr":
                    pass
        total = 0
        while True:
            deadline = time.monotonic() + line.timeout_s
            kind, data = await self._receive(line, deadline, errors)
            if kind == "ack":
                total += 1
                if total > MAX_RESPONSE // 16:
                    raise DeviceError(f"{line.name}: endless segmented answer", Detail.MALFORMED)
                await line.send(data)
            elif kind == "apdu":
                return data

    async def _receive(self, line, deadline: float, errors: int) -> tuple[str, bytes | None]:
        while True:
            f = await self._frame(line, deadline, "request", errors)
            try:
                kind, data = self.hdlc.receive(f)
            except hdlc.FrameError as exc:
                self.open = False
                raise DeviceError(f"{line.name}: {exc}", Detail.COMM_FAILURE if "link lost" in str(exc)
                                  else Detail.MALFORMED) from None
            if kind != "ignore":
                return kind, data

    async def disconnect(self, line) -> None:
        if self.open:
            self.open = False
            try:
                await line.send(self.hdlc.disconnect())
                await self._frame(line, time.monotonic() + line.timeout_s, "DISC", len(self.reader_for(line).errors))
            except DeviceError:
                pass


class WrapperChannel:
    """One meter (logical device) behind a TCP connection speaking the wrapper."""

    def __init__(self, settings: Settings):
        self.source, self.destination = settings.client, settings.logical
        self.open = False

    async def connect(self, line) -> None:
        await line.connect()
        if not isinstance(line.reader, wrapper.WrapperReader):
            line.reader = wrapper.WrapperReader()
        self.open = True

    async def exchange(self, line, apdu: bytes) -> bytes:
        line.flush_input()
        await line.send(wrapper.encode_wrapper(self.source, self.destination, apdu))
        deadline = time.monotonic() + line.timeout_s
        while True:
            data = await line.recv(deadline)
            if not data:
                raise DeviceError(f"{line.name}: no answer within {line.timeout_s} s", Detail.TIMEOUT)
            try:
                msgs = line.reader.feed(data)
            except wrapper.FrameError as exc:
                await line.close()
                raise DeviceError(f"{line.name}: {exc}", Detail.MALFORMED) from None
            for m in msgs:
                if m.source == self.destination and m.destination == self.source:
                    return m.apdu

    async def disconnect(self, line) -> None:
        self.open = False


# ---------------------------------------------------------------- the meter

class Meter:
    """One meter's client: opens the channel and the association when needed, and re-opens them once when the meter
    has dropped them (it answers DM, or an exception-response). `line` is passed to every call: the bus owns it."""

    def __init__(self, settings: Settings, *, counter: InvocationCounter | None = None, name: str = "meter"):
        self.settings = settings
        self.name = name
        self.channel = HdlcChannel(settings) if settings.physical is not None else WrapperChannel(settings)
        self.assoc = Association(settings, counter or InvocationCounter(None))
        self.associated = False
        self.associations = 0            # how many times it associated (re-associations show in logs and tests)

    def _lost(self) -> None:
        self.associated = False
        self.channel.open = False

    async def _raw(self, line, apdu: bytes) -> bytes:
        try:
            return await self.channel.exchange(line, apdu)
        except DeviceError:
            self._lost()
            raise

    async def associate(self, line) -> None:
        try:
            await self.channel.connect(line)
            a = self.assoc
            if a.on_aare(await self._raw(line, a.aarq())):
                a.on_hls_reply(await self._raw(line, a.hls_request()))
        except DlmsError as exc:
            self._lost()
            raise DeviceError(f"{self.name}: association failed: {exc}", Detail.MALFORMED) from None
        except DeviceError as exc:
            self._lost()
            if getattr(line, "mode_e", False):
                line.restart_needed = True
            raise DeviceError(f"{self.name}: association failed: {exc}", exc.detail) from None
        self.associated = True
        self.associations += 1

    async def request(self, line, plain: bytes) -> Any:
        """Send one request (ciphered as the association says); returns the decoded response. Associates first if
        needed, and once more if the meter turns out to have dropped the association."""
        for attempt in (0, 1):
            fresh = not self.associated
            if fresh:
                await self.associate(line)
            try:
                rsp = A.decode_response(self.assoc.unwrap(await self._raw(line, self.assoc.wrap(plain))))
            except DeviceError as exc:
                if attempt == 0 and not fresh and exc.detail in (Detail.COMM_FAILURE, Detail.MALFORMED):
                    log.info("%s: association lost (%s), associating again", self.name, exc)
                    self._lost()
                    continue
                raise
            except DlmsError as exc:
                self._lost()
                raise DeviceError(f"{self.name}: bad answer: {exc}", Detail.MALFORMED) from None
            if isinstance(rsp, A.ExceptionResponse):
                self._lost()
                if rsp.service_error == 6 and rsp.detail is not None:
                    self.assoc.counter.skip_to(rsp.detail)
                if attempt == 0 and not fresh:
                    log.info("%s: meter answered %s, associating again", self.name, rsp)
                    continue
                raise DeviceError(f"{self.name}: meter answered exception {rsp}", Detail.DEVICE_EXCEPTION)
            return rsp
        raise AssertionError("unreachable")

    async def get(self, line, attr: A.Attribute, selection: A.Selection | None = None) -> Any:
        """One attribute's value (decoded A-XDR), or its AccessResult. Follows block transfer."""
        a = self.assoc
        rsp = await self.request(line, A.encode_request(A.GetRequest(a.invoke(), attr, selection)))
        if isinstance(rsp, A.GetResponse):
            return rsp.result if isinstance(rsp.result, A.AccessResult) else self._decode(rsp.result)
        if isinstance(rsp, A.GetBlock):
            return await self._blocks(line, rsp)
        raise DeviceError(f"{self.name}: GET answered with {type(rsp).__name__}", Detail.MALFORMED)

    async def _blocks(self, line, rsp: A.GetBlock) -> Any:
        raw = bytearray()
        expected = 1
        while True:
            if isinstance(rsp.raw, A.AccessResult):
                return rsp.raw
            if rsp.block != expected:
                self._lost()
                raise DeviceError(f"{self.name}: block {rsp.block} where {expected} was expected", Detail.MALFORMED)
            raw += rsp.raw
            if len(raw) > MAX_RESPONSE:
                self._lost()
                raise DeviceError(f"{self.name}: answer larger than {MAX_RESPONSE} bytes", Detail.MALFORMED)
            if rsp.last:
                return self._decode(bytes(raw))
            nxt = await self.request(line, A.encode_request(A.GetNext(self.assoc.invoke(), rsp.block)))
            if not isinstance(nxt, A.GetBlock):
                raise DeviceError(f"{self.name}: block transfer answered with {type(nxt).__name__}", Detail.MALFORMED)
            rsp = nxt
            expected += 1

    def _decode(self, raw: bytes) -> Any:
        try:
            return axdr.decode_all(raw)
        except DlmsError as exc:
            raise DeviceError(f"{self.name}: bad value: {exc}", Detail.MALFORMED) from None

    async def get_list(self, line, attrs: list[A.Attribute]) -> list[Any]:
        """Several attributes in one request (multiple-references), else one by one. Values or AccessResults."""
        if len(attrs) == 1:
            return [await self.get(line, attrs[0])]
        if not self.associated:
            await self.associate(line)
        if not self.assoc.conformance & A.conformance("multiple-references"):
            return [await self.get(line, a) for a in attrs]
        rsp = await self.request(line, A.encode_request(A.GetWithList(self.assoc.invoke(),
                                                                      tuple((a, None) for a in attrs))))
        if isinstance(rsp, A.GetBlock):
            rsp = await self._blocks_list(line, rsp)
        if not isinstance(rsp, A.GetListResponse) or len(rsp.results) != len(attrs):
            raise DeviceError(f"{self.name}: GET with-list answered with {type(rsp).__name__}", Detail.MALFORMED)
        return [r if isinstance(r, A.AccessResult) else self._decode(r) for r in rsp.results]

    async def _blocks_list(self, line, first: A.GetBlock) -> A.GetListResponse:
        """A with-list answer sent in blocks: the blocks hold count + results, as a get-response-with-list body."""
        raw = await self._raw_blocks(line, first)
        try:
            return A.decode_response(bytes((A.GET_RESPONSE, 3, first.invoke)) + raw)
        except DlmsError as exc:
            raise DeviceError(f"{self.name}: bad with-list answer: {exc}", Detail.MALFORMED) from None

    async def _raw_blocks(self, line, rsp: A.GetBlock) -> bytes:
        raw = bytearray()
        while True:
            if isinstance(rsp.raw, A.AccessResult):
                raise DeviceError(f"{self.name}: block transfer refused: {rsp.raw.name}", Detail.DEVICE_EXCEPTION)
            raw += rsp.raw
            if rsp.last or len(raw) > MAX_RESPONSE:
                return bytes(raw)
            rsp = await self.request(line, A.encode_request(A.GetNext(self.assoc.invoke(), rsp.block)))
            if not isinstance(rsp, A.GetBlock):
                raise DeviceError(f"{self.name}: block transfer answered with {type(rsp).__name__}", Detail.MALFORMED)

    async def set(self, line, attr: A.Attribute, value: Any) -> A.AccessResult:
        rsp = await self.request(line, A.encode_request(A.SetRequest(self.assoc.invoke(), attr, axdr.encode(value))))
        if not isinstance(rsp, A.SetResponse):
            raise DeviceError(f"{self.name}: SET answered with {type(rsp).__name__}", Detail.MALFORMED)
        return rsp.result

    async def action(self, line, method: A.Method, parameter: Any = None) -> tuple[A.AccessResult, Any]:
        param = None if parameter is None else axdr.encode(parameter)
        rsp = await self.request(line, A.encode_request(A.ActionRequest(self.assoc.invoke(), method, param)))
        if not isinstance(rsp, A.ActionResponse):
            raise DeviceError(f"{self.name}: ACTION answered with {type(rsp).__name__}", Detail.MALFORMED)
        data = rsp.data if not isinstance(rsp.data, bytes) else self._decode(rsp.data)
        return rsp.result, data

    async def release(self, line) -> None:
        """Release the association and the HDLC connection (best effort: the meter may be gone)."""
        if self.associated:
            self.associated = False
            try:
                await self.channel.exchange(line, self.assoc.release())
            except (DeviceError, DlmsError):
                pass
        await self.channel.disconnect(line)
