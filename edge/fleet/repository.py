"""A release from the operator's TUF repository (docs/fleet.md): metadata verified by python-tuf's ngclient (root,
targets, snapshot and timestamp roles, thresholds, expiry, rollback, freeze and mix-and-match protection), the
artefact checked against its signed length and hash, every download bounded in its whole duration.

Two things ngclient leaves to its user, done here:
- The time. ngclient judges expiry by the system clock (python-tuf#2359). A Raspberry Pi has no battery-backed
  clock and boots on the time it last saved, so its clock can be behind (expired metadata would look fresh: a
  freeze attack) or, set by hand, ahead (fresh metadata would look expired). `trusted_time` says which time is
  used: the clock once it is synchronised, else the signed time of the update command; never earlier than the
  last synchronised time this gateway saw (the floor, kept in storage). An unsynchronised clock moves nothing.
- The duration. Its fetcher's timeout is the gap between bytes, so a server that drips a byte just inside it
  holds the update for ever. `BoundedFetcher` cuts every download at one deadline for the whole update.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import os
import ssl
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from .. import __version__
from ..core.text import escape
from ..contract import release_target

GAP_S = 30.0                 # the longest silence between bytes
CHUNK = 64 * 1024            # read at most this per socket read: the deadline is looked at between reads
METADATA_LIMITS = UpdaterConfig(max_root_rotations=32, max_delegations=8, root_max_length=64 * 1024,
                                timestamp_max_length=16 * 1024, snapshot_max_length=256 * 1024,
                                targets_max_length=1024 * 1024, app_user_agent=f"gridedge/{__version__}")
SYNCED_FILE = Path("/run/systemd/timesync/synchronized")   # systemd-timesyncd touches it on each synchronisation
FLOOR_MIN_S = 1_577_836_800   # 2020-01-01: a floor before it is not one this code wrote


class UpdateRefused(Exception):
    """The release is not installed: why, in one line; `status` is "rejected" when the repository or the release
    is not to be trusted (or does not exist), "failed" when the gateway could not finish (network, disk)."""

    def __init__(self, reason: str, status: str = "rejected", step: str = "metadata") -> None:
        super().__init__(reason)
        self.reason, self.status, self.step = reason, status, step


# ---------------------------------------------------------------------------------------------- the time

def clock_synchronised() -> bool:
    """Does the kernel (or systemd-timesyncd) say the clock is synchronised? adjtimex(2) with no change asks the
    kernel; where a sandbox forbids it (the unit filters @clock), timesyncd's mark in /run answers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)     # struct timex, zeroed: modes = 0, read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        state = -1
    if state >= 0:
        return state != 5          # TIME_ERROR: the clock is not synchronised
    return SYNCED_FILE.exists()


def read_floor(path: Path) -> float:
    """The last synchronised time this gateway saw (seconds since the epoch); 0 when there is none or it is not
    one of ours (hostile until checked: a bigger number would make every metadata look expired)."""
    try:
        text = path.read_bytes()[:32].decode("ascii").strip()
        t = float(text)
    except (OSError, ValueError):
        return 0.0
    return t if FLOOR_MIN_S <= t < time.time() + 10 * 365 * 86400 and t == t else 0.0


def trusted_time(floor_path: Path, *, issued_s: float | None, synced: bool, now_s: float) -> tuple[float, str]:
    """The time expiry is judged at, and what it is, for the reason of a refusal. A synchronised clock raises the
    floor; an unsynchronised one is not used at all (neither behind nor ahead)."""
    floor = read_floor(floor_path)
    if synced:
        t = max(now_s, floor)
        if now_s > floor:
            _write_floor(floor_path, now_s)
        return t, "the synchronised clock"
    candidates = [(floor, "the last synchronised time seen"), (issued_s or 0.0, "the update command's signed time")]
    t, what = max(candidates)
    if t <= 0:
        raise UpdateRefused("the clock is not synchronised and nothing signed says what time it is", "failed")
    return t, f"{what}, the clock is not synchronised"


