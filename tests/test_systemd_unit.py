"""The shipped unit: valid for systemd, and as tight as `systemd-analyze security` can score it (target <= 2.0)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "gridedge.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


def _unit_here(tmp_path) -> Path:
    """The unit with its ExecStart pointing at this checkout's gridedge (verify checks the binary exists)."""
    gridedge = Path(sys.executable).with_name("gridedge")
    unit = tmp_path / "gridedge.service"
    unit.write_text(UNIT.read_text().replace("/opt/gridedge/current/venv/bin/gridedge", str(gridedge)))
    return unit


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path):
    out = subprocess.run([ANALYZE, "verify", "--man=no", str(_unit_here(tmp_path))], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


@needs_analyze
def test_exposure_is_at_most_2(tmp_path):
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(_unit_here(tmp_path))], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def test_the_unit_says_what_the_agent_does():
    """Type=notify needs the agent's READY=1; WatchdogSec needs its WATCHDOG=1; state in StateDirectory."""
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "StateDirectory=gridedge", "UMask=0077", "DevicePolicy=closed",
                 "CapabilityBoundingSet=\n"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
