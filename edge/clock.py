"""The gateway's own clock: how it is disciplined and whether it jumped, so every sample the gateway stamps says how
good its time is (IEC 61850-7-2 TimeQuality, source "gateway").

Discipline is read from the tools that run it, every `interval_s`: chrony (`chronyc -n tracking`: synchronised,
stratum, offset, root delay and dispersion, leap status), linuxptp (`pmc -u -b 0 "GET TIME_STATUS_NP"`: grandmaster
present, offset from it), or systemd-timesyncd (`timedatectl show`: NTPSynchronized only). `source = "auto"` takes
the first that answers, in the order PTP, chrony, timedatectl; none answering means "not synchronised": a gateway
that cannot tell must not vouch for its time. The worst-case error (chrony: |offset| + root dispersion + root
delay / 2) gives the accuracy; above `max_error_ms` the clock counts as not synchronised.

A step of the wall clock (a manual set, an NTP step, a VM resumed) is found by comparing it with the monotonic clock
at every check and every telemetry batch: the samples stamped in the next `step_hold_s` carry step = true, and the
flex energy series drops samples that go back in time (edge/flex/metering.py), so a step never makes a negative
interval. The parsers take hostile text (a tool's output can be anything) and never raise but ValueError.
"""
from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from dataclasses import dataclass

from .core.model import TimeQuality, accuracy_bits
from .core.text import escape
from .sdnotify import child_env

log = logging.getLogger("gridedge.clock")

SOURCES = ("auto", "ptp", "chrony", "timedatectl", "none")
_LEAP = {"normal": "", "insert second": "insert_pending", "delete second": "delete_pending"}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class ClockStatus:
    """What one tool said of the clock."""

    source: str                     # ptp, chrony, timedatectl, none
    synchronised: bool
    error_s: float | None = None    # worst-case error bound, s (None: the tool does not say)
    offset_s: float | None = None
    stratum: int | None = None
    leap: str = ""
    reference: str = ""

    def to_json(self) -> dict:
        return {"source": self.source, "synchronised": self.synchronised, "error_s": self.error_s,
                "offset_s": self.offset_s, "stratum": self.stratum, "reference": self.reference}


UNKNOWN = ClockStatus("none", False, reference="no clock discipline found")


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _seconds(value: str | None, what: str) -> float:
    m = re.match(rf"({_NUM}) seconds?(?: (fast|slow))?", value or "")
    if not m:
        raise ValueError(f"chronyc tracking: {what} is not a number of seconds: {escape(value, 60)}")
    v = float(m.group(1))
    return -v if m.group(2) == "slow" else v


def parse_chronyc_tracking(text: str) -> ClockStatus:
    """`chronyc -n tracking`. Synchronised: a leap status other than "Not synchronised" and a stratum of 1-15."""
    f = _fields(text)
    if "leap status" not in f or "stratum" not in f or "reference id" not in f:
        raise ValueError("chronyc tracking: no Reference ID, Stratum or Leap status line")
    leap = f["leap status"].lower()
    if not re.fullmatch(r"\d{1,3}", f["stratum"]):
        raise ValueError(f"chronyc tracking: stratum {escape(f['stratum'], 20)!r} is not a number")
    stratum = int(f["stratum"])
    ref = escape(f["reference id"], 80)
    if leap == "not synchronised" or not 1 <= stratum <= 15:
        return ClockStatus("chrony", False, stratum=stratum, reference=ref)
    if leap not in _LEAP:
        raise ValueError(f"chronyc tracking: unknown leap status {escape(leap, 40)!r}")
    offset = _seconds(f.get("system time"), "System time")
    delay, disp = _seconds(f.get("root delay"), "Root delay"), _seconds(f.get("root dispersion"), "Root dispersion")
    return ClockStatus("chrony", True, abs(offset) + abs(disp) + abs(delay) / 2, offset, stratum, _LEAP[leap], ref)


def parse_timedatectl(text: str) -> ClockStatus:
    """`timedatectl show`: NTPSynchronized=yes|no (systemd-timesyncd or another NTP client said so)."""
    kv = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    sync = kv.get("NTPSynchronized")
    if sync not in ("yes", "no"):
        raise ValueError("timedatectl show: no NTPSynchronized=yes|no line")
    return ClockStatus("timedatectl", sync == "yes", reference="NTP" if kv.get("NTP") == "yes" else "")


