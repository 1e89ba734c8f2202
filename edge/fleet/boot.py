"""The start guard of gridedge's A/B releases (docs/fleet.md): what the boot counter is to a bootloader.

A new release is on trial from the moment `current` points at it until it has passed the health check. Its own code
cannot be trusted to count its failed starts (a release that crashes on import never gets that far), so this file
does it before every start: systemd runs it first (ExecStartPre), and the agent runs it when it re-executes itself.
After `max_starts` starts without a verdict it points `current` back at the previous release and notes why; the
previous release reports the rollback when it starts.

It lives at <root>/boot.py, copied there by `gridedge release init`, and an update never replaces it: a release on
trial must not be able to break the guard that rolls it back. So it needs nothing but the standard library.

    python3 -I /opt/gridedge/boot.py                    count this start (ExecStartPre)
    python3 -I /opt/gridedge/boot.py -- CMD ARGS...     count it, then exec CMD (the agent's re-execution)
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

TRIAL = "trial.json"          # the release on trial (or just rolled back), beside the links
MAX_TRIAL_BYTES = 65536
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")   # a release's name: its folder under releases/
STATES = ("trying", "rolled_back")


class TrialError(ValueError):
    """The trial record is not one this guard wrote."""


def parse_trial(raw: bytes) -> dict:
    """The trial record from its bytes (hostile until checked: a damaged disk, a person's edit)."""
    if len(raw) > MAX_TRIAL_BYTES:
        raise TrialError(f"{len(raw)} bytes, more than {MAX_TRIAL_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TrialError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TrialError("not a JSON object")
    for key in ("version", "previous"):
        if not isinstance(doc.get(key), str) or not VERSION.fullmatch(doc[key]):
            raise TrialError(f"{key}: not a release name")
    if doc.get("state") not in STATES:
        raise TrialError(f"state: one of {', '.join(STATES)}")
    for key, hi in (("starts", 1000), ("max_starts", 10)):
        v = doc.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise TrialError(f"{key}: an integer 0..{hi}")
    for key in ("cmd_id", "reason"):
        if doc.get(key) is not None and (not isinstance(doc[key], str) or len(doc[key]) > 1024):
            raise TrialError(f"{key}: a string of at most 1024 characters, or null")
    return doc


def read_trial(root: Path) -> dict | None:
    """The trial record, or None when no release is on trial; TrialError when it cannot be read."""
    try:
        with open(Path(root) / TRIAL, "rb") as f:
            raw = f.read(MAX_TRIAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrialError(f"cannot read it: {exc.strerror or exc}") from None
    return parse_trial(raw)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_trial(root: Path, doc: dict) -> None:
    """Atomically (new file, fsync, rename, fsync the folder): a power cut leaves the old record or the new."""
    root = Path(root)
    tmp = root / f".{TRIAL}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(doc, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / TRIAL)
    _fsync_dir(root)


def point(root: Path, link: str, release: str) -> None:
    """Switch <root>/<link> to releases/<release> atomically (a new link renamed over the old one)."""
    root = Path(root)
    tmp = root / f".{link}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, root / link)
    _fsync_dir(root)


def linked(root: Path, link: str) -> str | None:
    """The release a link points at (its folder name under releases/), or None."""
    try:
        target = os.readlink(Path(root) / link)
    except OSError:
        return None
    name = Path(target).name
    return name if VERSION.fullmatch(name) and Path(target).parent.name == "releases" else None


def guard(root: Path) -> str | None:
    """Count this start of a release on trial; past its budget, roll back. Returns what it did, for the log."""
    root = Path(root)
    try:
        trial = read_trial(root)
    except TrialError as exc:
        previous = linked(root, "previous")
        if previous is None or previous == linked(root, "current"):
            return f"trial record unreadable ({exc}); nothing to roll back to"
        on_trial = linked(root, "current") or "unknown"
        point(root, "current", previous)
        write_trial(root, {"state": "rolled_back", "version": on_trial,
                           "previous": previous, "starts": 0, "max_starts": 1, "cmd_id": None,
                           "reason": f"the trial record was unreadable ({exc}): back to {previous}"})
        return f"trial record unreadable ({exc}): rolled back to {previous}"
    if trial is None or trial["state"] != "trying":
        return None
    trial["starts"] += 1
    if trial["starts"] <= trial["max_starts"]:
        write_trial(root, trial)
        return f"release {trial['version']} on trial: start {trial['starts']} of {trial['max_starts']}"
    failed = trial["starts"] - 1
    trial.update(state="rolled_back", reason=f"release {trial['version']} did not come up: {failed} start"
                 f"{'s' if failed != 1 else ''} ended before its health check passed (crashed or stopped)")
    if (root / "releases" / trial["previous"]).is_dir():
        point(root, "current", trial["previous"])
    else:
        trial["reason"] += f"; the previous release {trial['previous']} is gone, nothing to roll back to"
    write_trial(root, trial)
    return f"{trial['reason']}: rolled back to {trial['previous']}"


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    try:
        said = guard(root)
    except OSError as exc:   # a read-only or full disk: start what is there rather than nothing
        said = f"cannot keep the trial record in {root}: {exc}"
    if said:
        print(f"gridedge boot: {said}", file=sys.stderr, flush=True)
    if cmd:
        # a release runs from its own virtualenv and nothing else
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        os.execve(cmd[0], cmd, env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
