"""Performance harness: gridedge measured side by side with the ThingsBoard IoT Gateway on the same bench.

    .venv/bin/python -m bench.perf.harness --scenario 100x50 --agent all --runs 3

Path under test: device farm (own process, N pymodbus TCP servers x M counter registers) -> agent (own process)
-> mosquitto (mutual TLS for gridedge; plaintext loopback for ThingsBoard) -> counting subscriber (own process).
See bench/perf/README.md for the method and docs/perf-harness.md for results.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import select
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # runnable as bench/perf/harness.py too
    sys.path.insert(0, str(REPO))

from bench.perf import tb  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ----------------------------------------------------------------------------- scenarios

@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    registers: int
    poll_ms: int
    note: str = ""

    @property
    def scheduled_dps(self) -> float:
        return self.devices * self.registers * 1000 / self.poll_ms


SCENARIOS = {
    "idle": Scenario("idle", 0, 1, 1000, "agent connected to the broker, no devices"),
    "10x10": Scenario("10x10", 10, 10, 1000),
    "100x50": Scenario("100x50", 100, 50, 1000),
    "100x50-100ms": Scenario("100x50-100ms", 100, 50, 100),
}
#: Datapoints/s offered by the sweep's steps: 100 devices x 50 registers down to a 100 ms poll (50,000/s), then
#: 100 x 125 registers (one full read per device) at shorter periods, up to 250,000/s at 50 ms.
SWEEP_RATES = (5000, 10000, 15000, 20000, 25000, 33333, 50000, 75000, 100000, 150000, 200000, 250000)
AGENTS = ("gridedge", "gridedge-pure", "tb-memory", "tb-sqlite")


def sweep_scenario(rate: float) -> Scenario:
    """100 devices x 50 registers while the poll period is >= 100 ms; above 50,000/s the reads widen to 125
    registers (the Modbus maximum, one request per device) instead of polling a meter faster than 100 ms."""
    registers = 50 if rate <= 50_000 else 125
    poll_ms = max(1, round(100 * registers * 1000 / rate))
    return Scenario(f"sweep-{round(100 * registers * 1000 / poll_ms)}", 100, registers, poll_ms)


# ----------------------------------------------------------------------------- /proc

def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rfind(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(d))
    return out


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(kids.get(p, []))
    return tree


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rfind(")") + 2:].split()


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime + stime of the process and its live descendants, plus cutime + cstime (descendants already reaped)."""
    total = 0
    for p in (process_tree(pid) if tree else [pid]):
        f = _stat_fields(p)
        if f is None:
            continue
        # fields after the comm: [0]=state ... utime=[11] stime=[12] cutime=[13] cstime=[14]
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kb(pid: int, key: str) -> int:
    return sum(status_kb(p, key) for p in process_tree(pid))


# ----------------------------------------------------------------------------- child processes