def parse_pmc(text: str) -> ClockStatus:
    """`pmc -u -b 0 "GET TIME_STATUS_NP"`: synchronised while a grandmaster is present; master_offset in ns."""
    m = re.search(r"^\s*master_offset\s+(-?\d{1,19})\s*$", text, re.M)
    g = re.search(r"^\s*gmPresent\s+(true|false)\s*$", text, re.M)
    if "TIME_STATUS_NP" not in text or not m or not g:
        raise ValueError("pmc: no TIME_STATUS_NP response with master_offset and gmPresent")
    gm = re.search(r"^\s*gmIdentity\s+(\S{1,40})\s*$", text, re.M)
    offset = int(m.group(1)) / 1e9
    present = g.group(1) == "true"
    return ClockStatus("ptp", present, abs(offset) if present else None, offset,
                       reference=f"PTP {escape(gm.group(1), 40)}" if gm and present else "PTP")


@dataclass(frozen=True)
class ClockSettings:
    source: str = "auto"
    interval_s: float = 16.0
    max_error_ms: float = 500.0
    step_ms: float = 100.0
    step_hold_s: float = 60.0
    chrony_socket: str = ""       # chronyc -h <this> (a path or host); default: chronyc's own
    ptp_socket: str = ""          # pmc -s <this>; default: pmc's own (/var/run/ptp4l)


class Clock:
    """The latest status and the step watch; quality() is what the agent stamps on gateway-stamped blocks."""

    def __init__(self, settings: ClockSettings | None = None, *, wall=time.time_ns, mono=time.monotonic_ns):
        """wall/mono: the clocks compared (a test steps a wall clock of its own: the machine's is not a test's to
        step)."""
        self.settings = settings or ClockSettings()
        self.status = UNKNOWN
        self.steps = 0
        self._wall, self._mono = wall, mono
        self._base = wall() - mono()
        self._step_until = 0          # monotonic ns
        self._quality = self._make()

    def _make(self) -> TimeQuality:
        st, s = self.status, self.settings
        err_ok = st.error_s is None or st.error_s * 1000 <= s.max_error_ms
        return TimeQuality("gateway", st.synchronised and err_ok, False,
                           accuracy_bits(st.error_s) if st.synchronised else None, st.synchronised, False, st.leap)

    def check_step(self) -> bool:
        """Wall clock against monotonic: True when it moved by more than step_ms since the last check."""
        base = self._wall() - self._mono()
        jump = base - self._base
        self._base = base
        if abs(jump) > self.settings.step_ms * 1e6:
            self.steps += 1
            self._step_until = self._mono() + int(self.settings.step_hold_s * 1e9)
            log.warning("the system clock was stepped by %+.3f s (wall clock against monotonic): samples stamped in "
                        "the next %.0f s say so", jump / 1e9, self.settings.step_hold_s)
            return True
        return False

    def quality(self) -> TimeQuality:
        self.check_step()
        q = self._quality
        return q._replace(step=True) if self._mono() < self._step_until else q

    def update(self, status: ClockStatus) -> None:
        if status.synchronised != self.status.synchronised or status.source != self.status.source:
            (log.info if status.synchronised else log.warning)(
                "gateway clock (%s): %s%s", status.source, "synchronised" if status.synchronised else "NOT synchronised",
                f", error <= {status.error_s * 1000:.3f} ms" if status.error_s is not None else "")
        self.status = status
        self._quality = self._make()

    # -- reading the tools
    def _commands(self) -> list[tuple[str, list[str]]]:
        s = self.settings
        cmds = {"ptp": ["pmc", "-u", "-b", "0"] + (["-s", s.ptp_socket] if s.ptp_socket else []) + ["GET TIME_STATUS_NP"],
                "chrony": ["chronyc", "-n"] + (["-h", s.chrony_socket] if s.chrony_socket else []) + ["tracking"],
                "timedatectl": ["timedatectl", "show"]}
        order = ("ptp", "chrony", "timedatectl") if s.source == "auto" else (s.source,) if s.source != "none" else ()
        return [(k, cmds[k]) for k in order if shutil.which(cmds[k][0])]

    async def read(self) -> ClockStatus:
        """Ask the tools (the first that answers, in order); UNKNOWN if none does."""
        parse = {"ptp": parse_pmc, "chrony": parse_chronyc_tracking, "timedatectl": parse_timedatectl}
        for name, cmd in self._commands():
            try:
                proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.DEVNULL,
                                                            stdin=asyncio.subprocess.DEVNULL, env=child_env())
                try:
                    out, _ = await asyncio.wait_for(proc.communicate(), 3.0)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
                    continue
                if proc.returncode != 0:
                    continue
                return parse[name](out[:65536].decode("utf-8", "replace"))
            except (OSError, ValueError) as exc:
                log.debug("clock source %s: %s", name, escape(exc))
        return UNKNOWN

    async def run(self) -> None:
        while True:
            self.update(await self.read())
            deadline = time.monotonic() + self.settings.interval_s
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(1.0, left))
                self.check_step()
