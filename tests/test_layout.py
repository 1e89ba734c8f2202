"""The layout is the architecture: imports run one way (docs/architecture.md, "Layout and imports").

    drivers -> core <- agent;   rig -> public entry points only;   nothing shipped in the agent imports the rig
    (but the demo command, which starts it).

Read from the source with ast, lazy imports inside functions included, so an arrow cannot hide in a function body.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> package (pyproject.toml [tool.setuptools.package-dir])
PACKAGES = {"core": "gridedge.core", "drivers": "gridedge.drivers", "hil": "gridedge.hil", "cext": "gridedge.cext",
            "edge": "gridedge"}
#: What the rig may import of gridedge: the core, the documented MQTT contract and client, the drivers' sans-IO
#: codecs (the simulators speak the same wire formats), the head-end's signing library (the DSO simulator signs
#: its commands as a real head-end would), the head-end's reference decoder (it reads telemetry as a head-end
#: would), and the uplink's outbox and publisher (the fleet simulator runs the agent's own uplink a thousand times,
#: hil/fleet_sim.py). Everything else of the agent is off limits.
RIG_PUBLIC = ("gridedge.core", "gridedge.contract", "gridedge.telemetry", "gridedge.mqtt", "gridedge.hil",
              "gridedge.outbox", "gridedge.uplink",
              "gridedge.drivers.sunspec", "gridedge.drivers.sunspec_models", "gridedge.drivers.regmap",
              "gridedge.drivers.mbap", "gridedge.drivers.rtu", "gridedge.drivers.dlms.errors", "gridedge.drivers.dlms.hdlc",
              "gridedge.drivers.dlms.wrapper", "gridedge.drivers.dlms.mbus", "gridedge.drivers.dlms.axdr",
              "gridedge.drivers.dlms.apdu", "gridedge.drivers.dlms.security", "gridedge.drivers.dlms.cosem",
              "gridedge.drivers.dlms.iec21", "gridedge.security.signing", "gridedge.security.jws",
              "gridedge.headend", "gridedge.compression", "gridedge.layouts", "gridedge.drivers.c37118")
#: Agent modules that may use the rig: the demo command, and the lab command (its throwaway PKI; edge/lab.py says why).
RIG_USERS = ("gridedge.demo", "gridedge.lab")


def _module(path: Path) -> tuple[str, bool]:
    """Dotted module name of a source file, and whether it is a package's __init__."""
    rel = path.relative_to(ROOT)
    base = PACKAGES[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join([base, *parts]), is_pkg


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGES for p in (ROOT / d).rglob("*.py"))


def _is_module(name: str) -> bool:
    """Is a dotted gridedge name a module or package of this checkout (rather than a name inside one)?"""
    for folder, pkg in sorted(PACKAGES.items(), key=lambda kv: -len(kv[1])):
        if name == pkg or name.startswith(pkg + "."):
            rest = name[len(pkg):].lstrip(".").split(".") if name != pkg else []
            p = ROOT / folder / Path(*rest) if rest else ROOT / folder
            return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()
    return False


def imports_of(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of gridedge in a file, relative ones resolved."""
    mod, is_pkg = _module(path)
    package = mod if is_pkg else mod.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from gridedge.core import schema" imports the module gridedge.core.schema
            names = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in dict.fromkeys(names) if n == "gridedge" or n.startswith("gridedge.") or
                n.split(".")[0] in PACKAGES]
    return out


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _arrows(src_prefix: str):
    for path in _sources():
        mod, _ = _module(path)
        if _under(mod, (src_prefix,)) and (src_prefix != "gridedge" or not _under(
                mod, ("gridedge.core", "gridedge.drivers", "gridedge.hil", "gridedge.cext"))):
            for line, target in imports_of(path):
                yield f"{path.relative_to(ROOT)}:{line}", mod, target


def test_no_top_level_source_tree_imports():
    """`import hil` or `import drivers` works only from the checkout's root, never once installed."""
    bad = [(where, t) for p in ("gridedge.core", "gridedge.drivers", "gridedge.hil", "gridedge.cext", "gridedge")
           for where, _m, t in _arrows(p) if t.split(".")[0] in PACKAGES]
    assert bad == []


def test_core_imports_nothing_else_of_gridedge():
    bad = [(where, t) for where, _m, t in _arrows("gridedge.core") if not _under(t, ("gridedge.core",))]
    assert bad == []


def test_drivers_import_only_the_core():
    bad = [(where, t) for where, _m, t in _arrows("gridedge.drivers")
           if not _under(t, ("gridedge.core", "gridedge.drivers"))]
    assert bad == []


def test_agent_never_imports_the_rig_but_for_the_demo():
    bad = [(where, t) for where, m, t in _arrows("gridedge") if _under(t, ("gridedge.hil",)) and m not in RIG_USERS]
    assert bad == []


def test_rig_uses_public_entry_points_only():
    bad = [(where, t) for where, _m, t in _arrows("gridedge.hil") if not _under(t, RIG_PUBLIC)]
    assert bad == []


@pytest.mark.parametrize("source, expected", [
    ("from gridedge.control import engine\n", ["gridedge.control.engine"]),
    ("from gridedge.core.model import Sample\n", ["gridedge.core.model"]),
    ("from gridedge.core import schema as s\n", ["gridedge.core.schema"]),
    ("from ..contract import Command\n", ["gridedge.contract"]),
    ("from . import window\n", ["gridedge.flex.window"]),
    ("def f():\n    from gridedge.hil.rig import Rig\n", ["gridedge.hil.rig"]),
    ("import hil.controls\n", ["hil.controls"]),
])
def test_the_checker_sees_each_import_form(source, expected):
    """The checks above are only as good as this reader: every import form resolves (incl. lazy and relative)."""
    probe = ROOT / "edge" / "flex" / "probe.py"
    assert [t for _l, t in imports_of(probe, source)] == expected
