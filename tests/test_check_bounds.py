"""Numbers that pass `check` must be numbers the agent can run with (issue 11, defect 4): every numeric key has an
upper bound below what overflows time arithmetic (asyncio, ns timestamps) or SQLite, and the devices sharing a TCP
endpoint are told apart."""
from __future__ import annotations

from pathlib import Path

import pytest

from gridedge.config import SCHEMA, parse_config
from gridedge.core import schema as s

from .test_config import errors_of, minimal

NUMERIC = [(path, key) for path, key in s.walk(SCHEMA) if isinstance(key.schema, (s.Int, s.Float))]
DOCS = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text().splitlines()


def site(**sections) -> dict:
    return dict(minimal(), **sections)


def test_the_sweep_sees_the_numeric_keys():
    names = {".".join(p) for p, _ in NUMERIC}
    assert {"storage.max_age_h", "devices.[].poll_ms", "devices.[].poll_groups.[].period_ms",
            "uplink.telemetry_interval_ms", "control.max_activation_s", "flex.resources.[].capacity_wh"} <= names


@pytest.mark.parametrize("path", [p for p, _ in NUMERIC], ids=lambda p: ".".join(p))
def test_every_numeric_key_has_an_upper_bound(path):
    key = dict(NUMERIC)[path]
    assert key.schema.le is not None or key.schema.lt is not None, f"{'.'.join(path)} has no upper bound"


def test_the_values_of_the_issue_are_refused_with_their_key():
    dev = {"id": "m1", "driver": "sunspec_tcp", "host": "10.0.0.5", "poll_ms": 2**63 - 1, "timeout_ms": 2**31}
    assert errors_of(site(storage={"max_age_h": 1e300}, devices=[dev])) == [
        "gateway.toml: storage.max_age_h: must be <= 87600, got 1e+300",
        "gateway.toml: devices[0].poll_ms: must be <= 86400000, got 9223372036854775807",
        "gateway.toml: devices[0].timeout_ms: must be <= 60000, got 2147483648",
    ]


def test_a_meter_read_every_day_is_fine():
    dev = {"id": "m1", "driver": "modbus_tcp", "map": "eastron_sdm630", "host": "10.0.0.5", "poll_ms": 86_400_000,
           "poll_groups": [{"name": "daily", "period_ms": 86_400_000, "points": ["TotWhImp"]}]}
    (d,) = parse_config(site(devices=[dev], storage={"max_age_h": 87600.0})).devices
    assert d.poll_ms == 86_400_000


def test_two_tcp_devices_at_one_endpoint_need_distinct_unit_ids():
    """docs/configuration.md: devices at one host:port share the connection and need distinct unit ids."""
    a = {"id": "inv1", "driver": "sunspec_tcp", "host": "10.0.0.5", "unit_id": 3}
    b = {"id": "m1", "driver": "modbus_tcp", "map": "eastron_sdm630", "host": "10.0.0.5", "unit_id": 3}
    c = {"id": "inv2", "driver": "sunspec_tcp", "host": "10.0.0.5", "port": 1502, "unit_id": 3}   # another port
    d = {"id": "inv3", "driver": "sunspec_rtu_tcp", "host": "10.0.0.5", "unit_id": 3}   # RTU framing: another link
    assert errors_of(site(devices=[a, b, c, d])) == [
        "gateway.toml: devices[1].unit_id: unit 3 is already used by devices[0] on endpoint 10.0.0.5:502"]


def _spellings(bound: float) -> set[str]:
    """How docs/configuration.md may write a bound: 86400000, 86,400,000 or 1e9."""
    out = {f"{bound:.0e}".replace("e+0", "e").replace("e+", "e"), f"{bound:g}"}   # ... or 0.95
    if float(bound).is_integer():
        out |= {str(int(bound)), f"{int(bound):,}"}
    return out


@pytest.mark.parametrize("path", [p for p, _ in NUMERIC], ids=lambda p: ".".join(p))
def test_the_reference_gives_each_upper_bound(path):
    """docs/configuration.md's Range column says the bound the schema enforces."""
    schema = dict(NUMERIC)[path].schema
    bound = schema.le if schema.le is not None else schema.lt
    dotted = ".".join(p for p in path if p != "[]")
    row = next(line for line in DOCS if line.startswith(f"| `{dotted}` |"))
    assert any(word in row.split("|")[4] for word in _spellings(bound)), f"{dotted}: range {row.split('|')[4]!r}"
