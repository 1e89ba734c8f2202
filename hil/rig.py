"""The bench: a TLS broker, a simulated inverter and a gateway agent as real processes, plus the DSO simulator.

The demo and the end-to-end tests both use it, so what the demo shows is what the tests check.
Every process it starts is stopped by stop(), whatever happened before.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from gridedge.mqtt import tls_context
from gridedge.security.signing import load_private_key, new_issuer_key

from .acl import fleet_acl, gateway_patterns
from .broker import Mosquitto
from .dso_sim import DsoSimulator, Issuer
from .faultproxy import FaultProxy
from .pki import make_pki

CONFIG_TEMPLATE = """\
# Written by the gridedge rig for this run.
[gateway]
id = "{gateway_id}"
description = "HIL rig gateway"

[uplink]
broker = "{broker_url}"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
keepalive_s = {keepalive_s}
telemetry_interval_ms = {telemetry_ms}
backfill_rate = {backfill_rate}
backfill_jitter_s = {backfill_jitter_s}
protocol = "{protocol}"

[storage]
dir = "{storage}"
quota_mb = {quota_mb}
durability = "{durability}"

{control}
[[devices]]
id = "inv1"
driver = "sunspec_tcp"
role = "inverter"
host = "127.0.0.1"
port = {sim_port}
unit_id = 1
poll_ms = {poll_ms}
timeout_ms = 1000
writable = {writable}
{flex}
{security}"""


#: The rig's [control] section: the EN 50549 profile, without the release ramp (a bench wants to see the
#: limit come back at once) and no local reactive power function unless a test asks for one.
CONTROL_DEFAULTS = {"cycle_ms": 200, "max_activation_s": 3600, "revert_s": 60}
SETTINGS_DEFAULTS = {"ramp_up_pct_per_s": 0.0}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


#: The rig's issuers: id -> actor class. Each has an Ed25519 key the gateway trusts and a broker identity
#: (certificate CN "issuer.<id>"); the DSO's head-end (CN "headend.dso") reads everything and sends as "dso".
ISSUERS = {"tso": "tso", "dso": "dso", "aggregator": "aggregator"}
HEADEND_CN = "headend.dso"


def security_toml(keys: dict[str, "Path"], roles: dict[str, list[str]] | None = None, **extra) -> str:
    """The [security] section trusting the rig's issuers (all operators unless roles says otherwise)."""
    lines = ["[security]"] + [f"{k} = {_toml_value(v)}" for k, v in extra.items()]
    for issuer, pub in keys.items():
        lines += ["", "[[security.issuers]]", f"id = {_toml_value(issuer)}", f"actor = {_toml_value(ISSUERS[issuer])}",
                  f"roles = {_toml_value((roles or {}).get(issuer, ['operator']))}",
                  f"public_keys = {_toml_value([str(pub)])}"]
    return "\n".join(lines) + "\n"