class Child:
    """A child process with a line protocol on stdin/stdout (farm, subscriber) or none (agents)."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env=None, cwd=None, lines: bool = True) -> None:
        self.name, self.argv, self.log_path = name, argv, log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if lines else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if lines else self._log, stderr=self._log,
                                     env=env, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self._buf = b""

    def readline(self, timeout: float) -> str:
        """One stdout line within timeout (a bounded wait: the child answers on a pipe, not an event we own)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s (log: {self.log_path})")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited (status {self.proc.poll()}); log: {self.log_path}:\n"
                                       f"{tail(self.log_path)}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def command(self, text: str, timeout: float = 60) -> str:
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        while True:
            line = self.readline(timeout)
            if line.startswith(("OK", "ERR", "{")):
                if line.startswith("ERR"):
                    raise RuntimeError(f"{self.name}: {text}: {line}")
                return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process by PID, SIGKILL it after timeout, then kill any descendant it left behind."""
        if self.proc.poll() is None:
            tree = process_tree(self.pid)
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
            for p in tree[1:]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        return self.proc.returncode


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"(no log: {exc})"


# ----------------------------------------------------------------------------- gridedge config

def write_register_map(path: Path, registers: int) -> Path:
    lines = ['manufacturer = "gridedge bench"', 'model = "counter farm"',
             'source = "generated by bench/perf/harness.py: one uint16 read counter per register"',
             "max_registers_per_request = 125", "max_gap = 0", 'table = "holding"', ""]
    for r in range(registers):
        lines += ["[[points]]", f'name = "R{r}"', f"address = {r}", 'type = "uint16"', ""]
    path.write_text("\n".join(lines))
    return path


def write_gridedge_config(workdir: Path, *, gateway_id: str, broker_url: str, ca: Path, cert: Path, key: Path,
                          ports: list[int], registers: int, poll_ms: int, driver: str, map_key: str | None,
                          telemetry_ms: int) -> Path:
    cfg = [
        "# written by bench/perf/harness.py for one run",
        "[gateway]", f'id = "{gateway_id}"', 'description = "perf harness"', "",
        "[uplink]", f'broker = "{broker_url}"', f'ca_file = "{ca}"', f'cert_file = "{cert}"', f'key_file = "{key}"',
        f"telemetry_interval_ms = {telemetry_ms}", "",
        "[storage]", f'dir = "{workdir / "var"}"', "",
    ]
    map_path = write_register_map(workdir / "farm-map.toml", registers) if ports else None
    for i, port in enumerate(ports):
        cfg += ["[[devices]]", f'id = "d{i:03d}"', f'driver = "{driver}"', 'role = "meter"', 'host = "127.0.0.1"',
                f"port = {port}", "unit_id = 1", f"poll_ms = {poll_ms}", "timeout_ms = 1000"]
        if map_key is not None:
            cfg.append(f'{map_key} = "{map_path}"')
        cfg.append("")
    path = workdir / "gateway.toml"
    path.write_text("\n".join(cfg))
    return path


# ----------------------------------------------------------------------------- the bench

class Bench:
    """Broker and PKI shared by every run of one invocation; one farm, subscriber and agent per run."""

    def __init__(self, args: argparse.Namespace, workroot: Path) -> None:
        from gridedge.hil.pki import make_pki

        self.args = args
        self.workroot = workroot
        self.pki = make_pki(workroot / "pki")
        self.sub_cert, self.sub_key = self.pki.client("bench-subscriber")
        self.broker = _BenchMosquitto(workroot / "broker", self.pki, plaintext_port=0)
        self.broker.start()
        self.run_counter = 0

    def close(self) -> None:
        self.broker.stop()

    # -- one run -------------------------------------------------------------------------------
    def run(self, agent: str, sc: Scenario, run_idx: int, *, window: float, warmup: float, drain: float) -> dict:
        self.run_counter += 1
        wd = self.workroot / f"{sc.name}-{agent}-{run_idx}"
        wd.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        children: list[Child] = []
        res: dict = {"agent": agent, "scenario": sc.name, "run": run_idx, "devices": sc.devices,
                     "registers": sc.registers, "poll_ms": sc.poll_ms, "scheduled_dps": sc.scheduled_dps,
                     "window_s": window, "workdir": str(wd)}
        try:
            farm = Child("farm", [py, "-m", "bench.perf.devicefarm", "--devices", str(sc.devices),
                                  "--registers", str(sc.registers)], wd / "farm.log", cwd=REPO)
            children.append(farm)
            ready = farm.readline(30)
            if not ready.startswith("READY "):
                raise RuntimeError(f"farm: {ready}")
            ports = json.loads(ready[6:])["ports"]
            sub = Child("subscriber", [py, "-m", "bench.perf.subscriber", "--broker", self.broker.url,
                                       "--ca", str(self.pki.ca_cert), "--cert", str(self.sub_cert),
                                       "--key", str(self.sub_key), "--client-id", f"bench-sub-{self.run_counter}",
                                       "--devices", str(sc.devices), "--registers", str(sc.registers)],
                        wd / "subscriber.log", cwd=REPO)
            children.append(sub)
            if sub.readline(30) != "READY":
                raise RuntimeError("subscriber not ready")

            kind = "tb" if agent.startswith("tb") else "gridedge"
            argv, env, cwd = self._agent_command(agent, wd, ports, sc)
            res["agent_command"] = shlex.join(argv)
            t_start = time.time_ns()
            ag = Child(agent, argv, wd / "agent.log", env=env, cwd=cwd, lines=False)
            children.append(ag)

            # -- start-up: first publish, first telemetry, every device read at least once
            deadline = time.monotonic() + self.args.startup_timeout
            st = {}
            while time.monotonic() < deadline:
                if not ag.alive():
                    raise RuntimeError(f"{agent} exited with {ag.proc.returncode}:\n{tail(ag.log_path)}")
                st = json.loads(sub.command("stats"))
                if st["first_msg_ns"][kind] and (sc.devices == 0 or st["first_dp_ns"][kind]):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"{agent}: nothing published within {self.args.startup_timeout} s; "
                                   f"log {ag.log_path}:\n{tail(ag.log_path)}")
            res["t_first_publish_s"] = (st["first_msg_ns"][kind] - t_start) / 1e9
            res["t_first_telemetry_s"] = (st["first_dp_ns"][kind] - t_start) / 1e9 if sc.devices else None
            res["rss_after_start_mb"] = tree_kb(ag.pid, "VmRSS") / 1024
            if sc.devices:
                snap = wd / "snap-wait.json"
                while time.monotonic() < deadline:
                    farm.command(f"snapshot {snap}")
                    if all(c[0] > 0 for c in json.loads(snap.read_text())["counts"]):
                        break
                    time.sleep(0.2)
                else:
                    raise RuntimeError(f"{agent}: not every device was read within {self.args.startup_timeout} s")
            time.sleep(warmup)

            # -- measurement window
            s0, s1 = wd / "snap0.json", wd / "snap1.json"
            others = {"farm": farm.pid, "subscriber": sub.pid, "broker": self.broker.pid}
            if self.args.profile and agent.startswith("gridedge"):
                spy = Path(sys.executable).with_name("py-spy")
                children.append(Child("py-spy", [str(spy) if spy.exists() else "py-spy", "record", "-p", str(ag.pid),
                                                 "-d", str(int(window)), "-r", "50", "-f", "raw",
                                                 "-o", str(wd / "profile.txt")], wd / "py-spy.log", lines=False))
            farm.command(f"snapshot {s0}")
            t0 = time.monotonic()
            cpu0 = cpu_seconds(ag.pid)
            ocpu0 = {k: cpu_seconds(p, tree=False) for k, p in others.items()}
            rss_max = 0
            rss_series = []
            while (left := window - (time.monotonic() - t0)) > 0:
                time.sleep(min(1.0, left))
                if not ag.alive():
                    raise RuntimeError(f"{agent} died during the window:\n{tail(ag.log_path)}")
                rss = tree_kb(ag.pid, "VmRSS")
                rss_max = max(rss_max, rss)
                rss_series.append(round(rss / 1024, 1))
            farm.command(f"snapshot {s1}")
            cpu1 = cpu_seconds(ag.pid)
            elapsed = time.monotonic() - t0
            ocpu1 = {k: cpu_seconds(p, tree=False) for k, p in others.items()}
            res["rss_end_mb"] = tree_kb(ag.pid, "VmRSS") / 1024
            res["peak_rss_mb"] = tree_kb(ag.pid, "VmHWM") / 1024
            res["rss_series_mb"] = rss_series
            res["cpu_s"] = cpu1 - cpu0
            res["cpu_pct"] = 100 * (cpu1 - cpu0) / elapsed
            for k in others:
                res[f"{k}_cpu_pct"] = 100 * (ocpu1[k] - ocpu0[k]) / elapsed
            res["window_s"] = elapsed

            # -- drain: wait (bounded) for what was offered in the window to arrive
            out = wd / "eval.json"
            ev = {}
            if sc.devices:
                dl = time.monotonic() + drain
                while True:
                    sub.command(f"eval {s0} {s1} {out}")
                    ev = json.loads(out.read_text())
                    if ev["missing"] == 0 or time.monotonic() > dl:
                        break
                    time.sleep(0.5)
                snap0, snap1 = json.loads(s0.read_text()), json.loads(s1.read_text())
                served = ev["offered"]
                res.update({k: ev[k] for k in ("offered", "delivered", "missing", "duplicates",
                                               "registers_with_loss", "latency_p50_s", "latency_p99_s",
                                               "latency_max_s", "latency_samples")})
                res["served_dps"] = served / elapsed
                res["delivered_dps"] = ev["delivered"] / elapsed
                res["completeness"] = ev["delivered"] / served if served else None
                res["schedule_adherence"] = res["served_dps"] / sc.scheduled_dps
                res["cpu_s_per_10k"] = 1e4 * res["cpu_s"] / ev["delivered"] if ev["delivered"] else None
                res["farm_requests_per_s"] = (snap1["requests"] - snap0["requests"]) / elapsed
                res["complete"] = bool(ev["missing"] == 0 and ev["duplicates"] == 0
                                       and res["schedule_adherence"] >= 0.90
                                       and (ev["latency_p99_s"] or 0) <= max(2.0, 2 * sc.poll_ms / 1000))
            st = json.loads(sub.command("stats"))
            res["subscriber"] = {k: st[k] for k in ("datapoints", "messages", "bytes", "invalid", "foreign",
                                                   "malformed", "rpc_answered")}
            res["ok"] = True
        except Exception as exc:  # one failed run is recorded, the invocation goes on
            res["ok"] = False
            res["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for c in reversed(children):
                if c.name == "py-spy":
                    try:
                        c.proc.wait(30)  # it writes its profile when its duration is over
                    except subprocess.TimeoutExpired:
                        pass
                if c.name == "farm" or c.name == "subscriber":
                    try:
                        c.proc.stdin.close()
                    except OSError:
                        pass
                c.stop(timeout=15 if c is not children[0] else 5)
        return res

    def _agent_command(self, agent: str, wd: Path, ports: list[int], sc: Scenario):
        if agent.startswith("gridedge"):
            gw_id = f"gw-bench-{self.run_counter}"
            cert, key = self.pki.client(gw_id)
            driver, map_key = self.args.gridedge_driver, "map"
            cfg = write_gridedge_config(wd, gateway_id=gw_id, broker_url=self.broker.url, ca=self.pki.ca_cert,
                                        cert=cert, key=key, ports=ports, registers=sc.registers,
                                        poll_ms=sc.poll_ms, driver=driver, map_key=map_key,
                                        telemetry_ms=self.args.gridedge_telemetry_ms)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop("GRIDEDGE_PURE_PYTHON", None)
            if agent == "gridedge-pure":
                env["GRIDEDGE_PURE_PYTHON"] = "1"
            argv = [sys.executable, "-m", "gridedge", "run", "-c", str(cfg)]
            return argv, env, REPO
        storage = agent.split("-", 1)[1]
        tb_dir = wd / "tb"
        cfg_dir = tb.write_config(tb_dir, mqtt_host=self.broker.host, mqtt_port=self.broker.plaintext_port,
                                  ports=ports, registers=sc.registers, poll_ms=sc.poll_ms, storage=storage,
                                  reads=self.args.tb_reads)
        return tb.command(), tb.environment(cfg_dir), tb_dir


def _bench_mosquitto_class():
    from gridedge.hil.broker import Mosquitto

    class BenchMosquitto(Mosquitto):
        """The rig's broker, with the per-client queue limit lifted: a slow subscriber must not lose messages."""

        def _write_config(self) -> None:
            super()._write_config()
            text = self.conf_path.read_text().splitlines()
            text[1:1] = ["max_queued_messages 0", "max_queued_bytes 0"]
            self.conf_path.write_text("\n".join(text) + "\n")

    return BenchMosquitto


