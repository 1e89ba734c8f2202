"""Property (issue 11, defect 4): whatever `check` passes, the agent can be built from. Configs come from mutating a
valid one (the annotated example with a real PKI, its commented RS-485 meter with a poll group, and an OPC UA source);
when check passes, Agent(config) is made and each Modbus device joins its bus (which builds its circuit breaker, where
defect 2 hid), and nothing raises."""
from __future__ import annotations

import asyncio
import copy
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gridedge.agent import Agent
from gridedge.config import SCHEMA, ConfigError, parse_config
from gridedge.core import schema as s
from gridedge.hil.pki import make_pki

from .test_config import EXAMPLE, _paths, scalars, values

OPCUA = {"id": "rtu1", "driver": "opcua", "role": "meter", "endpoint": "opc.tcp://127.0.0.1:4840/rtu",
         "nodes": {"F1.W": "ns=2;s=F1.MMXU1.TotW"}, "poll_ms": 500, "timeout_ms": 4000,
         "security_policy": "None", "allow_insecure": True}   # as before the secure default (it needs certificates)




def _valid() -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    block = text[text.index('# [[devices]]\n# id = "meter1"'):]
    data["devices"] += tomllib.loads("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                                                for line in block.splitlines()))["devices"]
    data["devices"].append(OPCUA)
    return data


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("site")
    pki = make_pki(base / "pki")
    cert, key = pki.client("gw-demo-001")
    data = _valid()
    data["uplink"].update(ca_file=str(pki.ca_cert), cert_file=str(cert), key_file=str(key))
    shutil.copytree(EXAMPLE.parent / "issuers", base / "issuers")   # the issuer's public key the example names
    (base / "file").write_text("")
    return base, data


def _numeric_paths() -> list[tuple]:
    data = _valid()
    out = []
    for p in _paths(data):
        node = data
        for part in p:
            node = node[part]
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            out.append(p)
    return out


NUMERIC = _numeric_paths()
EVERY = [p for p in _paths(_valid()) if p and p[:2] != ("storage", "dir")]
EDGES = st.sampled_from([0, 1, -1, 0.5, 59_999, 60_001, 61_000, 900_000, 86_400_000, 86_400_001, 2**31, 2**53,
                         2**63 - 1, 2**64, 1e300, -1e300, 1e-300, 3600.0, 87600.0, 1e9, 1e12])
KEYS = dict(s.walk(SCHEMA))


def _in_range(path: tuple) -> st.SearchStrategy:
    """Any value the schema allows at a numeric key, its bounds most of all: check passes, the agent must build."""
    key = KEYS.get(tuple("[]" if isinstance(p, int) else p for p in path))
    schema = key.schema if key is not None else None
    if not isinstance(schema, (s.Int, s.Float)):   # curve points, baseline parameters: checked elsewhere
        return EDGES
    lo = schema.ge if schema.ge is not None else schema.gt
    hi = schema.le if schema.le is not None else schema.lt
    if isinstance(schema, s.Int):
        lo, hi = int(lo) + (schema.gt is not None), int(hi) - (schema.lt is not None)
        return st.sampled_from([lo, hi]) | st.integers(lo, hi)
    return st.sampled_from([v for v in (schema.ge, schema.le) if v is not None] or [1.0]) | st.floats(
        lo, hi, exclude_min=schema.gt is not None, exclude_max=schema.lt is not None)


NUMBERS = EDGES | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
#: storage.dir only where a created directory stays inside the test's directory (run creates what check passes)
DIRS = st.sampled_from(["var", "deep/er/var", "file/var", "file", "/proc/gridedge-var", "/proc", "var/../var2"])

in_range = st.sampled_from(NUMERIC).flatmap(lambda p: st.tuples(st.just(p), _in_range(p)))
anything = (in_range | st.tuples(st.sampled_from(NUMERIC), NUMBERS) | st.tuples(st.just(("storage", "dir")), DIRS)
            | st.tuples(st.sampled_from(EVERY), scalars | values))
#: half the examples stay in range (check passes, the agent is built at the edges), half go anywhere
mutations = st.lists(in_range, min_size=1, max_size=4) | st.lists(anything, min_size=1, max_size=3)


def _set(data: dict, path: tuple, value) -> None:
    parent = data
    try:
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass  # an earlier mutation replaced this path


async def _build(cfg) -> None:
    agent = Agent(cfg)
    try:
        for dev in agent.devices.values():
            if hasattr(dev, "_attach"):
                dev._attach()   # join the bus: the breaker is built here, from the poll period
    finally:
        agent.outbox.close()
        if agent.flex is not None:
            agent.flex.close()
        for dev in agent.devices.values():
            await dev.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations)
@example([(("storage", "quota_mb"), 1e-9)])   # > 0 passes check; the outbox got int(1e-9 * 2**20) = 0 bytes
def test_what_check_passes_the_agent_is_built_from(site, mutations):
    base, valid = site
    data = copy.deepcopy(valid)
    for path, value in mutations:
        _set(data, path, value)
    try:
        cfg = parse_config(data, "gateway.toml", base_dir=base)
    except ConfigError:
        event("check refused it")
        return
    event("check passed it")
    asyncio.run(_build(cfg))


def test_the_valid_site_itself_builds(site):
    base, valid = site
    asyncio.run(_build(parse_config(copy.deepcopy(valid), "gateway.toml", base_dir=base)))


def test_points_a_sunspec_device_cannot_have_are_check_errors():
    """Found by the property above: the SunSpec driver refuses unknown canonical names when it is built."""
    data = {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": [{"id": "inv1", "driver": "sunspec_tcp", "host": "10.0.0.5", "points": ["W", "Wmaxlimpct"]}]}
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml")
    assert ei.value.errors == ["gateway.toml: devices[0].points[1]: no point 'Wmaxlimpct' for driver 'sunspec_tcp' "
                               "(did you mean 'WMaxLimPct'?)"]
