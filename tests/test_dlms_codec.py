"""DLMS/COSEM codecs against published bytes (the DLMS UA Green Book's suite 0 examples, the Austrian HAN port's
worked example, CRC-16/X.25's check value) and round trips with hypothesis (modest example counts; the 100,000-input
fuzz of every decoder is tests/test_dlms_fuzz.py)."""
from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.core.model import Detail, Validity
from gridedge.drivers.dlms import apdu as A
from gridedge.drivers.dlms import axdr, cosem, hdlc, mbus, security, wrapper
from gridedge.drivers.dlms.errors import DecodeError, FrameError, SecurityError
from gridedge.drivers.dlms.obismap import load_obis_map
from gridedge.drivers.dlms.push import PushDecoder, tagged_values

# ---------------------------------------------------------------- published vectors

# Green Book (DLMS UA 1000-2), suite 0 examples: the ciphered xDLMS InitiateRequest and HLS-GMAC (Table 43).
GB_EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
GB_AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
GB_CLIENT_TITLE = bytes.fromhex("4D4D4D0000000001")
GB_SERVER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
GB_INITIATE = bytes.fromhex("01011000112233445566778899AABBCCDDEEFF0000065F1F0400007E1F04B0")
GB_GLO_INITIATE = bytes.fromhex("21303001234567801302FF8A7874133D414CED25B42534D28DB0047720606B175BD52211BE6841DB204D39"
                                "EE6FDB8E356855")
GB_CTOS = bytes.fromhex("4B35366956616759")
GB_F_CTOS = bytes.fromhex("1001234567FE1466AFB3DBCD4F9389E2B7")

# The Austrian HAN port's worked example: two M-Bus frames carrying one general-glo-ciphered DataNotification
# (encryption only, key 10 11 .. 1F), pushed by a Kaifa MA309M on 2021-07-19.
AT_KEY = bytes.fromhex("101112131415161718191A1B1C1D1E1F")
AT_FRAMES = bytes.fromhex(
    "68FAFA6853FF000167DB084B464D101000002382010921"
    "00295B9AEFC1546E644A2C9E32EDD42CBD0F1B945B194D086885C4D8DF86DD52CB5B448854A6D548D5D270739B2A169D05B013F9"
    "015070089D3C5FA45CA05E92309A645CC83D7DA40FBC8F4CF9C225AFA69A25FF0B2AC9C2744550ABA53CE9143FD10B0AD85FD30B"
    "D6B6DFFEE65F8204DC9C5067CA73B62E299A39D50AA730B2B9AE3836BC2F3490FB41BE5B6F930D84952976369DD7DABBB5A4354A"
    "ECA1D2486CFF2EB0C6206380BA501D122AF75D716D3092C3960506A15E06FAB0EE5B7DFA3C2CDF0CAFD051B88E44B8B9FB8865F2"
    "0CB89D1143CDC7EFEB07FB4C4898E764E9E3A32DDC3D1F0F16"
    "6826266853FF110167B46961CE962B2C78050C96598C7E4D26658043F9CBCA78189BD01B139F8AE0F7391116")


def test_crc16_x25_check_value():
    assert hdlc.crc16(b"123456789") == 0x906E


def test_green_book_ciphered_initiate_request():
    """Our cipher gives the Green Book's glo-initiateRequest byte for byte, and deciphers it."""
    keys = security.Keys(GB_EK, GB_AK)
    assert security.protect(GB_INITIATE, 0x30, GB_SERVER_TITLE, 0x01234567, keys) == GB_GLO_INITIATE
    u = security.unprotect(GB_GLO_INITIATE, GB_SERVER_TITLE, keys)
    assert (u.apdu, u.sc, u.ic) == (GB_INITIATE, 0x30, 0x01234567)
    init = A.decode_initiate(GB_INITIATE)
    assert init.dedicated_key == bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    assert (init.conformance, init.max_pdu, init.version) == (0x007E1F, 0x04B0, 6)


def test_green_book_hls_gmac():
    """Table 43: the server's f(CtoS) = SC || IC || GMAC(SC || AK || CtoS)."""
    assert security.hls_gmac(GB_SERVER_TITLE, 0x01234567, security.Keys(GB_EK, GB_AK), GB_CTOS) == GB_F_CTOS


