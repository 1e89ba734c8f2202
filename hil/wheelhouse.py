"""A release artefact made from what is installed here: the wheels of gridedge and of every dependency it needs,
in one tar (a wheelhouse, docs/fleet.md says why that is the artefact).

The rig's repository publishes it, the update tests and `gridedge demo fleet` install it. Made offline, with no
index and no compiler: each installed distribution is packed back into a wheel from the files its RECORD lists
(gridedge itself from the files its packages import from, so an editable checkout packs as well as an installed
wheel). A different version, or a patched module, makes the other releases a test needs (a newer one, one that
crashes at start) in seconds.
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.machinery
import importlib.metadata as md
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from gridedge.contract import release_platform

#: gridedge's packages whose folders are not inside gridedge's own in an editable checkout (pyproject package-dir)
ROOTS = ("gridedge", "gridedge.core", "gridedge.drivers", "gridedge.hil", "gridedge.cext")
SUFFIXES = (".py", ".toml", ".pyx", ".pxd", *importlib.machinery.EXTENSION_SUFFIXES)
DROP = {"INSTALLER", "RECORD", "REQUESTED", "direct_url.json"}   # written by the installer, not part of a wheel


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(name: str = "gridedge") -> list[md.Distribution]:
    """The installed distributions `name` needs here (its requirements' closure, markers evaluated, no extras)."""
    found: dict[str, md.Distribution] = {}
    todo = [name]
    while todo:
        dist = md.distribution(todo.pop())
        key = _norm(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _compressed(tags: list[str]) -> str:
    """One file name for a wheel's tags (PEP 425): py2-none-any and py3-none-any make py2.py3-none-any."""
    parts = [t.split("-") for t in tags]
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def _packed(f: Path) -> bool:
    return f.name.endswith(SUFFIXES)


def _tag() -> str:
    """The wheel tag of a distribution with compiled code, for this interpreter and platform."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}-{release_platform()}"


class _Wheel:
    """Writes a wheel: files, then the dist-info with its RECORD (sha256 and size of every file)."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
        self.record: list[str] = []

    def add(self, arcname: str, data: bytes) -> None:
        info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))   # reproducible: same files, same bytes
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.record.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self, dist_info: str) -> None:
        self.record.append(f"{dist_info}/RECORD,,")
        self.zip.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
                          "\n".join(self.record) + "\n")
        self.zip.close()


def repack(dist: md.Distribution, dest: Path) -> Path:
    """The installed distribution as a wheel in dest (its files under site-packages; scripts are remade by pip from
    entry_points.txt)."""
    name, version = dist.metadata["Name"], dist.version
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    path = dest / f"{stem}-{_compressed(tags) if tags else 'py3-none-any'}.whl"
    w = _Wheel(path)
    dist_info = None
    for f in dist.files or ():
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts:
            continue
        if parts[0].endswith(".dist-info"):
            dist_info = parts[0]
            if len(parts) == 2 and parts[1] in DROP:
                continue
        w.add(f.as_posix(), Path(dist.locate_file(f)).read_bytes())
    if dist_info is None:
        raise ValueError(f"{name} {version}: no .dist-info among its installed files")
    w.close(dist_info)
    return path


def gridedge_wheel(dest: Path, version: str, patch: dict[str, str] | None = None) -> Path:
    """gridedge as it is imported here, as a wheel of `version`; patch: file in the wheel -> source appended to it
    (a test release that misbehaves: it can replace what the module defined)."""
    # the installed one (a .dist-info with METADATA), not a checkout's stale gridedge.egg-info that sys.path finds first
    dist = next((d for d in md.distributions(name="gridedge") if d.read_text("METADATA")), None)
    if dist is None:
        raise ValueError("gridedge is not installed (no .dist-info with METADATA): `pip install` it first")
    files: dict[str, Path] = {}
    for root in ROOTS:
        folder = Path(importlib.import_module(root).__path__[0])
        prefix = root.replace(".", "/")
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.name.endswith(SUFFIXES) and "__pycache__" not in f.parts:
                files.setdefault(f"{prefix}/{f.relative_to(folder).as_posix()}", f)
    unknown = sorted(set(patch or ()) - set(files))
    if unknown:
        raise ValueError(f"patch names files gridedge does not have: {unknown}")
    path = dest / f"gridedge-{version}-{_tag()}.whl"
    w = _Wheel(path)
    for arcname, f in sorted(files.items()):
        data = f.read_bytes()
        if arcname == "gridedge/__init__.py":
            data = re.sub(rb'__version__ = "[^"]*"', f'__version__ = "{version}"'.encode(), data)
        if patch and arcname in patch:
            data += b"\n" + patch[arcname].encode() + b"\n"
        w.add(arcname, data)
    dist_info = f"gridedge-{version}.dist-info"
    meta = re.sub(r"(?m)^Version: .*$", f"Version: {version}", dist.read_text("METADATA"))
    w.add(f"{dist_info}/METADATA", meta.encode())
    w.add(f"{dist_info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: gridedge.hil.wheelhouse\nRoot-Is-Purelib: false\n"
                                f"Tag: {_tag()}\n".encode())
    w.add(f"{dist_info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode())
    w.close(dist_info)
    return path


def dependency_wheels(dest: Path) -> list[Path]:
    """Every distribution gridedge needs here, and pip (a release brings the installer of the next one)."""
    dest.mkdir(parents=True, exist_ok=True)
    dists = [d for d in dependencies() if _norm(d.metadata["Name"]) != "gridedge"] + [md.distribution("pip")]
    return [repack(d, dest) for d in dists]


def wheelhouse(dest: Path, version: str, *, patch: dict[str, str] | None = None,
               deps: list[Path] | None = None) -> Path:
    """The release artefact <dest>/gridedge-<version>.tar: gridedge's wheel and its dependencies' (deps: made
    before by dependency_wheels, shared between releases; default: made now)."""
    work = dest / f"wheels-{version}"
    work.mkdir(parents=True, exist_ok=True)
    wheels = [gridedge_wheel(work, version, patch)] + (deps if deps is not None else dependency_wheels(work))
    out = dest / f"gridedge-{version}.tar"
    with tarfile.open(out, "w") as tar:
        for whl in wheels:
            info = tar.gettarinfo(str(whl), arcname=whl.name)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(whl, "rb") as fh:
                tar.addfile(info, fh)
    shutil.rmtree(work)
    return out
