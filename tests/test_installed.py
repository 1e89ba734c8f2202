"""What a user gets: gridedge built as a wheel, installed outside the checkout and run from another directory.

An editable install or the checkout's root on sys.path can hide an import of the source tree (`import hil`
worked only from the repository root); a real wheel in a folder of its own cannot.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import zipfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The first test's fixture builds the wheel (the Cython kernels compiled) and installs it in a new venv: about a
# minute on a quiet 2-core machine, and it counts against that test's limit.
pytestmark = pytest.mark.timeout(300)


def _clean_copy(dest: Path) -> Path:
    """The files git tracks (or would, untracked but not ignored), as a fresh clone has them."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        f = ROOT / os.fsdecode(name)
        if f.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / os.fsdecode(name))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel of this checkout installed into a folder of its own; the environment that runs it from there."""
    base = tmp_path_factory.mktemp("installed")
    wheels, target = base / "wheels", base / "site"
    src = _clean_copy(base / "src")   # not the checkout: its build/ directory can hold modules pyproject left out
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("gridedge-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(target)  # ahead of the venv's editable finder, which stays for the dependencies
    env["PATH"] = f"{target / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cwd = base / "elsewhere"
    cwd.mkdir()
    return {"env": env, "cwd": cwd, "target": target, "wheel_files": names}


def _py(installed, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=installed["env"], cwd=installed["cwd"], capture_output=True,
                          text=True, timeout=timeout)


#: source folder -> where its files go in the wheel (pyproject.toml package-dir)
FOLDERS = {"edge": "gridedge", "core": "gridedge/core", "drivers": "gridedge/drivers", "hil": "gridedge/hil",
           "cext": "gridedge/cext"}


def test_the_wheel_holds_every_module_and_data_file(installed):
    """A package left out of pyproject's list imports fine from the checkout (editable) and not at all once
    installed: every .py and every data file of the source folders must be in the wheel."""
    want = set()
    for folder, pkg in FOLDERS.items():
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and f.suffix in (".py", ".toml", ".pyx") and "__pycache__" not in f.parts:
                want.add(f"{pkg}/{f.relative_to(ROOT / folder).as_posix()}")
    missing = sorted(want - installed["wheel_files"])
    assert missing == []


def test_the_wheel_is_what_runs(installed):
    out = _py(installed, "-c", "import gridedge, gridedge.hil.plant; print(gridedge.__file__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(installed["target"])), out.stdout
    assert not Path(out.stdout.strip()).is_relative_to(ROOT)


def test_installed_demo_passes_from_another_directory(installed):
    out = _py(installed, "-m", "gridedge", "demo", "--duration-s", "4", timeout=180)
    assert "demo: PASS" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0


def test_installed_simulator_serves_from_another_directory(installed):
    proc = subprocess.Popen([sys.executable, "-m", "gridedge.hil.inverter_sim", "--host", "127.0.0.1", "--port", "0"],
                            env=installed["env"], cwd=installed["cwd"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the simulator serves, or exits
        assert line.startswith("READY "), line + proc.stderr.read()
        port = int(line.split()[1])
        assert 0 < port < 65536
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