def test_tag_is_checked_with_a_second_oracle():
    """gurux-dlms does not check the tag; we do, and `cryptography`'s own AES-GCM agrees on what a tag is."""
    keys = security.Keys(GB_EK, GB_AK)
    plain = bytes.fromhex("C001C1000800000100FF0200")
    ct = security.cipher(0x30, GB_CLIENT_TITLE, 7, GB_EK, GB_AK, plain)
    oracle = AESGCM(GB_EK).encrypt(GB_CLIENT_TITLE + struct.pack(">I", 7), plain, b"\x30" + GB_AK)
    assert ct[5:] == oracle[:len(plain)] + oracle[len(plain):len(plain) + 12]
    wrapped = security.protect(plain, 0x30, GB_CLIENT_TITLE, 7, keys)
    assert security.unprotect(wrapped, GB_CLIENT_TITLE, keys).apdu == plain
    with pytest.raises(SecurityError, match="tag"):
        security.unprotect(wrapped, GB_CLIENT_TITLE, security.Keys(GB_EK, bytes(16)))        # wrong AK
    for i in range(2, len(wrapped)):
        bad = wrapped[:i] + bytes((wrapped[i] ^ 1,)) + wrapped[i + 1:]
        with pytest.raises((SecurityError, DecodeError)):
            security.unprotect(bad, GB_CLIENT_TITLE, keys)


def test_austrian_han_example_decodes_to_its_published_values():
    reader = mbus.MbusReader()
    (apdu,) = reader.feed(AT_FRAMES)
    u = security.unprotect(apdu, None, security.Keys(AT_KEY, bytes(16)))
    assert (u.sc, u.ic, u.system_title) == (0x21, 0x00295B9A, bytes.fromhex("4B464D1010000023"))
    n = A.decode_notification(u.apdu)
    assert n.time == axdr.DateTime(2021, 7, 19, 1, 15, 46, 35, 0, -120, 0x80)
    assert n.time.to_ns() == 1626702395 * 10**9                     # 13:46:35 UTC: CEST is deviation -120
    dec = PushDecoder("han", load_obis_map("han_austria"), security.Keys(AT_KEY, bytes(16)))
    (block,) = dec.feed(AT_FRAMES, now_ns=0)
    got = dict(zip(block.layout.names, block.values))
    assert got == {"TotWhImp": 9108, "TotWhExp": 0, "TotVArhImp": 96, "TotVArhExp": 9, "W": 0,
                   "PhVphA": pytest.approx(230.8), "AphA": 0.0}      # what it carries: one phase, no power factor
    assert block.ts_ns == 1626702395 * 10**9 and block.quality is None
    assert dec.feed(AT_FRAMES, now_ns=0) == [] and "not above" in dec.last_error   # the same counter again: refused


def test_tagged_values_reads_triples_pairs_and_loose_entries():
    body = (b"\x00\x00\x01\x00\x00\xff", b"x" * 12, (b"\x01\x00\x01\x08\x00\xff", 5, (0, 30)),
            (b"\x00\x00\x60\x01\x00\xff", b"SER"))
    got = tagged_values(body)
    assert got[b"\x01\x00\x01\x08\x00\xff"] == (5, (0, 30))
    assert got[b"\x00\x00\x60\x01\x00\xff"] == (b"SER", None)
    assert got[b"\x00\x00\x01\x00\x00\xff"] == (b"x" * 12, None)


# ---------------------------------------------------------------- HDLC

def test_hdlc_snrm_frame_bytes():
    """An SNRM from public client 16 to logical 1 / physical 17 with default parameters, as meters expect it."""
    c = hdlc.HdlcClient(hdlc.client_address(16), hdlc.server_address(1, 17))
    frame = c.connect()
    # flag, format A0 + 31 bytes, server 1/17 (02 23), client 16 (21), SNRM with poll (93), HCS, 81 80 12 ...
    assert frame[:7].hex() == "7ea01f02232193" and frame[9:12].hex() == "818012" and frame[-1] == 0x7E
    f = hdlc.decode_frame(frame)
    assert (f.control, hdlc.parse_address(f.dst), hdlc.parse_address(f.src)) == (0x93, (1, 17), (16, None))
    assert hdlc.decode_params(f.info) == hdlc.HdlcParams()


@pytest.mark.parametrize("logical, physical, size", [(1, None, 1), (1, 17, 2), (1, 0x1234, 4), (0x3FFF, 0x3FFF, 4)])
def test_hdlc_addresses_round_trip(logical, physical, size):
    raw = hdlc.server_address(logical, physical)
    assert len(raw) == size and hdlc.parse_address(raw) == (logical, physical)


