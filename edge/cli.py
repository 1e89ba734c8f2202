"""The `gridedge` command: run the agent, check a configuration, make a lab, run the demo, evaluate baselines, or
launch the HIL rig."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys

from . import __version__

log = logging.getLogger("gridedge.cli")


def _run(args) -> int:
    """A config fault: the lines `check` prints, exit 2. A fault of the machine that only running meets (the
    storage vanished, its database cannot be opened): one log line, exit 1 (systemd restarts it)."""
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .fleet.configure import at_start

    try:
        config = at_start(config)   # a new configuration that keeps dying at start is rolled back here
    except (OSError, ConfigError) as exc:
        log.error("the pending configuration change could not be rolled back: %s", _fault(exc))
    return run_agent(config)


def run_agent(config) -> int:
    from .agent import Agent

    phase = "cannot start"
    agent = None

    async def main() -> None:
        nonlocal phase, agent
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent = Agent(config)
        phase = "stopped"
        await agent.run(stop)

    try:
        asyncio.run(main())
    except (OSError, sqlite3.Error) as exc:
        log.debug("%s", phase, exc_info=True)
        log.error("%s: %s (storage.dir %s)", phase, _fault(exc), config.storage.dir)
        return 1
    if agent is not None and agent.fleet.exec_argv:  # a fleet change needs a new process: this one, in place
        from .fleet import exec_in_place

        exec_in_place(agent.fleet.exec_argv)
        return 1
    return 0


def _fault(exc: BaseException) -> str:
    """The reason in one escaped line: file names and messages come from outside."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    if getattr(exc, "filename", None):
        text += f": {exc.filename}"
    return text.encode("unicode_escape").decode("ascii")


def _check(args) -> int:
    from .config import check_main

    return check_main(args.config)


def _release_init(args) -> int:
    from pathlib import Path

    from .fleet.release import ReleaseError, init_root

    try:
        init_root(Path(args.root), __version__, Path(sys.prefix))
    except (ReleaseError, OSError) as exc:
        print(f"gridedge release init: {_fault(exc)}", file=sys.stderr)
        return 1
    print(f"{args.root}: current -> releases/{__version__}; the unit starts it through {args.root}/boot.py "
          f"(docs/fleet.md)")
    return 0


def _status(args) -> int:
    from .fleet.status import main as status_main

    return status_main(args)


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(limit_pct=args.limit_pct, duration_s=args.duration_s, keep=args.keep, scenario=args.scenario)


def _lab(args) -> int:
    from .lab import main as lab_main

    return lab_main(args)


def _hil(argv: list[str]) -> int:
    """`gridedge hil ...` runs the rig's own entry point, `python -m gridedge.hil`, as a new process: the agent
    package never imports the rig (docs/architecture.md), and the rig's plotting never loads into the agent."""
    import os

    os.execv(sys.executable, [sys.executable, "-m", "gridedge.hil", *argv])
    return 1  # not reached


def _baselines(argv: list[str]) -> int:
    from .flex.report import main as baselines_main

    return baselines_main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridedge", description="Grid-edge gateway agent.")
    ap.add_argument("--version", action="version", version=f"gridedge {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the agent")
    p.add_argument("-c", "--config", required=True, help="gateway TOML file")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run)
    p = sub.add_parser("check", help="validate a configuration file and exit non-zero on any error")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_check)
    p = sub.add_parser("status", help="what the running agent reports: devices, uplink, outbox, control, certificates "
                                      "(its metrics endpoint); exit 2 when something needs a look, 1 when no agent answers")
    p.add_argument("-c", "--config", default="/etc/gridedge/gateway.toml", help="to find the endpoint ([fleet.metrics])")
    p.add_argument("--url", help="the metrics endpoint itself, e.g. http://127.0.0.1:9480/metrics")
    p.set_defaults(func=_status)
    p = sub.add_parser("demo", help="broker + inverter simulator + agent + DSO simulator on loopback: one curtailment "
                                    "(or `demo fleet`: a signed update that succeeds and one that is refused)")
    p.add_argument("scenario", nargs="?", choices=["curtailment", "fleet"], default="curtailment")
    p.add_argument("--limit-pct", type=float, default=40.0)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory (certificates, logs)")
    p.set_defaults(func=_demo)
    p = sub.add_parser("release", help="gridedge's own A/B releases (docs/fleet.md)")
    rel = p.add_subparsers(dest="release_cmd", required=True)
    p = rel.add_parser("init", help="make ROOT an A/B root whose current release is this installation")
    p.add_argument("root", help="the A/B root, e.g. /opt/gridedge ([fleet.update] releases_dir)")
    p.set_defaults(func=_release_init)
    p = sub.add_parser("lab", help="make a lab: throwaway CA and certificates, mosquitto.conf, a gateway.toml")
    lab = p.add_subparsers(dest="lab_cmd", required=True)
    p = lab.add_parser("init", help="write DIR/pki/*, DIR/mosquitto.conf, DIR/acl and DIR/gateway.toml")
    p.add_argument("dir", help="directory of the lab (created)")
    p.add_argument("--device", default="192.0.2.10", metavar="HOST[:PORT]",
                   help="the SunSpec Modbus TCP device to read (default: a placeholder to edit; port 502)")
    p.add_argument("--unit-id", type=int, default=1, choices=range(256), metavar="0..255", help="its Modbus unit id")
    p.add_argument("--role", default="inverter", choices=["inverter", "battery", "meter", "load"])
    p.add_argument("--gateway-id", default="gw-lab-001")
    p.add_argument("--port", type=int, default=8883, choices=range(1, 65536), metavar="1..65535",
                   help="the broker's TLS port")
    p.add_argument("--broker-host", action="append", default=[], metavar="NAME",
                   help="a name or address the broker is reached by from other machines (repeatable; the broker then "
                        "listens on every interface); default: this machine only")
    p.add_argument("--days", type=int, default=365, help="validity of the certificates, days")
    p.add_argument("--force", action="store_true",
                   help="replace an existing lab: its CA, certificates, mosquitto.conf, acl and gateway.toml")
    p.set_defaults(func=_lab)
    from .security.cli import add_parsers

    add_parsers(sub)  # keygen, sign, audit verify, unit devices
    sub.add_parser("baselines", add_help=False,  # its own parser: gridedge baselines --help
                   help="placebo-day accuracy of the baselines (MdAPE, bias, RRMSE)")
    sub.add_parser("hil", add_help=False,  # the rig's own parser: gridedge hil --help
                   help="hardware-in-the-loop rig: run a scenario against a gateway and report (docs/hil.md)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baselines"]:
        return _baselines(argv[1:])
    if argv[:1] == ["hil"]:
        return _hil(argv[1:])
    args = ap.parse_args(argv)
    return args.func(args)
