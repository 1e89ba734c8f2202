"""The update repository as the gateway sees it: TUF metadata checked by python-tuf's ngclient against the rig's
repository served over HTTPS on loopback, each attack refused with a reason a person can act on; the time expiry is
judged at before the clock is synchronised (python-tuf#2359); a download's whole duration bounded.

No agent here (tests/test_fleet_update.py has it, over the broker): these are the gateway's fetch_release and
trusted_time against a real repository, real TLS and real sockets.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gridedge.contract import release_target
from gridedge.fleet.repository import (BoundedFetcher, UpdateRefused, fetch_release, read_floor, trusted_time)
from gridedge.hil.pki import make_pki
from gridedge.hil.tufrepo import RepositoryServer, TufRepository

DAY = 86400.0


@pytest.fixture
def served(tmp_path):
    pki = make_pki(tmp_path / "pki")
    repo = TufRepository(tmp_path / "repo")
    server = RepositoryServer(repo.dir, pki.server_cert, pki.server_key)
    server.start()
    artefact = tmp_path / "release.tar"
    artefact.write_bytes(bytes(range(256)) * 4096)   # 1 MiB
    yield SimpleNamespace(tmp=tmp_path, pki=pki, repo=repo, server=server, artefact=artefact)
    server.stop()


def fetch(s, version: str, **kw):
    args = dict(url=s.server.url, root=s.repo.root_json(), cache=s.tmp / "cache", dest=s.tmp / "download",
                ca_file=s.pki.ca_cert, timeout_s=30.0, max_bytes=64 * 2**20,
                at=dt.datetime.now(dt.timezone.utc))
    args.update(kw)
    return fetch_release(version, **args)


def refused(s, version: str, **kw) -> UpdateRefused:
    with pytest.raises(UpdateRefused) as info:
        fetch(s, version, **kw)
    return info.value


def test_a_published_release_is_downloaded_and_verified(served):
    served.repo.publish(served.artefact, "1.2.0")
    path, digest = fetch(served, "1.2.0")
    assert path.read_bytes() == served.artefact.read_bytes()
    assert digest == served.repo.md["targets"].signed.targets[release_target("1.2.0")].hashes["sha256"]


def test_a_tampered_artefact_is_refused(served):
    name = served.repo.publish(served.artefact, "1.2.0")
    served.repo.tamper(name)
    r = refused(served, "1.2.0")
    assert (r.status, r.step) == ("rejected", "artefact")
    assert "does not match its signed length and hash" in r.reason
    assert not any((served.tmp / "download").iterdir())    # nothing of it kept


def test_an_expired_timestamp_is_refused(served):
    served.repo.publish(served.artefact, "1.2.0")
    served.repo.expire_timestamp()
    r = refused(served, "1.2.0")
    assert (r.status, r.step) == ("rejected", "metadata")
    assert "expired" in r.reason and "timestamp" in r.reason


def test_older_metadata_served_again_is_a_rollback_attack(served):
    served.repo.publish(served.artefact, "1.2.0")
    old = served.repo.saved()
    served.repo.publish(served.artefact, "1.3.0")
    fetch(served, "1.3.0")                      # the gateway has seen the newer metadata
    served.repo.restore(old)                    # a mirror serves the older state again
    r = refused(served, "1.2.0")
    assert r.status == "rejected" and "rollback attack" in r.reason, r.reason


def test_a_release_signed_by_a_key_the_root_does_not_name_is_refused(served):
    served.repo.publish(served.artefact, "1.2.0", targets_signers=[served.repo.rogue_signer()])
    r = refused(served, "1.2.0")
    assert r.status == "rejected" and "not signed by the keys the trusted root names" in r.reason, r.reason


def test_a_root_made_by_someone_else_is_not_trusted(served, tmp_path):
    """A whole repository signed by an attacker's keys: its root is not the one the gateway was given."""
    served.repo.publish(served.artefact, "1.2.0")
    other = TufRepository(tmp_path / "other")
    r = refused(served, "1.2.0", root=other.root_json())
    assert r.status == "rejected", r.reason


def test_a_release_the_repository_does_not_have(served):
    r = refused(served, "9.9.9")
    assert r.status == "rejected" and "has no release 9.9.9" in r.reason


def test_a_release_larger_than_allowed_is_not_downloaded(served):
    name = served.repo.publish(served.artefact, "1.2.0")
    r = refused(served, "1.2.0", max_bytes=1000)
    assert "more than the 1000 allowed" in r.reason
    assert not any(q.path.endswith(Path(name).name) for q in served.server.requests)


def test_oversized_metadata_is_refused(served):
    served.repo.publish(served.artefact, "1.2.0")
    ts = served.repo.metadata / "timestamp.json"
    ts.write_bytes(ts.read_bytes() + b" " * 20000)      # still valid JSON, beyond the 16 KiB a timestamp may have
    r = refused(served, "1.2.0")
    assert "longer than allowed" in r.reason, r.reason


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(st.binary(max_size=300), st.dictionaries(st.text(max_size=8), st.integers()).map(
    lambda d: json.dumps(d).encode()), st.just(b'{"signed": {"_type": "timestamp"}, "signatures": []}')))