def test_frame_reader_takes_shared_flags_idle_flags_and_noise():
    a = hdlc.encode_frame(hdlc.Frame(b"\x21", b"\x03", 0x10, b"\xe6\xe7\x00abc"))
    b = hdlc.encode_frame(hdlc.Frame(b"\x21", b"\x03", 0x32, b"xyz", segmented=True))
    r = hdlc.FrameReader()
    got = r.feed(b"\x00junk" + a + b"\x7e\x7e" + b[1:])          # b shares a's closing flag
    assert [f.info for f in got] == [b"\xe6\xe7\x00abc", b"xyz"] and got[1].segmented
    assert r.noise == 5
    broken = a[:-3] + bytes((a[-3] ^ 0xFF,)) + a[-2:]
    assert r.feed(broken) == [] and r.errors == ["bad FCS"]
    assert [f.info for f in r.feed(a[:5])] == [] and [f.info for f in r.feed(a[5:])] == [b"\xe6\xe7\x00abc"]


def test_hdlc_client_segments_and_reassembles():
    c = hdlc.HdlcClient(hdlc.client_address(16), hdlc.server_address(1, 17), hdlc.HdlcParams(32, 32))
    frames = c.request_frames(bytes(range(70)))
    decoded = [hdlc.decode_frame(f) for f in frames]
    assert [f.segmented for f in decoded] == [True, True, False]
    assert b"".join(f.info for f in decoded) == hdlc.LLC_REQUEST + bytes(range(70))
    assert [(f.control >> 1) & 7 for f in decoded] == [0, 1, 2]
    srv, cli = c.server, c.client
    first = hdlc.decode_frame(hdlc.encode_frame(hdlc.Frame(cli, srv, hdlc.i_control(0, 3), b"\xe6\xe7\x00AB", True)))
    kind, rr = c.receive(first)
    assert kind == "ack" and hdlc.decode_frame(rr).control == hdlc.rr_control(1)
    assert c.receive(first) == ("ignore", None)                       # a repeat
    last = hdlc.decode_frame(hdlc.encode_frame(hdlc.Frame(cli, srv, hdlc.i_control(1, 3), b"CD")))
    assert c.receive(last) == ("apdu", b"ABCD")
    with pytest.raises(FrameError, match="DM"):
        c.receive(hdlc.Frame(cli, srv, hdlc.DM))


def test_ua_parameters_negotiate_down():
    c = hdlc.HdlcClient(hdlc.client_address(16), hdlc.server_address(1, 17), hdlc.HdlcParams(512, 512, 1, 1))
    ua = hdlc.Frame(c.client, c.server, hdlc.UA, hdlc.encode_params(hdlc.HdlcParams(128, 256, 1, 1)))
    c.connected(ua)
    assert c.params == hdlc.HdlcParams(256, 128, 1, 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.integers(0, 255), st.integers(1, 0x3FFF), st.integers(0, 0x3FFF))
def test_hdlc_frames_round_trip(info, seg, control, logical, physical):
    f = hdlc.Frame(hdlc.server_address(logical, physical), hdlc.client_address(16), control, info, seg)
    assert hdlc.decode_frame(hdlc.encode_frame(f)) == f
    assert hdlc.FrameReader().feed(hdlc.encode_frame(f) * 2) == [f, f]


# ---------------------------------------------------------------- wrapper, M-Bus

def test_wrapper_header_and_stream():
    msg = wrapper.encode_wrapper(16, 1, b"\xc0\x01")
    assert msg == bytes.fromhex("000100100001" "0002c001")
    r = wrapper.WrapperReader()
    assert r.feed(msg[:5]) == [] and r.feed(msg[5:] + msg) == [wrapper.WrapperMessage(16, 1, b"\xc0\x01")] * 2
    with pytest.raises(FrameError, match="version"):
        r.feed(b"\x00\x02" + msg[2:])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 250))
def test_mbus_segments_round_trip(apdu, segment):
    if len(apdu) > 16 * segment:
        return
    assert mbus.MbusReader().feed(mbus.encode_mbus(apdu, segment)) == [apdu]


# ---------------------------------------------------------------- A-XDR

