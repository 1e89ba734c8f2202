"""gridedge's own releases side by side (A/B, docs/fleet.md).

    <root>/boot.py                  the start guard (gridedge.fleet.boot), ExecStartPre of the unit
    <root>/current -> releases/B    what systemd starts; switched atomically (a new link renamed over it)
    <root>/previous -> releases/A   what a rollback goes back to; kept until the next release proves healthy
    <root>/trial.json               while B is on trial (and after a rollback, until A has reported it)
    <root>/releases/<version>/venv  each release in a virtualenv of its own

A release is installed from its wheelhouse with pip, offline (--no-index), into a new folder: nothing the running
release uses is touched until the links switch.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

from ..core.text import escape
from ..sdnotify import child_env
from . import boot

WHEEL = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.whl")
MAX_WHEELS = 200
PIP_TIMEOUT_S = 900.0       # pip unpacks a few hundred files per second on a Pi 4
CHECK_TIMEOUT_S = 120.0
OUTPUT_TAIL = 1500          # what a failed subprocess's output contributes to the reason


class ReleaseError(Exception):
    """The release cannot be installed or started here; the message says why in one line. `status`: "rejected"
    when the release itself is at fault (not a wheelhouse, refuses the configuration), "failed" when the gateway
    could not finish (pip, disk, time)."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.status = status


