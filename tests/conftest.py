import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {p.name.split(".")[0]: json.loads(p.read_text()) for p in (ROOT / "schemas").glob("*.schema.json")}


def _validator(schema: dict):
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # once per schema, not once per message (that dominated long tests)
    return cls(schema, format_checker=jsonschema.FormatChecker())


VALIDATORS = {kind: _validator(schema) for kind, schema in SCHEMAS.items()}


def signed_doc(raw: bytes):
    """The document inside a JWS (not verified: for checking its form), or None if it is not one."""
    import base64

    parts = raw.strip().split(b".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None


def as_signed(doc: dict, iss: str = "dso", aud: str = "gw", lifetime_s: int = 300) -> dict:
    """A command or nomination document with the claims its signer adds (gridedge.security.signing), as the
    schema describes what is signed: for checking a document the parser accepted against schemas/."""
    import time

    now = int(time.time())
    return dict(doc, iss=iss, aud=aud, iat=now, exp=now + lifetime_s)


def message_kind(topic: str) -> str:
    """The schema a topic's messages follow: its last level, or for <p>cmd/<issuer> and <p>nomination/<issuer>
    the level before the issuer."""
    parts = topic.split("/")
    kind = parts[-2] if len(parts) >= 2 and parts[-2] in ("cmd", "nomination") else parts[-1]
    if len(parts) >= 3 and parts[-3] == "layout":  # <p>layout/<device>/<layout id>
        kind = "layout"
    return {"cmd": "command"}.get(kind, kind)


def validate_message(topic: str, doc) -> None:
    """Validate one message seen on a gateway topic against schemas/ (message_kind says which); a command or
    nomination is validated as the document it signs (pass the raw JWS bytes, or the decoded document)."""
    kind = message_kind(topic)
    if isinstance(doc, (bytes, bytearray)):
        doc = signed_doc(doc)
    assert kind in SCHEMAS, f"no schema for topic {topic}"
    assert isinstance(doc, dict), f"{topic}: payload is not a JSON object"
    VALIDATORS[kind].validate(doc)


@pytest.fixture
def validate():
    return validate_message


@pytest.fixture(params=["5", "3.1.1"])
def mqtt_protocol(request) -> str:
    """The gateway's MQTT version (uplink.protocol): a delivery test that takes this runs on both (issue 17)."""
    return request.param