def test_axdr_known_encodings():
    assert axdr.encode(axdr.u32(1021084)) == bytes.fromhex("06000f949c")
    assert axdr.encode((axdr.i8(-1), axdr.enum(35))) == bytes.fromhex("02020fff1623")
    assert axdr.encode(b"\x01\x00\x01\x08\x00\xff") == bytes.fromhex("0906010001080 0ff".replace(" ", ""))
    assert axdr.decode_all(bytes.fromhex("0203" "0906010020 0700ff".replace(" ", "") + "120904" "02020fff1623")) == (
        b"\x01\x00\x20\x07\x00\xff", 2308, (-1, 35))       # the Austrian push's voltage: 230.8 V
    assert axdr.encode_length(0x1234) == b"\x82\x12\x34" and axdr.decode_length(b"\x82\x12\x34", 0) == (0x1234, 3)


def test_date_time_deviation_and_status():
    dt = axdr.DateTime.from_ns(1_700_000_000 * 10**9, -60, axdr.CLOCK_DST)
    assert (dt.hour, dt.minute, dt.deviation) == (23, 13, -60)                 # 22:13:20 UTC shown as CET
    assert axdr.DateTime.decode(dt.encode()) == dt and dt.to_ns() == 1_700_000_000 * 10**9
    assert cosem.clock_quality(dt) is None
    assert cosem.clock_quality(dt._replace(status=axdr.CLOCK_DOUBTFUL)) == (Validity.QUESTIONABLE, Detail.CLOCK)
    assert cosem.clock_quality(dt._replace(status=axdr.CLOCK_INVALID)) == (Validity.INVALID, Detail.CLOCK)
    with pytest.raises(DecodeError, match="unspecified"):
        axdr.DateTime.decode(b"\xff" * 12).to_ns()
    with pytest.raises(DecodeError, match="impossible"):
        dt._replace(day=31, month=2).to_ns()


def _typed():
    ints = st.sampled_from([(axdr.u8, 0, 255), (axdr.i8, -128, 127), (axdr.u16, 0, 65535), (axdr.i16, -32768, 32767),
                            (axdr.u32, 0, 2**32 - 1), (axdr.i32, -2**31, 2**31 - 1), (axdr.i64, -2**63, 2**63 - 1),
                            (axdr.u64, 0, 2**64 - 1), (axdr.enum, 0, 255)]).flatmap(
        lambda t: st.integers(t[1], t[2]).map(lambda v: (t[0](v), v)))
    leaves = st.one_of(ints, st.binary(max_size=40).map(lambda b: (b, b)),
                       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(lambda s: (s, s)),
                       st.booleans().map(lambda b: (b, b)), st.none().map(lambda _: (None, None)),
                       st.floats(allow_nan=False).map(lambda f: (f, f)),
                       st.text("01", max_size=40).map(lambda s: (axdr.BitString(s), s)))
    return st.recursive(leaves, lambda kids: st.one_of(
        st.lists(kids, max_size=5).map(lambda xs: ([x[0] for x in xs], [x[1] for x in xs])),
        st.lists(kids, max_size=5).map(lambda xs: (tuple(x[0] for x in xs), tuple(x[1] for x in xs)))), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_typed())
def test_axdr_round_trip(pair):
    typed, plain = pair
    assert axdr.decode_all(axdr.encode(typed)) == plain


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=8), st.integers(-128, 127)), max_size=30))
def test_compact_array_round_trip(rows):
    desc = ("structure", (axdr.UINT32, axdr.OCTET_STRING, axdr.INT8))
    assert axdr.decode_all(axdr.encode(axdr.CompactArray(desc, rows))) == [tuple(r) for r in rows]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: (axdr.u32(v), v)), st.integers(-128, 127).map(lambda v: (axdr.i8(v), v)),
    st.binary(max_size=13).map(lambda b: (b, b)), st.text("ab", max_size=3).map(lambda t: (t, t))),
    min_size=1, max_size=6), min_size=8, max_size=30))
def test_arrays_of_like_rows_decode_as_any_array(rows):
    """The row fast path (a load profile's array of like structures) gives what the general decoder gives, rows of
    other shapes among them included."""
    typed = [tuple(x[0] for x in r) for r in rows]
    assert axdr.decode_all(axdr.encode(typed)) == [tuple(x[1] for x in r) for r in rows]