def control_toml(control: dict, settings: dict) -> str:
    """The [control] and [control.settings] tables of the rig's config."""
    lines = ["[control]"] + [f"{k} = {_toml_value(v)}" for k, v in control.items()]
    lines += ["", "[control.settings]"] + [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


class Rig:
    def __init__(self, workdir: Path, *, gateway_id: str = "gw-rig-001", w_max: float = 10000.0,
                 pv_w: float = 8000.0, ramp_pct_per_s: float = 20.0, poll_ms: int = 250,
                 telemetry_ms: int = 250, writable: bool = True, proxy: bool = False, keepalive_s: int = 10,
                 backfill_rate: float = 200.0, backfill_jitter_s: float = 0.5, quota_mb: float = 64.0,
                 durability: str = "full", dso_session_expiry_s: int = 0, control: dict | None = None,
                 settings: dict | None = None, feeder: tuple[float, float] | None = None, grid_v_pu: float = 1.0,
                 var_response_s: float = 0.0, flex: str = "", network=None, acl: bool = True,
                 security: dict | None = None, roles: dict[str, list[str]] | None = None,
                 agent_env: dict[str, str] | None = None, protocol: str = "5") -> None:
        """control/settings: keys of [control] and [control.settings] over the rig's defaults; feeder: (R, X)
        ohm per phase between the grid (grid_v_pu) and the inverter, so its voltage responds to its P and Q;
        flex: a [flex] section (TOML text) appended to the gateway's configuration; network: a started
        netns.WanPath: the agent and the inverter simulator run in its gateway namespace, the broker listens on
        its near end; acl: the broker confines every identity (hil/acl.py); security: more keys of [security]
        (allow_unsigned, max_lifetime_s...); roles: issuer id -> its roles (default: all operators); agent_env:
        more environment for the agent process (systemd's NOTIFY_SOCKET, WATCHDOG_USEC...); protocol: the gateway's
        MQTT version, uplink.protocol (the head-end speaks 5)."""
        if network is not None and proxy:
            raise ValueError("the proxy and a network path are two ways to the broker: choose one")
        self.network = network
        self.broker_host = network.broker_host if network is not None else "127.0.0.1"
        self.exec_prefix = list(network.exec_prefix) if network is not None else []
        self.workdir = Path(workdir)
        self.control = dict(CONTROL_DEFAULTS, **(control or {}))
        self.settings = dict(SETTINGS_DEFAULTS, **(settings or {}))
        self.feeder, self.grid_v_pu, self.var_response_s = feeder, grid_v_pu, var_response_s
        self.flex = flex
        self.use_proxy, self.proxy = proxy, None
        self.uplink = dict(keepalive_s=keepalive_s, backfill_rate=backfill_rate, backfill_jitter_s=backfill_jitter_s,
                           quota_mb=quota_mb, durability=durability, protocol=protocol)
        self.dso_session_expiry_s = dso_session_expiry_s
        self.gateway_id = gateway_id
        self.prefix = f"gridedge/v3/{gateway_id}/"
        self.use_acl, self.security, self.roles = acl, dict(security or {}), roles
        self.agent_env = dict(agent_env or {})
        self.w_max, self.pv_w, self.ramp_pct_per_s = w_max, pv_w, ramp_pct_per_s
        self.poll_ms, self.telemetry_ms, self.writable = poll_ms, telemetry_ms, writable
        self.broker: Mosquitto | None = None
        self.sim: asyncio.subprocess.Process | None = None
        self.agent: asyncio.subprocess.Process | None = None
        self.dso: DsoSimulator | None = None
        self.config_path = self.workdir / "gateway.toml"
        self.agent_log = self.workdir / "agent.log"
        self.sim_log = self.workdir / "inverter-sim.log"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        names = ("localhost", self.broker_host)
        self.pki = await asyncio.to_thread(make_pki, self.workdir / "pki", server_names=names)
        self.gw_cert, self.gw_key = self.pki.client(self.gateway_id)
        self.dso_cert, self.dso_key = self.pki.client(HEADEND_CN)
        self.issuer_keys = {}
        for issuer in ISSUERS:
            priv, pub = new_issuer_key(self.workdir / "issuers", issuer)
            self.issuer_keys[issuer] = (priv, pub)
        acl = fleet_acl({f"issuer.{i}": i for i in ISSUERS if i != "dso"}, {HEADEND_CN: "dso"}) \
            if self.use_acl else None
        self.broker = Mosquitto(self.workdir / "broker", self.pki, host=self.broker_host, acl=acl,
                                acl_patterns=gateway_patterns() if self.use_acl else ())
        await asyncio.to_thread(self.broker.start)
        if self.use_proxy:
            self.proxy = FaultProxy("127.0.0.1", self.broker.port)
            await self.proxy.start()
        self.sim_port = await self._start_sim()
        self.write_config()
        await self.start_agent()
        self.dso = DsoSimulator(self.broker.url, tls_context(self.pki.ca_cert, self.dso_cert, self.dso_key), self.prefix,
                                session_expiry_s=self.dso_session_expiry_s, issuers=self.issuers(),
                                client_id=HEADEND_CN)
        await self.dso.start()
        await self.dso.wait_online(30)

    def issuers(self) -> dict[str, Issuer]:
        """How the DSO simulator sends as each issuer: its signing key and its broker identity."""
        out = {}
        for issuer, (priv, _pub) in self.issuer_keys.items():
            cert, key = (self.dso_cert, self.dso_key) if issuer == "dso" else self.pki.client(f"issuer.{issuer}")
            out[issuer] = Issuer(issuer, load_private_key(priv), tls_context(self.pki.ca_cert, cert, key),
                                 client_id=HEADEND_CN if issuer == "dso" else f"issuer.{issuer}")
        return out

    def write_config(self, **overrides) -> Path:
        broker_url = f"mqtts://127.0.0.1:{self.proxy.port}" if self.proxy else self.broker.url
        values = dict(self.uplink, gateway_id=self.gateway_id, broker_url=broker_url, ca=self.pki.ca_cert,
                      cert=self.gw_cert, key=self.gw_key, telemetry_ms=self.telemetry_ms,
                      storage=self.workdir / "var", sim_port=self.sim_port, poll_ms=self.poll_ms,
                      writable=str(self.writable).lower(), control=control_toml(self.control, self.settings),
                      flex=("\n" + self.flex) if self.flex else "",
                      security=security_toml({i: pub for i, (_p, pub) in self.issuer_keys.items()}, self.roles,
                                             **self.security))
        values.update(overrides)
        self.config_path.write_text(CONFIG_TEMPLATE.format(**values))
        return self.config_path

    async def _start_sim(self) -> int:
        grid = ["--feeder", f"{self.feeder[0]},{self.feeder[1]}"] if self.feeder else []
        self.sim = await asyncio.create_subprocess_exec(
            *self.exec_prefix, sys.executable, "-m", "gridedge.hil.inverter_sim", "--host", "127.0.0.1", "--port", "0",
            "--w-max", str(self.w_max), "--pv-w", str(self.pv_w), "--ramp-pct-per-s", str(self.ramp_pct_per_s),
            "--grid-v-pu", str(self.grid_v_pu), "--var-response-s", str(self.var_response_s), "--grid-control", *grid,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=open(self.sim_log, "ab"),
        )
        try:
            line = await asyncio.wait_for(self.sim.stdout.readline(), 20)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            raise RuntimeError(f"inverter simulator did not start: {self.sim_log.read_text()[-2000:]}")
        return int(line.split()[1])

    async def set_grid(self, *, v_pu: float | None = None, hz: float | None = None) -> None:
        """Change the grid the simulated inverter sees: the feeder's source voltage (pu) and/or the frequency."""
        words = [f"{k}={v}" for k, v in (("v_pu", v_pu), ("hz", hz)) if v is not None]
        self.sim.stdin.write(("grid " + " ".join(words) + "\n").encode())
        await self.sim.stdin.drain()

    async def start_agent(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.agent_env)
        self.agent = await asyncio.create_subprocess_exec(
            *self.exec_prefix, sys.executable, "-m", "gridedge", "run", "-c", str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=open(self.agent_log, "ab"), env=env,
        )

    async def stop_agent(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        proc, self.agent = self.agent, None
        return await _stop(proc, sig, timeout_s)

    async def stop(self) -> None:
        if self.dso:
            await self.dso.stop()
        await self.stop_agent()
        sim, self.sim = self.sim, None
        if sim is not None and sim.stdin is not None:
            sim.stdin.close()
        await _stop(sim, signal.SIGTERM, 5)
        if self.proxy:
            await self.proxy.stop()
        if self.broker:
            await asyncio.to_thread(self.broker.stop)

    async def __aenter__(self) -> "Rig":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def _stop(proc: asyncio.subprocess.Process | None, sig: int, timeout_s: float) -> int | None:
    if proc is None or proc.returncode is not None:
        return None if proc is None else proc.returncode
    try:
        proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        return await proc.wait()
    except ProcessLookupError:
        return await proc.wait()
