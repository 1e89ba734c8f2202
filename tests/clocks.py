"""Real clock disciplines for the tests: a chronyd of the test's own (its command socket in a private directory;
-x: it never touches the system clock), unsynchronised (no source) or synchronised to its local reference; a pair of
ptp4l (grandmaster and free-running slave, software time stamps) on a veth pair in a network namespace of their own.
Neither changes the machine's clock: other engineers' tests run on it."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path


def chrony_missing() -> str | None:
    if shutil.which("chronyd") is None or shutil.which("chronyc") is None:
        return "chrony is not installed (Debian package chrony)"
    if os.geteuid() != 0:
        return "chronyd needs root here"
    return None


@contextlib.contextmanager
def chronyd(workdir: Path, synchronised: bool):
    """Yield the socket path of a running chronyd; synchronised: `local stratum 8` (its own clock as reference)."""
    d = Path(workdir) / f"chrony-{uuid.uuid4().hex[:6]}"
    d.mkdir(mode=0o700, parents=True)
    sock = d / "chronyd.sock"
    conf = d / "chrony.conf"
    conf.write_text(f"pidfile {d}/chronyd.pid\nbindcmdaddress {sock}\ncmdport 0\nport 0\n"
                    + ("local stratum 8\n" if synchronised else ""))
    proc = subprocess.Popen(["chronyd", "-x", "-u", "root", "-n", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(d / "chronyd.log", "wb"))
    try:
        want = b"Normal" if synchronised else b"Not synchronised"
        deadline = time.monotonic() + 15
        while True:
            out = subprocess.run(["chronyc", "-n", "-h", str(sock), "tracking"], capture_output=True).stdout
            if want in out:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"chronyd did not come up: {(d / 'chronyd.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(10)


def ptp_missing() -> str | None:
    if shutil.which("ptp4l") is None or shutil.which("pmc") is None:
        return "linuxptp is not installed (Debian package linuxptp)"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "a network namespace for ptp4l needs root and iproute2"
    return None


@contextlib.contextmanager
def ptp_pair(workdir: Path):
    """Yield the UNIX socket of a ptp4l slave that follows a grandmaster across a veth pair (in a namespace)."""
    ns = f"gridedge-ptp-{uuid.uuid4().hex[:6]}"
    d = Path(workdir) / ns
    d.mkdir(parents=True)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    procs = []
    try:
        run("ip", "-n", ns, "link", "add", "ptpa", "type", "veth", "peer", "name", "ptpb")
        for dev in ("ptpa", "ptpb", "lo"):
            run("ip", "-n", ns, "link", "set", dev, "up")
        for role, dev, extra in (("gm", "ptpa", "priority1 10\n"), ("slave", "ptpb", "slaveOnly 1\nfree_running 1\n")):
            (d / f"{role}.cfg").write_text(f"[global]\nuds_address {d}/{role}.sock\ntime_stamping software\n"
                                           f"network_transport L2\n{extra}")
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "ptp4l", "-f", str(d / f"{role}.cfg"), "-i",
                                           dev, "-m"], stdout=open(d / f"{role}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        yield str(d / "slave.sock")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
