"""Security suite 0 of DLMS/COSEM (Green Book 9.2): AES-GCM-128 with a 12-byte tag, via `cryptography`.

A ciphered APDU carries a security control byte (SC: 0x10 authenticated, 0x20 encrypted, low nibble the suite),
the sender's invocation counter (IC) and the ciphertext with the tag:

    glo-/ded- APDU     tag | length | SC | IC | ciphertext | tag12
    general-glo        DB | len | system title | length | SC | IC | ciphertext | tag12   (HAN push)

IV = sender's system title (8 bytes) || IC (4 bytes). Additional data: SC || AK (|| plaintext when authenticated
only). HLS mechanism 5 answers a challenge with SC || IC || GMAC(SC || AK || challenge).

The tag is always checked here (gurux-dlms 1.0.203 does not: a wrong authentication key passes there). An IC is
never used twice with one key: InvocationCounter persists a reserve ahead of use, so a restart or a power cut
skips numbers but never repeats one; ReplayGuard refuses a peer's counter that does not go up.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import axdr
from .errors import DecodeError, SecurityError

__all__ = ["SC_AUTH", "SC_ENC", "SC_AUTH_ENC", "TAG_LEN", "GENERAL_GLO", "GENERAL_DED", "GLO", "DED", "Keys",
           "Unwrapped", "cipher", "decipher", "protect", "unprotect", "hls_gmac", "InvocationCounter",
           "ReplayGuard", "is_ciphered", "Secrets", "load_secrets"]

SC_AUTH, SC_ENC = 0x10, 0x20
SC_AUTH_ENC = SC_AUTH | SC_ENC
TAG_LEN = 12
GENERAL_GLO, GENERAL_DED = 0xDB, 0xDC
#: plain APDU tag -> glo- (global key) and ded- (dedicated key) ciphered tag
GLO = {0x01: 0x21, 0x08: 0x28, 0x0E: 0x2E, 0xC0: 0xC8, 0xC1: 0xC9, 0xC3: 0xCB, 0xC4: 0xCC, 0xC5: 0xCD, 0xC7: 0xCF,
       0xD8: 0xD8}
DED = {0xC0: 0xD0, 0xC1: 0xD1, 0xC3: 0xD3, 0xC4: 0xD4, 0xC5: 0xD5, 0xC7: 0xD7}
_PLAIN_OF = {v: k for k, v in GLO.items() if v != k} | {v: k for k, v in DED.items()}
_DEDICATED_TAGS = frozenset(DED.values())


class Keys(NamedTuple):
    """Global unicast encryption key (EK) and authentication key (AK), 16 bytes each."""

    ek: bytes
    ak: bytes

    def check(self) -> Keys:
        if len(self.ek) != 16 or len(self.ak) != 16:
            raise ValueError("EK and AK must be 16 bytes (AES-128)")
        return self


class Unwrapped(NamedTuple):
    apdu: bytes
    sc: int
    ic: int
    system_title: bytes | None      # from a general-glo-ciphering APDU
    dedicated: bool


def is_ciphered(tag: int) -> bool:
    return tag in _PLAIN_OF or tag in (GENERAL_GLO, GENERAL_DED)


def _iv(system_title: bytes, ic: int) -> bytes:
    if len(system_title) != 8:
        raise SecurityError(f"system title of {len(system_title)} bytes (must be 8)")
    return system_title + struct.pack(">I", ic)


def cipher(sc: int, system_title: bytes, ic: int, ek: bytes, ak: bytes, plaintext: bytes) -> bytes:
    """SC || IC || ciphered information (with the tag when SC says authenticated)."""
    head = bytes((sc,)) + struct.pack(">I", ic)
    iv = _iv(system_title, ic)
    if sc & SC_ENC:
        enc = Cipher(algorithms.AES(ek), modes.GCM(iv)).encryptor()
        if sc & SC_AUTH:
            enc.authenticate_additional_data(bytes((sc,)) + ak)
        body = enc.update(plaintext) + enc.finalize()
        return head + body + (enc.tag[:TAG_LEN] if sc & SC_AUTH else b"")
    if sc & SC_AUTH:
        enc = Cipher(algorithms.AES(ek), modes.GCM(iv)).encryptor()
        enc.authenticate_additional_data(bytes((sc,)) + ak + plaintext)
        enc.finalize()
        return head + plaintext + enc.tag[:TAG_LEN]
    return head + plaintext


def decipher(data: bytes, system_title: bytes, ek: bytes, ak: bytes) -> tuple[int, int, bytes]:
    """(SC, IC, plaintext) of SC || IC || ciphered information. Raises SecurityError (wrong key, changed byte)."""
    if len(data) < 5:
        raise SecurityError("ciphered content shorter than its header")
    sc, ic = data[0], struct.unpack_from(">I", data, 1)[0]
    if sc & 0x0F > 1 or sc & 0x80:
        raise SecurityError(f"security control {sc:#04x}: only suite 0/1 AES-GCM-128 without compression")
    body = data[5:]
    iv = _iv(system_title, ic)
    if sc & SC_AUTH:
        if len(body) < TAG_LEN:
            raise SecurityError("ciphered content shorter than its tag")
        body, tag = body[:-TAG_LEN], body[-TAG_LEN:]
        aad = bytes((sc,)) + ak + (b"" if sc & SC_ENC else body)
        dec = Cipher(algorithms.AES(ek), modes.GCM(iv, tag, min_tag_length=TAG_LEN)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            plain = dec.update(body) if sc & SC_ENC else b""
            dec.finalize()
        except InvalidTag:
            raise SecurityError("authentication tag does not match (wrong key, or the message was changed)") from None
        return sc, ic, plain if sc & SC_ENC else body
    if sc & SC_ENC:
        # Encrypted only: GCM's counter mode from the block after J0 (there is no tag to check).
        dec = Cipher(algorithms.AES(ek), modes.CTR(iv + b"\x00\x00\x00\x02")).decryptor()
        return sc, ic, dec.update(body) + dec.finalize()
    return sc, ic, body


def protect(apdu: bytes, sc: int, system_title: bytes, ic: int, keys: Keys, *, dedicated_key: bytes | None = None,
            general: bool = False) -> bytes:
    """A plain APDU ciphered: glo- (or ded- with dedicated_key) APDU, or general-glo-ciphering (with the title)."""
    ek = dedicated_key if dedicated_key is not None else keys.ek
    content = cipher(sc, system_title, ic, ek, keys.ak, apdu)
    if general:
        return (bytes((GENERAL_GLO,)) + axdr.encode_length(len(system_title)) + system_title
                + axdr.encode_length(len(content)) + content)
    table = DED if dedicated_key is not None else GLO
    tag = table.get(apdu[0]) if apdu else None
    if tag is None:
        raise ValueError(f"APDU {apdu[:1].hex()} has no {'ded' if dedicated_key else 'glo'}- form")
    return bytes((tag,)) + axdr.encode_length(len(content)) + content


def unprotect(apdu: bytes, peer_title: bytes | None, keys: Keys, *, dedicated_key: bytes | None = None) -> Unwrapped:
    """The plain APDU inside a ciphered one. peer_title: the sender's system title (from the AARQ/AARE) for glo-
    and ded- APDUs; general-glo carries its own. Raises SecurityError or DecodeError."""
    if not apdu:
        raise DecodeError("empty APDU")
    tag = apdu[0]
    title = peer_title
    pos = 1
    if tag in (GENERAL_GLO, GENERAL_DED):
        n, pos = axdr.decode_length(apdu, pos)
        if pos + n > len(apdu):
            raise DecodeError("general-ciphering system title overruns the APDU")
        title = apdu[pos:pos + n]
        pos += n
    elif tag not in _PLAIN_OF:
        raise DecodeError(f"APDU tag {tag:#04x} is not ciphered")
    n, pos = axdr.decode_length(apdu, pos)
    if pos + n != len(apdu):
        raise DecodeError(f"ciphered APDU says {n} bytes, {len(apdu) - pos} follow")
    if title is None:
        raise SecurityError("no system title known for the sender")
    dedicated = tag in _DEDICATED_TAGS or tag == GENERAL_DED
    if dedicated and dedicated_key is None:
        raise SecurityError("dedicated-key APDU without a dedicated key")
    ek = dedicated_key if dedicated else keys.ek
    sc, ic, plain = decipher(apdu[pos:], bytes(title), ek, keys.ak)
    if tag in _PLAIN_OF and plain and plain[0] != _PLAIN_OF[tag] and tag != 0xD8:
        raise DecodeError(f"ciphered {tag:#04x} holds a {plain[0]:#04x} APDU")
    return Unwrapped(plain, sc, ic, bytes(title) if tag in (GENERAL_GLO, GENERAL_DED) else None, dedicated)


def hls_gmac(system_title: bytes, ic: int, keys: Keys, challenge: bytes, sc: int = SC_AUTH) -> bytes:
    """f(challenge) of HLS mechanism 5: SC || IC || GMAC(SC || AK || challenge), 17 bytes."""
    return cipher(sc, system_title, ic, keys.ek, keys.ak + challenge, b"")


# ---------------------------------------------------------------- invocation counters

class InvocationCounter:
    """Our invocation counter for one key, never repeated: the file holds a reserve ahead of what was used, written
    (atomically, fsync'd) before any counter of the new reserve goes out. A restart continues from the reserve, so
    at most `reserve` numbers are skipped and none repeats. path None: in memory (tests, a meter simulator)."""

    def __init__(self, path: Path | str | None, *, start: int = 1, reserve: int = 1000):
        self.path = Path(path) if path is not None else None
        self.reserve = reserve
        self._lock = threading.Lock()
        self._next = start
        self._limit = start
        if self.path is not None and self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                self._next = self._limit = max(start, int(saved["reserved"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # A counter we cannot read must not restart at 1 (it would repeat): refuse to cipher.
                raise SecurityError(f"invocation counter file {self.path} is unreadable ({exc}); "
                                    f"restore it or move it aside after changing the keys") from None

    @property
    def value(self) -> int:
        """The next counter to be used."""
        return self._next

    def next(self) -> int:
        with self._lock:
            ic = self._next
            if ic > 0xFFFFFFFF - 1:
                raise SecurityError("invocation counter exhausted: the keys must be changed")
            if ic >= self._limit:
                self._limit = min(0xFFFFFFFF, ic + self.reserve)
                self._save(self._limit)
            self._next = ic + 1
            return ic

    def skip_to(self, ic: int) -> None:
        """The meter expects at least `ic` (its exception-response said so): continue from there."""
        with self._lock:
            if ic > self._next:
                self._next = ic
                self._limit = min(self._limit, ic)

    def _save(self, reserved: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"reserved": reserved}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


class ReplayGuard:
    """Refuses a peer's invocation counter that is not above the last one accepted (per system title)."""

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}

    def check(self, title: bytes, ic: int) -> None:
        last = self._last.get(title)
        if last is not None and ic <= last:
            raise SecurityError(f"invocation counter {ic} is not above {last}: a replayed or repeated message")
        self._last[title] = ic

    def reset(self) -> None:
        self._last.clear()


