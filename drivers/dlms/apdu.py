"""xDLMS APDUs (IEC 62056-5-3, DLMS UA Green Book), sans-IO: both directions, so the client and the rig's meter
share one codec. Logical-name referencing only (what IDIS meters speak).

    ACSE (BER)   AARQ / AARE (with the xDLMS initiate request/response inside), RLRQ / RLRE
    xDLMS        GET (normal, next block, with-list), SET (normal), ACTION (normal) requests and responses,
                 exception-response, confirmed-service-error, data-notification

Values inside GET/SET/ACTION stay A-XDR (axdr.py). A data-access-result (a "no" for one attribute) is an
AccessResult, not an exception: with-list answers mix values and refusals. Every decoder raises DecodeError.
"""
from __future__ import annotations

import struct
from typing import Any, NamedTuple

from . import axdr
from .errors import DecodeError

__all__ = [
    "AARQ", "AARE", "RLRQ", "RLRE", "GET_REQUEST", "SET_REQUEST", "ACTION_REQUEST", "GET_RESPONSE", "SET_RESPONSE",
    "ACTION_RESPONSE", "EXCEPTION_RESPONSE", "CONFIRMED_SERVICE_ERROR", "DATA_NOTIFICATION", "INITIATE_REQUEST",
    "INITIATE_RESPONSE", "CONTEXT_LN", "CONTEXT_LN_CIPHERED", "MECH_NONE", "MECH_LOW", "MECH_HIGH_GMAC",
    "CONFORMANCE", "conformance", "ACCESS_RESULTS", "AccessResult", "Attribute", "Method", "Selection",
    "Initiate", "InitiateResponse", "Aarq", "Aare", "GetRequest", "GetNext", "GetWithList", "SetRequest",
    "ActionRequest", "GetResponse", "GetBlock", "GetListResponse", "SetResponse", "ActionResponse",
    "ExceptionResponse", "ServiceError", "Release", "DataNotification", "encode_aarq", "decode_aarq",
    "encode_aare", "decode_aare", "encode_initiate", "decode_initiate", "encode_initiate_response",
    "decode_initiate_response", "encode_release", "decode_release", "encode_request", "decode_request",
    "encode_response", "decode_response", "encode_notification", "decode_notification", "invoke_byte",
]

AARQ, AARE, RLRQ, RLRE = 0x60, 0x61, 0x62, 0x63
INITIATE_REQUEST, INITIATE_RESPONSE, CONFIRMED_SERVICE_ERROR, DATA_NOTIFICATION = 0x01, 0x08, 0x0E, 0x0F
GET_REQUEST, SET_REQUEST, ACTION_REQUEST = 0xC0, 0xC1, 0xC3
GET_RESPONSE, SET_RESPONSE, ACTION_RESPONSE = 0xC4, 0xC5, 0xC7
EXCEPTION_RESPONSE = 0xD8

_CONTEXT_OID = bytes.fromhex("608574050801")      # 2.16.756.5.8.1.x application context names
_MECH_OID = bytes.fromhex("608574050802")         # 2.16.756.5.8.2.x authentication mechanisms
CONTEXT_LN, CONTEXT_LN_CIPHERED = 1, 3
MECH_NONE, MECH_LOW, MECH_HIGH_GMAC = 0, 1, 5

#: Conformance block bits (bit 0 is the first bit sent).
CONFORMANCE = {
    "general-protection": 1, "general-block-transfer": 2, "attribute0-supported-with-set": 8,
    "priority-mgmt-supported": 9, "attribute0-supported-with-get": 10, "block-transfer-with-get-or-read": 11,
    "block-transfer-with-set-or-write": 12, "block-transfer-with-action": 13, "multiple-references": 14,
    "data-notification": 16, "access": 17, "get": 19, "set": 20, "selective-access": 21,
    "event-notification": 22, "action": 23,
}


def conformance(*names: str) -> int:
    """The 24-bit conformance block with the named services."""
    v = 0
    for n in names:
        v |= 1 << (23 - CONFORMANCE[n])
    return v


ACCESS_RESULTS = {
    0: "success", 1: "hardware-fault", 2: "temporary-failure", 3: "read-write-denied", 4: "object-undefined",
    9: "object-class-inconsistent", 11: "object-unavailable", 12: "type-unmatched", 13: "scope-of-access-violated",
    14: "data-block-unavailable", 15: "long-get-aborted", 16: "no-long-get-in-progress", 17: "long-set-aborted",
    18: "no-long-set-in-progress", 19: "data-block-number-invalid", 250: "other-reason",
}


