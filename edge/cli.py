"""The `gridedge` command: run the agent, check a configuration, run the demo, or evaluate baselines."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__


def _run(args) -> int:
    from .agent import Agent
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(config).run(stop)

    asyncio.run(main())
    return 0


def _check(args) -> int:
    from .config import check_main

    return check_main(args.config)


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(limit_pct=args.limit_pct, duration_s=args.duration_s, keep=args.keep)


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
    p = sub.add_parser("demo", help="broker + inverter simulator + agent + DSO simulator on loopback: one curtailment")
    p.add_argument("--limit-pct", type=float, default=40.0)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory (certificates, logs)")
    p.set_defaults(func=_demo)
    sub.add_parser("baselines", add_help=False,  # its own parser: gridedge baselines --help
                   help="placebo-day accuracy of the baselines (MdAPE, bias, RRMSE)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baselines"]:
        return _baselines(argv[1:])
    args = ap.parse_args(argv)
    return args.func(args)