# ---------------------------------------------------------------- the secrets file

class Secrets(NamedTuple):
    """What a meter's association needs that must not sit in the gateway config: the LLS password, the suite 0
    keys and the gateway's system title."""

    password: bytes = b""
    keys: Keys | None = None
    system_title: bytes | None = None


def _hex(text, what: str, n: int | None) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(text.replace(" ", "").replace(":", ""))
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if n is not None and len(raw) != n:
        raise ValueError(f"{what} must be {n} bytes ({2 * n} hex digits), got {len(raw)}")
    return raw


def load_secrets(path: Path | str) -> Secrets:
    """A TOML file: password = "..." (LLS), ek / ak = 32 hex digits (suite 0; ak defaults to ek's absence: both or
    neither, except that a push may need only ek), system_title = 16 hex digits. Raises ValueError naming what is
    wrong (never the secret itself)."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read secrets file: {type(exc).__name__}") from None
    unknown = set(data) - {"password", "ek", "ak", "system_title"}
    if unknown:
        raise ValueError(f"unknown key(s) in secrets file: {', '.join(sorted(unknown))}")
    pw = data.get("password", "")
    if not isinstance(pw, str) or len(pw.encode()) > 64:
        raise ValueError("password must be a string of at most 64 bytes")
    keys = None
    if "ek" in data or "ak" in data:
        ek = _hex(data.get("ek"), "ek", 16)
        ak = _hex(data["ak"], "ak", 16) if "ak" in data else bytes(16)
        keys = Keys(ek, ak)
    title = _hex(data["system_title"], "system_title", 8) if "system_title" in data else None
    return Secrets(pw.encode(), keys, title)