def _write_floor(path: Path, t: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{t:.0f}\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- the network

class BoundedFetcher(FetcherInterface):
    """ngclient's downloads over HTTPS with one deadline for all of them, the gap between bytes bounded as well,
    and temporary files in the gateway's storage (not /tmp, which is memory on many boards)."""

    def __init__(self, *, deadline: float, total_s: float, ca_file: Path | None, tmp_dir: Path,
                 gap_s: float = GAP_S, abort: threading.Event | None = None) -> None:
        """abort: set by the agent when it stops; the download in progress ends at once."""
        self.deadline, self.total_s, self.gap_s, self.tmp_dir = deadline, total_s, gap_s, tmp_dir
        self.abort = abort or threading.Event()
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.pool = urllib3.PoolManager(ssl_context=ctx, retries=False,
                                        headers={"User-Agent": f"gridedge/{__version__}",
                                                 "Accept-Encoding": "identity"})

    def _left(self, url: str) -> float:
        if self.abort.is_set():
            raise tuf_errors.DownloadError(f"the agent stopped (before {url})")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise tuf_errors.SlowRetrievalError(f"the update's downloads took longer than {self.total_s:g} s "
                                                f"(cut off before {url})")
        return left

    def _fetch(self, url: str) -> Iterator[bytes]:
        t = min(self.gap_s, self._left(url))
        try:
            resp = self.pool.request("GET", url, preload_content=False, decode_content=False, redirect=False,
                                     timeout=urllib3.Timeout(connect=t, read=t))
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError(f"no answer from {url} within {t:.0f} s") from exc
        if resp.status >= 300:
            resp.release_conn()
            raise tuf_errors.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._chunks(resp, url)

    def _chunks(self, resp, url: str) -> Iterator[bytes]:
        finished, cut = threading.Event(), threading.Event()

        def watch() -> None:     # a read blocked on a dripping server ends at the deadline, not at its next byte
            while not finished.wait(min(0.2, max(self.deadline - time.monotonic(), 0.0))):
                if self.abort.is_set() or time.monotonic() >= self.deadline:
                    cut.set()
                    try:
                        resp.shutdown()
                    except (ValueError, RuntimeError, OSError):
                        pass
                    return

        watcher = threading.Thread(target=watch, name="update-deadline", daemon=True)
        watcher.start()
        try:
            while True:
                try:
                    data = resp.read1(CHUNK)
                except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError) as exc:
                    if cut.is_set():
                        break
                    raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from exc
                if not data or cut.is_set():
                    break
                yield data
            if self.abort.is_set():
                raise tuf_errors.DownloadError(f"the agent stopped (in {url})")
            if cut.is_set() or time.monotonic() >= self.deadline:
                raise tuf_errors.SlowRetrievalError(f"the update's downloads took longer than {self.total_s:g} s "
                                                    f"(cut off in {url})")
        finally:
            finished.set()
            resp.release_conn()

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO]:
        """As ngclient's, with the temporary file in tmp_dir."""
        received = 0
        with tempfile.TemporaryFile(dir=self.tmp_dir) as f:
            for chunk in self.fetch(url):
                received += len(chunk)
                if received > max_length:
                    raise tuf_errors.DownloadLengthMismatchError(
                        f"{url}: more than the {max_length} bytes its metadata allows")
                f.write(chunk)
            f.seek(0)
            yield f


# ---------------------------------------------------------------------------------------------- the release

def explain(exc: BaseException) -> UpdateRefused:
    """A TUF or download error as the reason the head-end reads (escaped: it quotes what came from outside)."""
    text = escape(str(exc) or type(exc).__name__, 300)
    rules = [
        (tuf_errors.ExpiredMetadataError, "rejected", "the repository's metadata has expired ({}): a freeze attack, "
                                                      "or a repository nobody re-signs"),
        (tuf_errors.BadVersionNumberError, "rejected", "the repository offers older metadata than this gateway has "
                                                       "seen ({}): a rollback attack"),
        (tuf_errors.UnsignedMetadataError, "rejected", "metadata not signed by the keys the trusted root names ({})"),
        (tuf_errors.LengthOrHashMismatchError, "rejected", "the download does not match its signed length and hash "
                                                           "({}): tampered with on the way or on the mirror"),
        (tuf_errors.DownloadLengthMismatchError, "rejected", "a download is longer than allowed ({})"),
        (tuf_errors.SlowRetrievalError, "failed", "download too slow: {}"),
        (tuf_errors.DownloadHTTPError, "failed", "the repository answered {}"),
        (tuf_errors.RepositoryError, "rejected", "the repository's metadata is refused: {}"),
        (tuf_errors.DownloadError, "failed", "download failed: {}"),
    ]
    for cls, status, fmt in rules:
        if isinstance(exc, cls):
            cause = exc.__cause__
            detail = text if cause is None or str(cause) in text else f"{text}: {escape(cause, 200)}"
            return UpdateRefused(fmt.format(detail), status)
    return UpdateRefused(f"{type(exc).__name__}: {text}", "failed")


def fetch_release(version: str, *, url: str, root: bytes, cache: Path, dest: Path, ca_file: Path | None,
                  timeout_s: float, max_bytes: int, at: dt.datetime,
                  abort: threading.Event | None = None) -> tuple[Path, str]:
    """Refresh the metadata, find the release for this platform, download and verify it into dest. Blocking: the
    agent runs it in a thread. Returns the artefact's path and its signed SHA-256."""
    target = release_target(version)
    meta = cache / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    fetcher = BoundedFetcher(deadline=time.monotonic() + timeout_s, total_s=timeout_s, ca_file=ca_file, tmp_dir=dest,
                             abort=abort)
    step = "metadata"
    try:
        updater = Updater(str(meta), url.rstrip("/") + "/metadata/", str(dest), url.rstrip("/") + "/targets/",
                          fetcher=fetcher, config=METADATA_LIMITS, bootstrap=root)
        if not hasattr(updater._trusted_set, "reference_time"):
            raise UpdateRefused("this python-tuf cannot be told the time to judge expiry at", "failed")
        updater._trusted_set.reference_time = at     # python-tuf#2359: no public way to say the time yet
        updater.refresh()
        info = updater.get_targetinfo(target)
        if info is None:
            raise UpdateRefused(f"the repository has no release {version} for this platform ({target})")
        if info.length > max_bytes:
            raise UpdateRefused(f"release {version} is {info.length} bytes, more than the {max_bytes} allowed",
                                step="artefact")
        step = "artefact"
        path = Path(updater.download_target(info, str(dest / Path(target).name)))
    except UpdateRefused:
        raise
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError, ValueError) as exc:
        refused = explain(exc)
        refused.step = step
        raise refused from exc
    return path, info.hashes.get("sha256", "")
