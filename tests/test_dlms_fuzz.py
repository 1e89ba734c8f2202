"""Every DLMS decoder, 100,000 hostile inputs each (a seeded plain loop, so it runs in seconds): random bytes and
mutations of valid messages (bit flips, truncation, splices of two messages, length fields changed, bytes inserted
and deleted). Only the documented errors may come out (DlmsError: FrameError, DecodeError, SecurityError; the
stream readers report broken frames in `errors` instead), and nothing may hang or grow without bound.

hypothesis covers structure (round trips) in test_dlms_codec.py; this is the volume."""
from __future__ import annotations

import random

import pytest

from gridedge.drivers.dlms import apdu as A
from gridedge.drivers.dlms import axdr, cosem, hdlc, mbus, security, wrapper
from gridedge.drivers.dlms.errors import DlmsError
from gridedge.drivers.dlms.obismap import load_obis_map
from gridedge.drivers.dlms.push import PushDecoder, tagged_values
from gridedge.drivers.dlms.iec21 import parse_identification

N = 100_000
KEYS = security.Keys(bytes(range(16)), bytes(range(16, 32)))
TITLE = b"SIM\x00\x00\x00\x00\x01"


def _corpus() -> dict[str, list[bytes]]:
    attr = A.Attribute(7, cosem.obis("1.0.99.1.0"), 2)
    entry = (axdr.DateTime.from_ns(1_700_000_000 * 10**9, -60, 0), axdr.u8(0), *(axdr.u32(10**6 + i) for i in range(6)))
    profile = axdr.encode([entry] * 9)              # past 8 rows: the row fast path of the decoder
    requests = [A.encode_request(r) for r in (
        A.GetRequest(0xC1, attr, cosem.range_selection(0, 10**18, -60)), A.GetNext(0xC1, 3),
        A.GetWithList(0xC1, ((attr, None), (A.Attribute(3, cosem.obis("1.0.1.8.0"), 2), None))),
        A.SetRequest(0xC1, A.Attribute(8, cosem.CLOCK_OBIS, 2), axdr.encode(axdr.DateTime.from_ns(0))),
        A.ActionRequest(0xC1, A.Method(15, b"\0\0\x28\0\0\xff", 1), axdr.encode(b"x" * 17)))]
    responses = [A.encode_response(r) for r in (
        A.GetResponse(0xC1, profile), A.GetBlock(0xC1, False, 1, profile[:20]),
        A.GetListResponse(0xC1, (axdr.encode(5), A.AccessResult(4))), A.SetResponse(0xC1, A.AccessResult(0)),
        A.ActionResponse(0xC1, A.AccessResult(0), axdr.encode(b"f" * 17)), A.ExceptionResponse(1, 6, 77))]
    notification = A.encode_notification(A.DataNotification(7, axdr.DateTime.from_ns(0), axdr.encode(
        (cosem.CLOCK_OBIS, b"x" * 12, (cosem.obis("1.0.1.8.0"), axdr.u32(9), (axdr.i8(0), axdr.enum(30)))))))
    ciphered = [security.protect(r, 0x30, TITLE, 9, KEYS) for r in responses[:3]]
    ciphered.append(security.protect(notification, 0x30, TITLE, 9, KEYS, general=True))
    frames = [hdlc.encode_frame(hdlc.Frame(hdlc.client_address(16), hdlc.server_address(1, 17), c, i, s))
              for c, i, s in ((hdlc.SNRM, hdlc.encode_params(hdlc.HdlcParams()), False),
                              (hdlc.i_control(1, 2), hdlc.LLC_RESPONSE + responses[0][:40], True),
                              (hdlc.rr_control(3), b"", False), (hdlc.UI, hdlc.LLC_RESPONSE + notification, False))]
    return {
        "frames": frames, "params": [hdlc.encode_params(hdlc.HdlcParams(512, 256, 1, 7))],
        "wrapper": [wrapper.encode_wrapper(16, 1, r) for r in requests[:2]],
        "mbus": [mbus.encode_mbus(notification, 40)],
        "axdr": [profile, axdr.encode(axdr.CompactArray(("structure", (axdr.UINT32, axdr.OCTET_STRING)), [(1, b"a")])),
                 axdr.encode((axdr.BitString("1011"), 1.5, "text", True, None, [axdr.i64(-5)]))],
        "aarq": [A.encode_aarq(A.Aarq(A.CONTEXT_LN_CIPHERED, A.MECH_HIGH_GMAC, TITLE, b"c" * 16, ciphered[0]))],
        "aare": [A.encode_aare(A.Aare(A.CONTEXT_LN_CIPHERED, 0, 14, TITLE, A.MECH_HIGH_GMAC, b"s" * 16, b"\x28\x01"))],
        "release": [A.encode_release(A.Release(False, 0)), A.encode_release(A.Release(True, 0, b"\x21\x02"))],
        "initiate": [A.encode_initiate(A.Initiate(0x7E1F, 1024, b"k" * 16))],
        "initiate_response": [A.encode_initiate_response(A.InitiateResponse(0x7E1F, 1024))],
        "requests": requests, "responses": responses, "notification": [notification], "ciphered": ciphered,
        "identification": [b"/GRE5\\2SIMMETER\r\n"],
    }