def extract_wheels(artefact: Path, dest: Path, version: str) -> list[Path]:
    """The wheels of a wheelhouse tar, into dest. Hostile until checked (its hash was, its content not): only plain
    files named like wheels, no folders, links or devices, at most MAX_WHEELS; gridedge's wheel must be the one of
    `version`."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    try:
        with tarfile.open(artefact, "r:") as tar:
            for member in tar:
                if not member.isfile() or not WHEEL.fullmatch(member.name) or member.name.startswith("."):
                    raise ReleaseError(f"the artefact holds {escape(member.name, 80)!s}, which is not a wheel file",
                                       "rejected")
                if len(out) >= MAX_WHEELS:
                    raise ReleaseError(f"the artefact holds more than {MAX_WHEELS} files", "rejected")
                target = dest / member.name
                if target.exists():
                    raise ReleaseError(f"the artefact holds {member.name} twice", "rejected")
                src = tar.extractfile(member)
                with open(target, "xb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                out.append(target)
    except (tarfile.TarError, EOFError) as exc:
        raise ReleaseError(f"the artefact is not a wheelhouse tar: {escape(exc, 200)}", "rejected") from None
    ours = [w for w in out if w.name.split("-")[0] == "gridedge"]
    if [w.name.split("-")[1] for w in ours] != [version.replace("-", "_")]:
        raise ReleaseError(f"the artefact does not hold gridedge {version}'s wheel (it has "
                           f"{', '.join(w.name for w in ours) or 'none'})", "rejected")
    return out


async def _run(argv: list[str], timeout_s: float, what: str) -> None:
    """A subprocess that must succeed within timeout_s; its output's tail is the reason when it does not."""
    env = {k: v for k, v in child_env().items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise ReleaseError(f"{what} did not finish within {timeout_s:.0f} s") from None
    except asyncio.CancelledError:   # the agent stops: so does what it started (the next attempt starts over)
        proc.kill()
        raise
    if proc.returncode != 0:
        tail = out.decode("utf-8", "replace").strip()[-OUTPUT_TAIL:]
        raise ReleaseError(f"{what} failed (exit {proc.returncode}): {escape(tail, OUTPUT_TAIL)}")


class Releases:
    """The A/B root: which release runs, which came before, which is on trial; installing and switching."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        return self.root / "releases" / version

    @property
    def current(self) -> str | None:
        return boot.linked(self.root, "current")

    @property
    def previous(self) -> str | None:
        return boot.linked(self.root, "previous")

    def trial(self) -> dict | None:
        return boot.read_trial(self.root)

    def entry_point(self) -> Path:
        """What systemd starts: the gridedge of whatever `current` points at when it is exec'd."""
        return self.root / "current" / "venv" / "bin" / "gridedge"

    def restart_argv(self, args: list[str]) -> list[str]:
        """The unit's own sequence in one exec: the start guard, then the current release's `gridedge ARGS`."""
        return [sys.executable, "-I", str(self.root / "boot.py"), "--", str(self.entry_point()), *args]

    async def install(self, artefact: Path, version: str) -> None:
        """releases/<version>/venv from the wheelhouse, offline; a leftover of an earlier attempt is replaced."""
        if version in (self.current, self.previous):
            raise ReleaseError(f"release {version} is installed already as "
                               f"{'current' if version == self.current else 'previous'}")
        dest = self.path(version)
        await asyncio.to_thread(self._remove, dest)
        wheels = dest / "wheels"
        await asyncio.to_thread(extract_wheels, artefact, wheels, version)
        await _run([sys.executable, "-m", "venv", "--without-pip", str(dest / "venv")], 120, "creating its virtualenv")
        # This release's pip installs the next one; the wheelhouse brings the pip that will install the one after.
        want = [f"gridedge=={version}"] + (["pip"] if any(w.name.startswith("pip-") for w in wheels.iterdir()) else [])
        await _run([sys.executable, "-m", "pip", "--python", str(dest / "venv" / "bin" / "python"), "install",
                    "--no-index", "--no-cache-dir", "--no-compile", "--only-binary=:all:", "--find-links", str(wheels),
                    *want], PIP_TIMEOUT_S, "pip install")
        await asyncio.to_thread(shutil.rmtree, wheels, True)

    async def check(self, version: str, config: Path) -> None:
        """The new release must accept the configuration the gateway runs, before anything switches."""
        exe = self.path(version) / "venv" / "bin" / "gridedge"
        try:
            await _run([str(exe), "check", "-c", str(config)], CHECK_TIMEOUT_S, f"gridedge {version} check")
        except ReleaseError as exc:
            raise ReleaseError(str(exc), "rejected") from None

    def begin_trial(self, version: str, record: dict) -> None:
        """previous -> the running release, the trial recorded, current -> the new one (in that order: whatever the
        power does between the steps, boot.py finds a consistent pair)."""
        running = self.current
        boot.point(self.root, "previous", running)
        boot.write_trial(self.root, {**record, "state": "trying", "version": version, "previous": running,
                                     "starts": 0})
        boot.point(self.root, "current", version)

    def end_trial(self) -> None:
        (self.root / boot.TRIAL).unlink(missing_ok=True)
        boot._fsync_dir(self.root)

    def roll_back(self, reason: str) -> None:
        """current -> previous, the trial marked rolled back with its reason (the previous release reports it)."""
        trial = self.trial() or {}
        boot.write_trial(self.root, {**trial, "state": "rolled_back", "reason": reason})
        boot.point(self.root, "current", trial["previous"])

    def prune(self) -> list[str]:
        """Remove every release but the current and the previous one; returns the removed names."""
        keep = {self.current, self.previous}
        gone = []
        for d in sorted((self.root / "releases").iterdir()):
            if d.name not in keep:
                self._remove(d)
                gone.append(d.name)
        return gone

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_symlink():       # a release linked in from elsewhere (a provisioning or a test): only the link
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def init_root(root: Path, version: str, prefix: Path) -> None:
    """Make `root` an A/B root whose current release is the running installation (its virtualenv at `prefix`):
    releases/<version>/venv (the folder itself when it is already there, else a link to it), current, boot.py."""
    root = Path(root)
    rel = root / "releases" / version
    rel.mkdir(parents=True, exist_ok=True)
    venv = rel / "venv"
    if not venv.exists() and not venv.is_symlink():
        venv.symlink_to(Path(prefix).resolve(), target_is_directory=True)
    elif venv.resolve() != Path(prefix).resolve():
        raise ReleaseError(f"{venv} is another installation than this one ({prefix})")
    shutil.copyfile(boot.__file__, root / "boot.py")
    if boot.linked(root, "current") is None:
        boot.point(root, "current", version)