class AccessResult(NamedTuple):
    """A refusal of one attribute or method (data-access-result / action-result)."""

    code: int

    @property
    def name(self) -> str:
        return ACCESS_RESULTS.get(self.code, f"code {self.code}")


class Attribute(NamedTuple):
    class_id: int
    obis: bytes
    attribute: int


class Method(NamedTuple):
    class_id: int
    obis: bytes
    method: int


class Selection(NamedTuple):
    """Selective access: selector (1 by range, 2 by entry for a profile) and its parameters (an A-XDR value)."""

    selector: int
    parameters: Any


class Initiate(NamedTuple):
    """xDLMS InitiateRequest."""

    conformance: int
    max_pdu: int = 0xFFFF
    dedicated_key: bytes | None = None
    version: int = 6


class InitiateResponse(NamedTuple):
    conformance: int
    max_pdu: int
    version: int = 6
    vaa: int = 7


class Aarq(NamedTuple):
    context: int = CONTEXT_LN
    mechanism: int = MECH_NONE
    calling_title: bytes | None = None       # the client's system title (ciphered contexts)
    auth_value: bytes | None = None          # LLS password or HLS challenge CtoS
    user_info: bytes = b""                   # the (possibly ciphered) initiate request


class Aare(NamedTuple):
    context: int
    result: int                              # 0 accepted, 1 rejected-permanent, 2 rejected-transient
    diagnostic: int                          # acse-service-user (or -provider, + 0x100): 14 = authentication required
    responding_title: bytes | None = None
    mechanism: int = MECH_NONE
    auth_value: bytes | None = None          # HLS challenge StoC
    user_info: bytes = b""


class GetRequest(NamedTuple):
    invoke: int
    attribute: Attribute
    selection: Selection | None = None


class GetNext(NamedTuple):
    invoke: int
    block: int


class GetWithList(NamedTuple):
    invoke: int
    items: tuple[tuple[Attribute, Selection | None], ...]


class SetRequest(NamedTuple):
    invoke: int
    attribute: Attribute
    value: bytes                             # the encoded A-XDR value
    selection: Selection | None = None


class ActionRequest(NamedTuple):
    invoke: int
    method: Method
    parameter: bytes | None = None           # the encoded A-XDR value, None without one


class GetResponse(NamedTuple):
    invoke: int
    result: bytes | AccessResult             # encoded A-XDR data (decode with axdr) or the refusal


class GetBlock(NamedTuple):
    invoke: int
    last: bool
    block: int
    raw: bytes | AccessResult


class GetListResponse(NamedTuple):
    invoke: int
    results: tuple[bytes | AccessResult, ...]


class SetResponse(NamedTuple):
    invoke: int
    result: AccessResult


class ActionResponse(NamedTuple):
    invoke: int
    result: AccessResult
    data: bytes | AccessResult | None = None


class ExceptionResponse(NamedTuple):
    state_error: int
    service_error: int
    detail: int | None = None                # e.g. the expected invocation counter

    def __str__(self) -> str:
        states = {1: "service-not-allowed", 2: "service-unknown"}
        services = {1: "operation-not-possible", 2: "service-not-supported", 3: "other-reason", 4: "pdu-too-long",
                    5: "deciphering-error", 6: "invocation-counter-error"}
        return f"{states.get(self.state_error, self.state_error)}/{services.get(self.service_error, self.service_error)}"


class ServiceError(NamedTuple):
    """confirmed-service-error: e.g. an InitiateRequest refused (wrong DLMS version, too small a PDU)."""

    service: int
    kind: int
    value: int


class Release(NamedTuple):
    response: bool
    reason: int | None = None
    user_info: bytes | None = None


class DataNotification(NamedTuple):
    invoke: int
    time: axdr.DateTime | None
    body: bytes                              # the encoded A-XDR notification body


def invoke_byte(invoke: int, high_priority: bool = True) -> int:
    """invoke-id-and-priority: id in the low 4 bits, confirmed service class, priority."""
    return (invoke & 0x0F) | 0x40 | (0x80 if high_priority else 0)


# ---------------------------------------------------------------- BER (ACSE)

def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    return bytes((0x82, n >> 8, n & 0xFF))


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _ber_len(len(content)) + content