def test_fuzz_malformed_timestamp_metadata_is_refused_with_a_reason(served, junk):
    """Whatever the repository serves as its timestamp: a refusal with a reason, never another exception."""
    (served.repo.metadata / "timestamp.json").write_bytes(junk)
    r = refused(served, "1.2.0")
    assert r.reason and r.status in ("rejected", "failed")


def test_a_repository_with_a_certificate_of_another_ca_is_refused(served, tmp_path):
    other = make_pki(tmp_path / "other-pki")
    r = refused(served, "1.2.0", ca_file=other.ca_cert)
    assert r.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in r.reason, r.reason


def test_a_server_that_drips_bytes_is_cut_off_at_the_deadline(served):
    """One byte every 0.2 s never trips the gap timeout (30 s); the whole update has 2 s."""
    name = served.repo.publish(served.artefact, "1.2.0")
    served.server.faults.drip[Path(name).name] = 0.2
    r = refused(served, "1.2.0", timeout_s=2.0)
    assert (r.status, r.step) == ("failed", "artefact")
    assert "took longer than 2 s" in r.reason
    req = next(q for q in served.server.requests if q.path.endswith(Path(name).name))
    assert not req.done and 0 < req.sent < served.artefact.stat().st_size


def test_the_deadline_covers_the_metadata_too(served):
    served.repo.publish(served.artefact, "1.2.0")
    served.server.faults.drip["timestamp.json"] = 0.2
    r = refused(served, "1.2.0", timeout_s=1.0)
    assert r.step == "metadata" and "took longer than 1 s" in r.reason


def test_the_fetcher_cuts_a_blocked_read_when_the_deadline_passes(served):
    """A read blocked on a server that sends nothing more (held half way) ends at the deadline, not at the gap."""
    name = served.repo.publish(served.artefact, "1.2.0")
    served.server.faults.hold[Path(name).name] = threading.Event()
    t0 = time.monotonic()
    fetcher = BoundedFetcher(deadline=t0 + 1.5, total_s=1.5, ca_file=served.pki.ca_cert, tmp_dir=served.tmp,
                             gap_s=60.0)
    url = f"{served.server.url}/targets/{served.repo.target_file(name).relative_to(served.repo.targets)}"
    with pytest.raises(Exception) as info:
        b"".join(fetcher.fetch(url))
    assert "took longer than 1.5 s" in str(info.value)


# -- the clock before it is synchronised ----------------------------------------------------------------

def test_a_clock_behind_cannot_revive_expired_metadata(served):
    """A Pi boots on the time it last saved: days behind. The timestamp expired an hour ago. Judged by that clock
    (ngclient's default) it would pass, a freeze attack; judged at the update command's signed time it does not."""
    served.repo.publish(served.artefact, "1.2.0")
    served.repo.expire_timestamp(ago=dt.timedelta(hours=1))
    now = time.time()
    clock = now - 3 * DAY
    naive = dt.datetime.fromtimestamp(clock, dt.timezone.utc)
    fetch(served, "1.2.0", at=naive, cache=served.tmp / "naive")          # what the clock alone would allow
    at, basis = trusted_time(served.tmp / "floor", issued_s=now - 5, synced=False, now_s=clock)
    r = refused(served, "1.2.0", at=dt.datetime.fromtimestamp(at, dt.timezone.utc))
    assert "expired" in r.reason
    assert basis.startswith("the update command's signed time") and at == now - 5


def test_an_unsynchronised_clock_ahead_neither_refuses_good_metadata_nor_sticks(served):
    """Set a month ahead by hand: fresh metadata would look expired. Not synchronised, the clock is not used; the
    floor does not move, so nothing stays wrong after the clock is fixed."""
    served.repo.publish(served.artefact, "1.2.0")
    now = time.time()
    at, _ = trusted_time(served.tmp / "floor", issued_s=now, synced=False, now_s=now + 30 * DAY)
    fetch(served, "1.2.0", at=dt.datetime.fromtimestamp(at, dt.timezone.utc))
    assert read_floor(served.tmp / "floor") == 0.0


def test_a_synchronised_clock_raises_the_floor_and_the_floor_holds_after_a_reboot(tmp_path):
    floor = tmp_path / "fleet" / "floor"
    now = time.time()
    at, basis = trusted_time(floor, issued_s=None, synced=True, now_s=now)
    assert (at, basis) == (now, "the synchronised clock") and read_floor(floor) == pytest.approx(now, abs=1)
    # rebooted with the clock behind, not synchronised yet; the command was signed a week before the floor
    at, basis = trusted_time(floor, issued_s=now - 7 * DAY, synced=False, now_s=now - 300 * DAY)
    assert at == pytest.approx(now, abs=1) and basis.startswith("the last synchronised time seen")


def test_no_synchronised_clock_and_nothing_signed_is_a_refusal(tmp_path):
    with pytest.raises(UpdateRefused) as info:
        trusted_time(tmp_path / "floor", issued_s=None, synced=False, now_s=time.time())
    assert "not synchronised" in info.value.reason


@given(raw=st.binary(max_size=40) | st.floats(allow_nan=True).map(lambda f: repr(f).encode()))
def test_fuzz_a_floor_file_is_a_time_of_ours_or_nothing(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("floor") / "floor"
    path.write_bytes(raw)
    t = read_floor(path)
    assert t == 0.0 or 1_577_836_800 <= t < time.time() + 3650 * DAY