def _BenchMosquitto(*a, **kw):
    return _bench_mosquitto_class()(*a, **kw)


# ----------------------------------------------------------------------------- report

def machine(args) -> dict:
    from bench.measure import cpu_model

    cpu = cpu_model()
    import gridedge
    import paho.mqtt
    import pymodbus
    from gridedge.hil.broker import find_mosquitto

    try:
        mq = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        mq = f"? ({exc})"
    tb_pymodbus = subprocess.run([str(tb.python()), "-c", "import pymodbus; print(pymodbus.__version__)"],
                                 capture_output=True, text=True).stdout.strip() if tb.python().exists() else None
    mem = None
    try:
        mem = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]) // 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(), "gridedge": gridedge.__version__,
            "thingsboard_gateway": tb.installed_version(), "mosquitto": mq, "pymodbus_gridedge_and_farm":
            pymodbus.__version__, "pymodbus_tb": tb_pymodbus, "paho_mqtt": paho.mqtt.__version__,
            "gridedge_kernels": _kernels()}


def _kernels() -> str:
    try:
        from gridedge.cext import describe
        return describe()
    except Exception as exc:  # noqa: BLE001
        return f"? ({exc})"


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


SUMMARY_KEYS = ("delivered_dps", "completeness", "duplicates", "cpu_pct", "cpu_s_per_10k", "peak_rss_mb",
                "rss_after_start_mb", "latency_p50_s", "latency_p99_s", "t_first_publish_s", "t_first_telemetry_s",
                "farm_cpu_pct", "subscriber_cpu_pct", "broker_cpu_pct", "schedule_adherence")