def _ber_items(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if pos + 1 >= len(data):
            raise DecodeError("BER element ends after its tag")
        n = data[pos + 1]
        pos += 2
        if n & 0x80:
            size = n & 0x7F
            if not 1 <= size <= 2 or pos + size > len(data):
                raise DecodeError(f"bad BER length {n:#04x}")
            n = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        if pos + n > len(data):
            raise DecodeError(f"BER element {tag:#04x} of {n} bytes overruns its container")
        out.append((tag, data[pos:pos + n]))
        pos += n
    return out


def _outer(apdu: bytes, tag: int, name: str) -> list[tuple[int, bytes]]:
    items = _ber_items(apdu)
    if len(items) != 1 or items[0][0] != tag:
        raise DecodeError(f"not an {name}")
    return _ber_items(items[0][1])


def _oid_last(content: bytes, prefix: bytes, what: str, wrapped: bool) -> int:
    if wrapped:
        inner = _ber_items(content)
        if len(inner) != 1 or inner[0][0] != 0x06:
            raise DecodeError(f"{what}: no object identifier")
        content = inner[0][1]
    if len(content) != 7 or content[:6] != prefix:
        raise DecodeError(f"{what}: unknown object identifier {content.hex()}")
    return content[6]


def _octets(content: bytes, tag: int, what: str) -> bytes:
    inner = _ber_items(content)
    if len(inner) != 1 or inner[0][0] != tag:
        raise DecodeError(f"{what}: expected element {tag:#04x}")
    return inner[0][1]


def _small_int(content: bytes, what: str) -> int:
    inner = _ber_items(content)
    if len(inner) != 1 or inner[0][0] != 0x02 or not 1 <= len(inner[0][1]) <= 2:
        raise DecodeError(f"{what}: expected a small integer")
    return int.from_bytes(inner[0][1], "big")


def encode_aarq(a: Aarq) -> bytes:
    body = _tlv(0xA1, _tlv(0x06, _CONTEXT_OID + bytes((a.context,))))
    if a.calling_title is not None:
        body += _tlv(0xA6, _tlv(0x04, a.calling_title))
    if a.mechanism != MECH_NONE:
        body += _tlv(0x8A, b"\x07\x80") + _tlv(0x8B, _MECH_OID + bytes((a.mechanism,)))
        if a.auth_value is not None:
            body += _tlv(0xAC, _tlv(0x80, a.auth_value))
    body += _tlv(0xBE, _tlv(0x04, a.user_info))
    return _tlv(AARQ, body)


def decode_aarq(apdu: bytes) -> Aarq:
    fields: dict[str, Any] = {}
    for tag, content in _outer(apdu, AARQ, "AARQ"):
        if tag == 0xA1:
            fields["context"] = _oid_last(content, _CONTEXT_OID, "application context", True)
        elif tag == 0xA6:
            fields["calling_title"] = _octets(content, 0x04, "calling-AP-title")
        elif tag == 0x8B:
            fields["mechanism"] = _oid_last(content, _MECH_OID, "mechanism name", False)
        elif tag == 0xAC:
            fields["auth_value"] = _octets(content, 0x80, "calling-authentication-value")
        elif tag == 0xBE:
            fields["user_info"] = _octets(content, 0x04, "user-information")
    if "context" not in fields:
        raise DecodeError("AARQ without an application context")
    return Aarq(**fields)


def encode_aare(a: Aare) -> bytes:
    source = 0xA2 if a.diagnostic & 0x100 else 0xA1
    body = (_tlv(0xA1, _tlv(0x06, _CONTEXT_OID + bytes((a.context,)))) + _tlv(0xA2, _tlv(0x02, bytes((a.result,))))
            + _tlv(0xA3, _tlv(source, _tlv(0x02, bytes((a.diagnostic & 0xFF,))))))
    if a.responding_title is not None:
        body += _tlv(0xA4, _tlv(0x04, a.responding_title))
    if a.mechanism != MECH_NONE:
        body += _tlv(0x88, b"\x07\x80") + _tlv(0x89, _MECH_OID + bytes((a.mechanism,)))
        if a.auth_value is not None:
            body += _tlv(0xAA, _tlv(0x80, a.auth_value))
    if a.user_info:
        body += _tlv(0xBE, _tlv(0x04, a.user_info))
    return _tlv(AARE, body)


def decode_aare(apdu: bytes) -> Aare:
    fields: dict[str, Any] = {}
    for tag, content in _outer(apdu, AARE, "AARE"):
        if tag == 0xA1:
            fields["context"] = _oid_last(content, _CONTEXT_OID, "application context", True)
        elif tag == 0xA2:
            fields["result"] = _small_int(content, "result")
        elif tag == 0xA3:
            inner = _ber_items(content)
            if len(inner) != 1 or inner[0][0] not in (0xA1, 0xA2):
                raise DecodeError("result-source-diagnostic: expected acse-service-user or -provider")
            fields["diagnostic"] = _small_int(inner[0][1], "diagnostic") | (0x100 if inner[0][0] == 0xA2 else 0)
        elif tag == 0xA4:
            fields["responding_title"] = _octets(content, 0x04, "responding-AP-title")
        elif tag == 0x89:
            fields["mechanism"] = _oid_last(content, _MECH_OID, "mechanism name", False)
        elif tag == 0xAA:
            fields["auth_value"] = _octets(content, 0x80, "responding-authentication-value")
        elif tag == 0xBE:
            fields["user_info"] = _octets(content, 0x04, "user-information")
    missing = [k for k in ("context", "result", "diagnostic") if k not in fields]
    if missing:
        raise DecodeError(f"AARE without {', '.join(missing)}")
    return Aare(**fields)


def encode_release(r: Release) -> bytes:
    body = b"" if r.reason is None else _tlv(0x80, bytes((r.reason,)))
    if r.user_info:
        body += _tlv(0xBE, _tlv(0x04, r.user_info))
    return _tlv(RLRE if r.response else RLRQ, body)


def decode_release(apdu: bytes) -> Release:
    if not apdu or apdu[0] not in (RLRQ, RLRE):
        raise DecodeError("not a release request or response")
    response = apdu[0] == RLRE
    reason = user_info = None
    for tag, content in _outer(apdu, apdu[0], "RLRE" if response else "RLRQ"):
        if tag == 0x80:
            if len(content) != 1:
                raise DecodeError("release reason of other than one byte")
            reason = content[0]
        elif tag == 0xBE:
            user_info = _octets(content, 0x04, "user-information")
    return Release(response, reason, user_info)


# ---------------------------------------------------------------- initiate (A-XDR inside the ACSE)

def encode_initiate(i: Initiate) -> bytes:
    key = b"\x00" if i.dedicated_key is None else b"\x01" + axdr.encode_length(len(i.dedicated_key)) + i.dedicated_key
    return (bytes((INITIATE_REQUEST,)) + key + b"\x00\x00" + bytes((i.version,)) + b"\x5f\x1f\x04\x00"
            + i.conformance.to_bytes(3, "big") + struct.pack(">H", i.max_pdu))


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise DecodeError(f"APDU ends: {n} byte(s) needed, {len(self.buf) - self.pos} left")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def length(self) -> int:
        n, self.pos = axdr.decode_length(self.buf, self.pos)
        return n

    def octets(self) -> bytes:
        return self.take(self.length())

    def data(self) -> bytes:
        """One A-XDR value, kept encoded (checked, so a broken value fails here, not later)."""
        start = self.pos
        _, self.pos = axdr.decode(self.buf, self.pos)
        return bytes(self.buf[start:self.pos])

    def rest(self) -> bytes:
        v = self.buf[self.pos:]
        self.pos = len(self.buf)
        return bytes(v)

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise DecodeError(f"{what}: {len(self.buf) - self.pos} byte(s) after its end")


def _conformance(r: _Reader) -> int:
    if r.take(4) != b"\x5f\x1f\x04\x00":
        raise DecodeError("conformance block must start 5F 1F 04 00")
    return int.from_bytes(r.take(3), "big")


def decode_initiate(data: bytes) -> Initiate:
    r = _Reader(data)
    if r.u8() != INITIATE_REQUEST:
        raise DecodeError("not an InitiateRequest")
    key = r.octets() if r.u8() else None
    if r.u8():                       # response-allowed given explicitly
        r.u8()
    if r.u8():                       # proposed quality of service
        r.u8()
    version = r.u8()
    conf = _conformance(r)
    max_pdu = r.u16()
    r.end("InitiateRequest")
    return Initiate(conf, max_pdu, key, version)


def encode_initiate_response(i: InitiateResponse) -> bytes:
    return (bytes((INITIATE_RESPONSE, 0, i.version)) + b"\x5f\x1f\x04\x00" + i.conformance.to_bytes(3, "big")
            + struct.pack(">Hh", i.max_pdu, i.vaa))


def decode_initiate_response(data: bytes) -> InitiateResponse | ServiceError:
    r = _Reader(data)
    tag = r.u8()
    if tag == CONFIRMED_SERVICE_ERROR:
        err = ServiceError(r.u8(), r.u8(), r.u8())
        r.end("confirmed-service-error")
        return err
    if tag != INITIATE_RESPONSE:
        raise DecodeError(f"not an InitiateResponse (tag {tag:#04x})")
    if r.u8():
        r.u8()
    version = r.u8()
    conf = _conformance(r)
    max_pdu = r.u16()
    vaa = int.from_bytes(r.take(2), "big", signed=True)
    r.end("InitiateResponse")
    return InitiateResponse(conf, max_pdu, version, vaa)


# ---------------------------------------------------------------- GET / SET / ACTION

def _descriptor(class_id: int, obis: bytes, index: int) -> bytes:
    if len(obis) != 6:
        raise ValueError(f"an OBIS code has 6 bytes, got {len(obis)}")
    return struct.pack(">H", class_id) + obis + struct.pack(">b", index)


def _selection(sel: Selection | None) -> bytes:
    if sel is None:
        return b"\x00"
    return bytes((1, sel.selector)) + axdr.encode(sel.parameters)


def _read_attribute(r: _Reader) -> Attribute:
    return Attribute(r.u16(), bytes(r.take(6)), struct.unpack(">b", r.take(1))[0])


def _read_selection(r: _Reader) -> Selection | None:
    if not r.u8():
        return None
    selector = r.u8()
    value, r.pos = axdr.decode(r.buf, r.pos)
    return Selection(selector, value)


def encode_request(req) -> bytes:
    """Any request NamedTuple above as its APDU (unciphered)."""
    if isinstance(req, GetRequest):
        a = req.attribute
        return bytes((GET_REQUEST, 1, req.invoke)) + _descriptor(*a) + _selection(req.selection)
    if isinstance(req, GetNext):
        return bytes((GET_REQUEST, 2, req.invoke)) + struct.pack(">I", req.block)
    if isinstance(req, GetWithList):
        out = bytes((GET_REQUEST, 3, req.invoke)) + axdr.encode_length(len(req.items))
        for a, sel in req.items:
            out += _descriptor(*a) + _selection(sel)
        return out
    if isinstance(req, SetRequest):
        return bytes((SET_REQUEST, 1, req.invoke)) + _descriptor(*req.attribute) + _selection(req.selection) + req.value
    if isinstance(req, ActionRequest):
        tail = b"\x00" if req.parameter is None else b"\x01" + req.parameter
        return bytes((ACTION_REQUEST, 1, req.invoke)) + _descriptor(*req.method) + tail
    raise TypeError(f"not a request: {req!r}")


def decode_request(apdu: bytes):
    """A GET, SET or ACTION request (what the rig's meter serves). Raises DecodeError."""
    r = _Reader(apdu)
    tag, kind, invoke = r.u8(), r.u8(), r.u8()
    if tag == GET_REQUEST and kind == 1:
        out = GetRequest(invoke, _read_attribute(r), _read_selection(r))
    elif tag == GET_REQUEST and kind == 2:
        out = GetNext(invoke, r.u32())
    elif tag == GET_REQUEST and kind == 3:
        n = r.length()
        if n > len(apdu):
            raise DecodeError(f"with-list of {n} items in {len(apdu)} bytes")
        out = GetWithList(invoke, tuple((_read_attribute(r), _read_selection(r)) for _ in range(n)))
    elif tag == SET_REQUEST and kind == 1:
        a, sel = _read_attribute(r), _read_selection(r)
        out = SetRequest(invoke, a, r.data(), sel)
    elif tag == ACTION_REQUEST and kind == 1:
        m = Method(*_read_attribute(r))
        out = ActionRequest(invoke, m, r.data() if r.u8() else None)
    else:
        raise DecodeError(f"unsupported request {tag:#04x}/{kind}")
    r.end("request")
    return out


def _result(r: _Reader) -> bytes | AccessResult:
    choice = r.u8()
    if choice == 0:
        return r.data()
    if choice == 1:
        return AccessResult(r.u8())
    raise DecodeError(f"result choice {choice}")


def _put_result(res: bytes | AccessResult) -> bytes:
    return bytes((1, res.code)) if isinstance(res, AccessResult) else b"\x00" + res


def encode_response(rsp) -> bytes:
    """Any response NamedTuple above as its APDU (unciphered)."""
    if isinstance(rsp, GetResponse):
        return bytes((GET_RESPONSE, 1, rsp.invoke)) + _put_result(rsp.result)
    if isinstance(rsp, GetBlock):
        head = bytes((GET_RESPONSE, 2, rsp.invoke, 1 if rsp.last else 0)) + struct.pack(">I", rsp.block)
        if isinstance(rsp.raw, AccessResult):
            return head + bytes((1, rsp.raw.code))
        return head + b"\x00" + axdr.encode_length(len(rsp.raw)) + rsp.raw
    if isinstance(rsp, GetListResponse):
        return (bytes((GET_RESPONSE, 3, rsp.invoke)) + axdr.encode_length(len(rsp.results))
                + b"".join(_put_result(x) for x in rsp.results))
    if isinstance(rsp, SetResponse):
        return bytes((SET_RESPONSE, 1, rsp.invoke, rsp.result.code))
    if isinstance(rsp, ActionResponse):
        tail = b"\x00" if rsp.data is None else b"\x01" + _put_result(rsp.data)
        return bytes((ACTION_RESPONSE, 1, rsp.invoke, rsp.result.code)) + tail
    if isinstance(rsp, ExceptionResponse):
        tail = b"" if rsp.detail is None else struct.pack(">I", rsp.detail)
        return bytes((EXCEPTION_RESPONSE, rsp.state_error, rsp.service_error)) + tail
    raise TypeError(f"not a response: {rsp!r}")


def decode_response(apdu: bytes):
    """A GET, SET or ACTION response, an exception-response or a confirmed-service-error. Raises DecodeError."""
    r = _Reader(apdu)
    tag = r.u8()
    if tag == EXCEPTION_RESPONSE:
        state, service = r.u8(), r.u8()
        detail = r.u32() if service == 6 and len(apdu) >= 7 else None
        return ExceptionResponse(state, service, detail)
    if tag == CONFIRMED_SERVICE_ERROR:
        return ServiceError(r.u8(), r.u8(), r.u8())
    kind, invoke = r.u8(), r.u8()
    if tag == GET_RESPONSE and kind == 1:
        out = GetResponse(invoke, _result(r))
    elif tag == GET_RESPONSE and kind == 2:
        last, block = r.u8() != 0, r.u32()
        choice = r.u8()
        if choice == 0:
            out = GetBlock(invoke, last, block, bytes(r.octets()))
        elif choice == 1:
            out = GetBlock(invoke, last, block, AccessResult(r.u8()))
        else:
            raise DecodeError(f"block result choice {choice}")
    elif tag == GET_RESPONSE and kind == 3:
        n = r.length()
        if n > len(apdu):
            raise DecodeError(f"with-list of {n} results in {len(apdu)} bytes")
        out = GetListResponse(invoke, tuple(_result(r) for _ in range(n)))
    elif tag == SET_RESPONSE and kind == 1:
        out = SetResponse(invoke, AccessResult(r.u8()))
    elif tag == ACTION_RESPONSE and kind == 1:
        result = AccessResult(r.u8())
        out = ActionResponse(invoke, result, _result(r) if r.pos < len(apdu) and r.u8() else None)
    else:
        raise DecodeError(f"unsupported response {tag:#04x}/{kind}")
    r.end("response")
    return out


# ---------------------------------------------------------------- push

def encode_notification(n: DataNotification) -> bytes:
    when = b"\x00" if n.time is None else b"\x0c" + n.time.encode()
    return bytes((DATA_NOTIFICATION,)) + struct.pack(">I", n.invoke) + when + n.body


def decode_notification(apdu: bytes) -> DataNotification:
    r = _Reader(apdu)
    if r.u8() != DATA_NOTIFICATION:
        raise DecodeError("not a data-notification")
    invoke = r.u32()
    raw = r.octets()
    when = None
    if raw:
        when = axdr.DateTime.decode(bytes(raw))
    body = r.data()
    r.end("data-notification")
    return DataNotification(invoke, when, body)
