"""gridedge's A/B releases on the gateway: the start guard (boot.py) that counts a release's starts and rolls it back,
the trial record it keeps, the wheelhouse an update unpacks, and `gridedge release init`. Real files, links and
processes; the record and the tar are hostile input, fuzzed."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gridedge.fleet import boot
from gridedge.fleet.release import ReleaseError, Releases, extract_wheels, init_root


def _root(tmp_path: Path, *versions: str) -> Path:
    root = tmp_path / "opt"
    for v in versions:
        (root / "releases" / v / "venv" / "bin").mkdir(parents=True)
    (root / "boot.py").write_bytes(Path(boot.__file__).read_bytes())
    return root


def _on_trial(root: Path, old: str = "1.0", new: str = "1.1", max_starts: int = 2) -> Releases:
    rel = Releases(root)
    boot.point(root, "current", old)
    rel.begin_trial(new, {"cmd_id": "upd-1", "max_starts": max_starts, "reason": None})
    return rel


def test_begin_trial_switches_the_links_and_records_the_trial(tmp_path):
    root = _root(tmp_path, "1.0", "1.1")
    rel = _on_trial(root)
    assert (rel.current, rel.previous) == ("1.1", "1.0")
    assert os.readlink(root / "current") == "releases/1.1"
    t = rel.trial()
    assert (t["state"], t["version"], t["previous"], t["starts"]) == ("trying", "1.1", "1.0", 0)


def test_the_guard_counts_starts_and_rolls_back_after_the_second_failed_one(tmp_path):
    root = _root(tmp_path, "1.0", "1.1")
    rel = _on_trial(root)
    assert "start 1 of 2" in boot.guard(root)       # the first start of 1.1
    assert "start 2 of 2" in boot.guard(root)       # it crashed; systemd starts it again
    said = boot.guard(root)                          # it crashed again: back to 1.0
    assert "rolled back to 1.0" in said
    assert rel.current == "1.0"
    t = rel.trial()
    assert t["state"] == "rolled_back" and "2 starts ended before its health check passed" in t["reason"]
    assert boot.guard(root) is None                  # the previous release starts, nothing more is counted


def test_no_trial_no_action(tmp_path):
    root = _root(tmp_path, "1.0")
    boot.point(root, "current", "1.0")
    assert boot.guard(root) is None and not (root / boot.TRIAL).exists()


def test_an_unreadable_trial_record_rolls_back_to_the_previous_release(tmp_path):
    root = _root(tmp_path, "1.0", "1.1")
    rel = _on_trial(root)
    (root / boot.TRIAL).write_bytes(b"\x00garbage")
    assert "rolled back to 1.0" in boot.guard(root)
    assert rel.current == "1.0" and rel.trial()["state"] == "rolled_back"


def test_a_rollback_when_the_previous_release_is_gone_says_so(tmp_path):
    root = _root(tmp_path, "1.0", "1.1")
    rel = _on_trial(root, max_starts=1)
    Releases._remove(root / "releases" / "1.0")
    boot.guard(root)
    said = boot.guard(root)
    assert "is gone, nothing to roll back to" in said and rel.current == "1.1"


def test_the_guard_as_the_unit_and_the_agent_run_it(tmp_path):
    """`python3 -I boot.py -- CMD`: counts the start, then execs CMD without PYTHONPATH (a release runs from its
    own virtualenv and nothing else)."""
    root = _root(tmp_path, "1.0", "1.1")
    _on_trial(root)
    env = dict(os.environ, PYTHONPATH="/somewhere/else")
    out = subprocess.run([sys.executable, "-I", str(root / "boot.py"), "--", "/bin/sh", "-c",
                          'echo "pythonpath=[$PYTHONPATH]"'], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pythonpath=[]"
    assert "start 1 of 2" in out.stderr
    assert boot.read_trial(root)["starts"] == 1


def test_prune_keeps_current_and_previous_and_never_follows_a_link(tmp_path):
    root = _root(tmp_path, "1.0", "1.1", "1.2")
    outside = tmp_path / "elsewhere-venv"
    (outside / "bin").mkdir(parents=True)
    (root / "releases" / "0.9").symlink_to(outside)
    boot.point(root, "previous", "1.1")
    boot.point(root, "current", "1.2")
    assert Releases(root).prune() == ["0.9", "1.0"]
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["1.1", "1.2"]
    assert (outside / "bin").is_dir()     # a linked installation is unlinked, never deleted


def test_release_init_makes_this_installation_the_current_release(tmp_path):
    root = tmp_path / "opt"
    init_root(root, "1.0", Path(sys.prefix))
    assert Releases(root).current == "1.0"
    assert (root / "releases" / "1.0" / "venv").resolve() == Path(sys.prefix).resolve()
    assert (root / "boot.py").read_bytes() == Path(boot.__file__).read_bytes()
    init_root(root, "1.0", Path(sys.prefix))     # again: nothing changes
    with pytest.raises(ReleaseError):
        init_root(root, "1.0", tmp_path)          # another installation under the same name


def test_release_init_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gridedge", "release", "init", str(tmp_path / "opt")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "opt" / "current" / "venv" / "bin" / "gridedge").exists()


@settings(max_examples=300)
@given(raw=st.binary(max_size=200) | st.dictionaries(
    st.sampled_from(["state", "version", "previous", "starts", "max_starts", "cmd_id", "reason", "x"]),
    st.none() | st.booleans() | st.integers(-5, 2000) | st.text(max_size=70) | st.sampled_from(
        ["trying", "rolled_back", "1.0", "../etc"])).map(lambda d: json.dumps(d).encode()))
def test_fuzz_the_trial_record_is_ours_or_refused(raw):
    try:
        doc = boot.parse_trial(raw)
    except boot.TrialError as exc:
        assert str(exc)
        return
    assert doc["state"] in boot.STATES and boot.VERSION.fullmatch(doc["previous"])
    assert "/" not in doc["version"] and 0 <= doc["starts"] <= 1000


# -- the wheelhouse -------------------------------------------------------------------------------------

def _tar(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, data, type) -> tar bytes; type is a tarfile type (REGTYPE, DIRTYPE, SYMTYPE...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b"") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


GOOD = [("gridedge-1.1-cp311-cp311-linux_x86_64.whl", b"PK", tarfile.REGTYPE),
        ("numpy-2.0-cp311-cp311-linux_x86_64.whl", b"PK", tarfile.REGTYPE)]


def test_a_wheelhouse_unpacks_to_its_wheels(tmp_path):
    art = tmp_path / "a.tar"
    art.write_bytes(_tar(GOOD))
    got = extract_wheels(art, tmp_path / "w", "1.1")
    assert sorted(p.name for p in got) == sorted(n for n, _d, _k in GOOD)


@pytest.mark.parametrize("members, why", [
    ([("../evil.whl", b"x", tarfile.REGTYPE)], "not a wheel file"),
    ([("sub/gridedge-1.1-py3-none-any.whl", b"x", tarfile.REGTYPE)], "not a wheel file"),
    ([("gridedge-1.1-py3-none-any.whl", None, tarfile.SYMTYPE)], "not a wheel file"),
    ([("wheels", None, tarfile.DIRTYPE)], "not a wheel file"),
    ([("setup.py", b"import os", tarfile.REGTYPE)], "not a wheel file"),
    (GOOD + GOOD[:1], "twice"),
    (GOOD[1:], "does not hold gridedge 1.1's wheel"),
    ([("gridedge-1.0-py3-none-any.whl", b"x", tarfile.REGTYPE)], "does not hold gridedge 1.1's wheel"),
])
def test_a_hostile_wheelhouse_is_refused(tmp_path, members, why):
    art = tmp_path / "a.tar"
    art.write_bytes(_tar(members))
    with pytest.raises(ReleaseError, match=why) as info:
        extract_wheels(art, tmp_path / "w", "1.1")
    assert info.value.status == "rejected"     # the release is at fault, not the gateway
    assert not (tmp_path / "evil.whl").exists() and not (tmp_path / "w" / "sub").exists()


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=3000))
def test_fuzz_an_artefact_is_a_wheelhouse_or_refused(tmp_path_factory, raw):
    d = tmp_path_factory.mktemp("fz")
    art = d / "a.tar"
    art.write_bytes(_tar(GOOD)[:len(raw)] if raw[:1] == b"\x00" else raw)
    try:
        got = extract_wheels(art, d / "w", "1.1")
    except ReleaseError as exc:
        assert str(exc)
        return
    assert all(p.parent == d / "w" and p.name.endswith(".whl") for p in got)
