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


def validate_message(topic: str, doc) -> None:
    """Validate one message seen on a gateway topic against schemas/ (the kind is the topic's last level)."""
    kind = {"cmd": "command"}.get(topic.rsplit("/", 1)[-1], topic.rsplit("/", 1)[-1])
    assert kind in SCHEMAS, f"no schema for topic {topic}"
    assert isinstance(doc, dict), f"{topic}: payload is not a JSON object"
    VALIDATORS[kind].validate(doc)


@pytest.fixture
def validate():
    return validate_message
