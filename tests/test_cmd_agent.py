"""The command path of a real agent process over mosquitto with TLS: every payload on a cmd topic gets an answer
(or a counted drop), every result names its state, and what the sender wrote never forges or garbles a log line.

Contract 3.0: the hostile documents are signed by a trusted issuer (so they get past authentication to the
document's checks), and the same kind of garbage unsigned is answered too, with cmd_id null (the id it claimed, if
any, escaped in detail.claimed_cmd_id), within the budget for messages that cannot be held to anyone's account.
"""
import asyncio
import json
import time

from gridedge.commands import UNREADABLE_BURST
from gridedge.core.text import escape
from gridedge.hil.rig import Rig

from .conftest import message_kind, validate_message

FORGED = "2026-01-01 00:00:00,000 CRITICAL gridedge.agent: forged line"
INJECTED_ID = "inj\n" + FORGED + "\x00\u202eevil"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def with_id(cmd_id, **over) -> dict:
    doc = {"schema": "gridedge.command/2", "cmd_id": cmd_id, "type": "limit_active_power",
           "params": {"limit_pct": 50, "duration_s": 5}}
    doc.update(over)
    return doc


def claims(rig: Rig) -> bytes:
    """The claims of a valid signature, as the start of a JSON object: bytes signed after them are the document's."""
    now = int(time.time())
    return b'{"iss": "dso", "aud": "%s", "iat": %d, "exp": %d, ' % (rig.gateway_id.encode(), now, now + 300)


#: (payload: a document to sign, or bytes to sign as they are (a callable: given the rig), cmd_id the answer
#: carries, status, words of the reason)
HOSTILE = [
    (b"[" * 1000 + b"]" * 1000, None, "rejected", "nested deeper than"),
    (lambda rig: claims(rig) + b'"cmd_id": ' + b"9" * 5000 + b"}", None, "rejected", "cmd_id: must be"),
    (b'{"cmd_id": "\xff\xfe"}', None, "rejected", "malformed JSON"),
    (with_id("h-num", params={"limit_pct": 10**400, "duration_s": 5}), "h-num", "rejected", "params.limit_pct"),
    (with_id("h-nan", params={"limit_pct": float("nan"), "duration_s": 5}), "h-nan", "rejected", "params.limit_pct"),
    (with_id("h-big", device="d" * 15000), "h-big", "rejected", "unknown device"),
    (with_id("h-late", valid_until="2020-01-01T00:00:00Z"), "h-late", "expired", "expired: valid_until"),
    (with_id(INJECTED_ID, type="open_breaker"), INJECTED_ID, "rejected", "unknown command"),
]

#: the same garbage unsigned: (payload, claimed_cmd_id in the answer, words of the reason)
UNSIGNED = [
    (b"[" * 1000 + b"]" * 1000, None, "not a signed command"),
    (b'{"cmd_id": "\xff\xfe"}', None, "unsigned command refused"),
    (json.dumps(with_id(INJECTED_ID, type="open_breaker")).encode(), escape(INJECTED_ID), "unsigned command refused"),
    (json.dumps(with_id("u-good")).encode(), "u-good", "unsigned command refused"),   # well-formed, still unsigned
]


def test_every_hostile_payload_is_answered_with_its_state_and_logged_on_one_escaped_line(tmp_path):
    assert sum(cmd_id is None for _, cmd_id, *_ in HOSTILE) + len(UNSIGNED) <= UNREADABLE_BURST  # no waiting

    async def scenario():
        async with Rig(tmp_path) as rig:
            for payload, cmd_id, status, words in HOSTILE:
                if callable(payload):
                    payload = payload(rig)
                signed = rig.dso.sign_bytes(payload) if isinstance(payload, bytes) else rig.dso.sign(payload)
                before = len(rig.dso.results(cmd_id))
                await rig.dso.send(signed)
                await rig.dso.wait_for(lambda: len(rig.dso.results(cmd_id)) > before, 10,
                                       f"an answer to {str(payload)[:40]!r}")
                res = rig.dso.results(cmd_id)[-1]
                assert (res["status"], res["detail"]["state"]) == (status, status), res
                assert "refusal" not in res["detail"], res   # it was authenticated: its content is at fault
                assert words in res["reason"], res["reason"][:300]
                assert len(res["reason"]) <= 500
            for payload, claimed, words in UNSIGNED:
                before = len(rig.dso.results(None))
                await rig.dso.send(payload)
                await rig.dso.wait_for(lambda: len(rig.dso.results(None)) > before, 10,
                                       f"an answer to unsigned {payload[:40]!r}")
                res = rig.dso.results(None)[-1]
                assert (res["cmd_id"], res["status"], res["detail"]["refusal"]) == (None, "rejected",
                                                                                  "unauthenticated"), res
                assert res["detail"].get("claimed_cmd_id") == claimed, res
                assert words in res["reason"], res["reason"][:300]
            assert rig.dso.results("u-good") == []   # never answered under an id nobody proved
            assert rig.agent.returncode is None
            good = rig.dso.activation(40, 1, cmd_id="good-after-hostile")
            await rig.dso.send(good)
            await rig.dso.wait_status("good-after-hostile", "completed", 15)
            assert [r["detail"]["state"] for r in rig.dso.results("good-after-hostile")] \
                == ["validated", "active", "completed"]
            for s in rig.dso.seen:
                if message_kind(s.topic) != "command":
                    validate_message(s.topic.replace("/backfill/", "/"), s.doc)
        log = rig.agent_log.read_bytes()
        assert b"\x00" not in log and "\u202e".encode() not in log and b"Traceback" not in log
        lines = log.decode().splitlines()
        assert not any(line.startswith(FORGED) for line in lines)
        mentions = [line for line in lines if "forged line" in line]
        assert len(mentions) == 1, mentions
        assert "command inj\\n2026-01-01" in mentions[0] and "\\x00\\u202eevil: rejected" in mentions[0]
    run(scenario())