CORPUS = _corpus()


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        if op == 0 and data:                                        # bit flips
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:                                      # truncation
            del data[rng.randrange(len(data)):]
        elif op == 2:                                               # splice with another message
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data[rng.randrange(len(data) + 1):] = other[cut:]
        elif op == 3 and len(data) > 2:                             # a length or count field changed
            i = rng.randrange(min(len(data), 12))
            data[i] = rng.choice((0, 1, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF, data[i] + 1 & 0xFF))
        elif op == 4:                                               # bytes inserted
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 4))
        elif op == 5 and data:                                      # bytes deleted
            i = rng.randrange(len(data))
            del data[i:i + rng.randint(1, 4)]
        else:                                                       # a random byte anywhere
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _inputs(seed_name: str, seeds: list[bytes], n: int = N):
    rng = random.Random(f"dlms-fuzz-{seed_name}")
    for k in range(n):
        yield rng.randbytes(rng.randint(0, 48)) if k % 3 == 0 else _mutate(rng, seeds)


def _never_raises_other_than_dlms_error(fn, seeds_name: str, seeds: list[bytes]) -> int:
    ok = 0
    for data in _inputs(seeds_name, seeds):
        try:
            fn(data)
            ok += 1
        except DlmsError:
            pass
    return ok


DECODERS = {
    "hdlc.decode_frame": (hdlc.decode_frame, "frames"),
    "hdlc.decode_params": (hdlc.decode_params, "params"),
    "wrapper.decode_wrapper": (wrapper.decode_wrapper, "wrapper"),
    "axdr.decode_all": (axdr.decode_all, "axdr"),
    "axdr.DateTime.decode+to_ns": (lambda b: axdr.DateTime.decode(b[:12]).to_ns(), "axdr"),
    "apdu.decode_aarq": (A.decode_aarq, "aarq"),
    "apdu.decode_aare": (A.decode_aare, "aare"),
    "apdu.decode_release": (A.decode_release, "release"),
    "apdu.decode_initiate": (A.decode_initiate, "initiate"),
    "apdu.decode_initiate_response": (A.decode_initiate_response, "initiate_response"),
    "apdu.decode_request": (A.decode_request, "requests"),
    "apdu.decode_response": (A.decode_response, "responses"),
    "apdu.decode_notification": (A.decode_notification, "notification"),
    "security.unprotect": (lambda b: security.unprotect(b, TITLE, KEYS, dedicated_key=bytes(16)), "ciphered"),
    "cosem.capture_objects": (lambda b: cosem.capture_objects(axdr.decode_all(b)), "axdr"),
    "cosem.parse_scaler_unit": (lambda b: cosem.parse_scaler_unit(axdr.decode_all(b)), "axdr"),
    "push.tagged_values": (lambda b: tagged_values(axdr.decode_all(b)), "axdr"),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_takes_100000_hostile_inputs(name):
    fn, corpus = DECODERS[name]
    accepted = _never_raises_other_than_dlms_error(fn, name, CORPUS[corpus])
    assert accepted < N          # the mutations do reach the error paths


def test_iec62056_21_identification_takes_100000_hostile_inputs():
    """The mode E start-up parses what the optical port sends: ValueError (documented) or an answer."""
    for data in _inputs("identification", CORPUS["identification"]):
        try:
            parse_identification(data)
        except ValueError:
            pass


@pytest.mark.parametrize("kind", ["hdlc", "wrapper", "mbus", "push"])
def test_stream_readers_take_100000_hostile_chunks(kind):
    """The readers keep state across chunks: feed them 100,000 hostile chunks in a row; broken frames are counted,
    never raised (the wrapper raises FrameError: its stream cannot resynchronise), and the buffer stays bounded."""
    seeds = {"hdlc": CORPUS["frames"], "wrapper": CORPUS["wrapper"], "mbus": CORPUS["mbus"],
             "push": CORPUS["frames"] + CORPUS["mbus"]}[kind]
    make = {"hdlc": hdlc.FrameReader, "wrapper": wrapper.WrapperReader, "mbus": mbus.MbusReader,
            "push": lambda: PushDecoder("p", load_obis_map("han_austria"), KEYS)}[kind]
    reader = make()
    out = 0
    for data in _inputs(f"stream-{kind}", seeds):
        try:
            out += len(reader.feed(data))
        except DlmsError:
            assert kind == "wrapper"
            reader = make()
        buf = getattr(reader, "_buf", None) or getattr(getattr(reader, "hdlc", None), "_buf", b"")
        assert len(buf) <= 70_000
    assert out > 0                 # valid frames among the chunks still come through