def summarize(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        out.setdefault(r["scenario"], {}).setdefault(r["agent"], []).append(r)
    summary: dict = {}
    for sc, by_agent in out.items():
        summary[sc] = {}
        for agent, runs in by_agent.items():
            ok = [r for r in runs if r.get("ok")]
            m = {k: median([r.get(k) for r in ok]) for k in SUMMARY_KEYS}
            m["runs_ok"] = len(ok)
            m["runs"] = len(runs)
            m["complete_runs"] = sum(1 for r in ok if r.get("complete")) if any("complete" in r for r in ok) else "-"
            m["errors"] = [r["error"] for r in runs if not r.get("ok")]
            summary[sc][agent] = m
        ge = summary[sc].get("gridedge")
        if ge:
            for agent, m in list(summary[sc].items()):
                if agent.startswith("tb"):
                    summary[sc][f"ratio gridedge/{agent}"] = {
                        k: (ge[k] / m[k] if ge.get(k) and m.get(k) else None)
                        for k in ("delivered_dps", "cpu_pct", "cpu_s_per_10k", "peak_rss_mb", "latency_p50_s",
                                  "latency_p99_s", "t_first_publish_s")}
    return summary


def _fmt(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def table(summary: dict) -> str:
    cols = [("agent", None), ("dp/s", "delivered_dps", 0), ("complete", "completeness", 4), ("CPU %", "cpu_pct", 2),
            ("CPU-s/10k", "cpu_s_per_10k", 3), ("peak RSS MB", "peak_rss_mb", 1), ("lat p50 s", "latency_p50_s", 3),
            ("lat p99 s", "latency_p99_s", 3), ("1st pub s", "t_first_publish_s", 2), ("sched", "schedule_adherence", 3),
            ("farm CPU %", "farm_cpu_pct", 1),
            ("runs ok/complete", None)]
    lines = []
    for sc, rows in summary.items():
        lines.append(f"\n### {sc}\n")
        lines.append("| " + " | ".join(c[0] for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for agent, m in rows.items():
            if agent.startswith("ratio"):
                cells = [agent] + [_fmt(m.get(c[1]), 2) if c[1] in m else "" for c in cols[1:-1]] + [""]
            else:
                cells = [agent] + [_fmt(m.get(c[1]), c[2]) for c in cols[1:-1]] + \
                        [f"{m['runs_ok']}/{m['runs']} ok, {m['complete_runs']} complete"]
            lines.append("| " + " | ".join(cells) + " |")
        for agent, m in rows.items():
            for e in m.get("errors", []) if isinstance(m, dict) else []:
                lines.append(f"\n{agent}: {e}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.perf.harness", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", required=True,
                    help=f"one of {', '.join(SCENARIOS)}, sweep; repeat or comma-separate for several")
    ap.add_argument("--agent", default="all", help=f"comma-separated from {', '.join(AGENTS)}, or all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=None, help="measurement window, s (default 30; sweep steps 60; --quick 15)")
    ap.add_argument("--warmup", type=float, default=None, help="after every device was read once, s (default 5)")
    ap.add_argument("--drain", type=float, default=10.0, help="longest wait after the window for late values, s")
    ap.add_argument("--quick", action="store_true", help="short windows for a smoke run")
    ap.add_argument("--sweep-rates", default=",".join(str(r) for r in SWEEP_RATES),
                    help="offered datapoints/s of the sweep steps (100 devices x 50 registers, poll period varies; "
                         "above 50,000/s 100 x 125 registers)")
    ap.add_argument("--tb-reads", choices=("block", "register"), default="block",
                    help="ThingsBoard: one wide-range request per device (block) or one request per register")
    ap.add_argument("--gridedge-driver", default="modbus_tcp", help="gridedge driver for the farm's register map")
    ap.add_argument("--gridedge-telemetry-ms", type=int, default=1000, help="gridedge uplink.telemetry_interval_ms")
    ap.add_argument("--startup-timeout", type=float, default=90.0)
    ap.add_argument("--profile", action="store_true",
                    help="attach py-spy to gridedge during the window; raw stacks in the run's profile.txt")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--keep-work", action="store_true", help="keep bench/perf/work/<timestamp> (logs, configs)")
    args = ap.parse_args(argv)
    args.scenarios = [s for item in args.scenario for s in item.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS and s != "sweep":
            ap.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}, sweep")
    args.agents = list(AGENTS) if args.agent == "all" else [a for a in args.agent.split(",") if a]
    for a in args.agents:
        if a not in AGENTS:
            ap.error(f"unknown agent {a!r}; known: {', '.join(AGENTS)}")
    args.sweep_window = args.window or (15.0 if args.quick else 60.0)  # saturation: delivered completely for 60 s
    if args.window is None:
        args.window = 15.0 if args.quick else 30.0
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    return args


def main(argv=None) -> int:
    args = parse(argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workroot = HERE / "work" / stamp
    workroot.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).as_posix(), "-m", "bench.perf.harness", *(argv or sys.argv[1:])])

    if any(a.startswith("tb") for a in args.agents):
        try:
            tb.ensure_venv()
        except Exception as exc:  # noqa: BLE001 - report and run gridedge alone
            print(f"ThingsBoard IoT Gateway cannot be installed: {exc}; running gridedge only", file=sys.stderr)
            args.agents = [a for a in args.agents if not a.startswith("tb")]
    info = machine(args)
    info["gridedge_driver"] = args.gridedge_driver
    print(f"# {command}")
    print("# " + json.dumps(info))
    bench = Bench(args, workroot)
    results: list[dict] = []
    try:
        for sc_name in args.scenarios:
            if sc_name == "sweep":
                results += sweep(bench, args)
                continue
            sc = SCENARIOS[sc_name]
            for i in range(args.runs):
                for agent in args.agents:  # alternate agents within each round
                    r = bench.run(agent, sc, i, window=args.window, warmup=args.warmup, drain=args.drain)
                    results.append(r)
                    print(_line(r), flush=True)
    finally:
        bench.close()
    summary = summarize(results)
    text = table(summary)
    print(text)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{stamp}.json"
    out.write_text(json.dumps({"command": command, "machine": info, "args": {k: v for k, v in vars(args).items()},
                               "summary": summary, "results": results, "table": text}, indent=1, default=str))
    print(f"\nresults: {out}")
    if not args.keep_work:
        import shutil
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


def sweep(bench: Bench, args) -> list[dict]:
    """Per agent, raise the offered rate until a step is not delivered completely; one run per step."""
    out = []
    rates = [float(r) for r in args.sweep_rates.split(",") if r]
    for agent in args.agents:
        best = None
        for rate in rates:
            sc = sweep_scenario(rate)
            r = bench.run(agent, sc, 0, window=args.sweep_window, warmup=args.warmup, drain=args.drain)
            out.append(r)
            print(_line(r), flush=True)
            if not (r.get("ok") and r.get("complete")):
                break
            best = sc.scheduled_dps
        out.append({"agent": agent, "scenario": "sweep-saturation", "run": 0, "ok": True,
                    "delivered_dps": best, "note": "highest offered rate delivered completely"})
    return out


def _line(r: dict) -> str:
    if not r.get("ok"):
        return f"{r['scenario']:>14} {r['agent']:>13} run {r['run']}: FAILED {r.get('error')}"
    keys = ("delivered_dps", "completeness", "duplicates", "cpu_pct", "cpu_s_per_10k", "peak_rss_mb",
            "latency_p50_s", "latency_p99_s", "t_first_publish_s", "farm_cpu_pct")
    return f"{r['scenario']:>14} {r['agent']:>13} run {r['run']}: " + " ".join(
        f"{k}={_fmt(r.get(k), 3)}" for k in keys)


if __name__ == "__main__":
    sys.exit(main())