def test_nesting_deeper_than_the_limit_is_refused():
    deep = b"\x01\x01" * (axdr.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(DecodeError, match="nested"):
        axdr.decode_all(deep)


# ---------------------------------------------------------------- APDUs

def test_aarq_aare_round_trip_with_hls():
    aarq = A.Aarq(A.CONTEXT_LN_CIPHERED, A.MECH_HIGH_GMAC, GB_CLIENT_TITLE, GB_CTOS, GB_GLO_INITIATE)
    assert A.decode_aarq(A.encode_aarq(aarq)) == aarq
    aare = A.Aare(A.CONTEXT_LN_CIPHERED, 0, 14, GB_SERVER_TITLE, A.MECH_HIGH_GMAC, b"P6wRJ21F", b"\x28\x01")
    assert A.decode_aare(A.encode_aare(aare)) == aare
    lls = A.encode_aarq(A.Aarq(A.CONTEXT_LN, A.MECH_LOW, None, b"12345678", b"\x01"))
    assert lls.startswith(bytes.fromhex("60")) and bytes.fromhex("8b0760857405080201") in lls


def test_get_set_action_round_trips():
    attr = A.Attribute(8, cosem.CLOCK_OBIS, 2)
    sel = cosem.entry_selection(5, 10)
    for req in (A.GetRequest(0xC1, attr), A.GetRequest(0xC2, attr, A.Selection(sel.selector, sel.parameters)),
                A.GetNext(0xC3, 7), A.GetWithList(0xC4, ((attr, None), (attr, None))),
                A.SetRequest(0xC5, attr, axdr.encode(b"x" * 12)), A.ActionRequest(0xC6, A.Method(15, b"\0" * 6, 1)),
                A.ActionRequest(0xC7, A.Method(15, b"\0" * 6, 1), axdr.encode(b"abc"))):
        got = A.decode_request(A.encode_request(req))
        if isinstance(req, A.GetRequest) and req.selection:
            assert got.selection.parameters == (5, 10, 1, 0)
        else:
            assert got == req
    for rsp in (A.GetResponse(0xC1, axdr.encode(5)), A.GetResponse(0xC1, A.AccessResult(4)),
                A.GetBlock(0xC1, False, 1, b"raw"), A.GetBlock(0xC1, True, 2, A.AccessResult(19)),
                A.GetListResponse(0xC1, (axdr.encode(1), A.AccessResult(3))), A.SetResponse(0xC1, A.AccessResult(0)),
                A.ActionResponse(0xC1, A.AccessResult(0), axdr.encode(b"f")), A.ActionResponse(0xC1, A.AccessResult(0)),
                A.ExceptionResponse(1, 6, 1234)):
        assert A.decode_response(A.encode_response(rsp)) == rsp
    n = A.DataNotification(42, axdr.DateTime.from_ns(0), axdr.encode((1, 2)))
    assert A.decode_notification(A.encode_notification(n)) == n


def test_initiate_response_and_service_error():
    r = A.InitiateResponse(A.conformance("get", "selective-access"), 1024)
    assert A.decode_initiate_response(A.encode_initiate_response(r)) == r
    assert A.decode_initiate_response(bytes.fromhex("0e010601")) == A.ServiceError(1, 6, 1)


def test_profile_selection_encodes_the_clock_column_and_the_meter_deviation():
    sel = cosem.range_selection(1_700_000_000 * 10**9, 1_700_003_600 * 10**9, -60)
    value = axdr.decode_all(axdr.encode(sel.parameters))
    restricting, lo, hi, cols = value
    assert restricting == (8, cosem.CLOCK_OBIS, 2, 0) and cols == []
    assert axdr.DateTime.decode(lo).to_ns() == 1_700_000_000 * 10**9
    assert axdr.DateTime.decode(lo).hour == 23                        # the meter's local time (CET)


def test_obis_parsing():
    assert cosem.obis("1.0.1.8.0.255") == cosem.obis("1-0:1.8.0*255") == cosem.obis("1.0.1.8.0") == b"\x01\0\x01\x08\0\xff"
    assert cosem.obis_text(b"\x01\0\x01\x08\0\xff") == "1.0.1.8.0.255"
    with pytest.raises(ValueError, match="OBIS"):
        cosem.obis("1.0.1.8")


def test_invocation_counter_never_repeats_across_restarts(tmp_path):
    path = tmp_path / "m1.ic"
    c = security.InvocationCounter(path, reserve=10)
    used = [c.next() for _ in range(25)]
    again = security.InvocationCounter(path, reserve=10)           # a restart (or a power cut) after 25 uses
    assert again.next() > max(used)
    path.write_text("{broken")
    with pytest.raises(SecurityError, match="unreadable"):
        security.InvocationCounter(path)


def test_replay_guard_refuses_a_counter_that_does_not_go_up():
    g = security.ReplayGuard()
    g.check(b"T" * 8, 5)
    with pytest.raises(SecurityError, match="not above"):
        g.check(b"T" * 8, 5)
