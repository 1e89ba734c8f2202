"""The broker ACL that confines every identity of a gridedge deployment (docs/security.md, "The broker layer").

Identities are certificate CNs (mosquitto: use_identity_as_username). A gateway's CN is its gateway id, and
gateway ids never contain a dot, so the other identities are dotted: "issuer.<id>" for an issuer that sends
commands, "headend.<name>" for a head-end that reads everything (and may also issue, as the DSO's does).

- a gateway writes only one level under its own prefix (telemetry, state, result, audit, the flex records), its
  backfill and its layouts (layout/<dev>/<id>, docs/mqtt-api.md "Data thrift"); it reads only its own cmd/<issuer> and nomination/<issuer> topics;
- an issuer writes only its own command (and nomination) topic, of any gateway, and reads the results;
- a head-end reads every gateway's topics and writes the command topics of the issuer it is.
So another gateway's certificate cannot command this one or forge its telemetry, and an aggregator cannot
publish on the TSO's topic, whatever a gateway would do with such a message (it also verifies signatures).
"""
from __future__ import annotations

ROOT = "gridedge/v3"


def gateway_patterns(root: str = ROOT) -> list[str]:
    """`pattern` lines (mosquitto substitutes %u, the CN): what every gateway may do under its own prefix."""
    return [f"write {root}/%u/+", f"write {root}/%u/backfill/+", f"write {root}/%u/layout/+/+",
            f"read {root}/%u/cmd/+", f"read {root}/%u/nomination/+"]


def fleet_acl(issuers: dict[str, str], headends: dict[str, str | None], root: str = ROOT) -> dict[str, list[str]]:
    """Per-user lines: issuers maps CN -> issuer id; headends maps CN -> the issuer id it sends as (or None)."""
    acl: dict[str, list[str]] = {}
    for cn, issuer in issuers.items():
        acl[cn] = [f"write {root}/+/cmd/{issuer}", f"write {root}/+/nomination/{issuer}", f"read {root}/+/result",
                   f"read {root}/+/backfill/result"]
    for cn, issuer in headends.items():
        acl[cn] = [f"read {root}/#"] + ([f"write {root}/+/cmd/{issuer}", f"write {root}/+/nomination/{issuer}"]
                                        if issuer else [])
    return acl
