"""The bench: a TLS broker, a simulated inverter and a gateway agent as real processes, plus the DSO simulator.

The demo and the end-to-end tests both use it, so what the demo shows is what the tests check.
Every process it starts is stopped by stop(), whatever happened before.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
from pathlib import Path

from gridedge.mqtt import tls_context
from gridedge.security.signing import load_private_key, new_issuer_key

from .acl import fleet_acl, gateway_patterns
from .broker import Mosquitto, free_port
from .dso_sim import DsoSimulator, Issuer
from .est_server import EstServer
from .faultproxy import FaultProxy
from .operator_ca import CaService, OperatorCa
from .pki import make_pki, reissue_client

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
{security}
{fleet}"""


#: The rig's [control] section: the EN 50549 profile, without the release ramp (a bench wants to see the
#: limit come back at once) and no local reactive power function unless a test asks for one.
CONTROL_DEFAULTS = {"cycle_ms": 200, "max_activation_s": 3600, "revert_s": 60}
SETTINGS_DEFAULTS = {"ramp_up_pct_per_s": 0.0}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):     # a TOML basic string: JSON's escapes are TOML's, and DEL must be escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
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


def rig_broker(workdir: Path, pki, host: str = "127.0.0.1", *, port: int = 0, acl: bool = True) -> Mosquitto:
    """The rig's broker (not started): with acl, every identity confined (the rig's issuers, its head-end, and
    gateways to their own prefix)."""
    rules = fleet_acl({f"issuer.{i}": i for i in ISSUERS if i != "dso"}, {HEADEND_CN: "dso"}) if acl else None
    return Mosquitto(workdir, pki, host=host, port=port, acl=rules, acl_patterns=gateway_patterns() if acl else ())


def issuer_identities(pki, issuer_keys: dict[str, tuple[Path, Path]]) -> dict[str, Issuer]:
    """How the DSO simulator sends as each issuer: its signing key (issuer_keys: id -> (private, public) PEM) and
    its broker identity (the DSO as the head-end, the others as "issuer.<id>")."""
    out = {}
    for issuer, (priv, _pub) in issuer_keys.items():
        cn = HEADEND_CN if issuer == "dso" else f"issuer.{issuer}"
        cert, key = pki.client(cn)
        out[issuer] = Issuer(issuer, load_private_key(priv), tls_context(pki.ca_cert, cert, key), client_id=cn)
    return out


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
                 agent_env: dict[str, str] | None = None, fleet: str = "",
                 gateway_cert_s: tuple[float, float] | None = None, operator_ca: bool = False,
                 est: bool = False, releases: Path | None = None, supervise: bool = False,
                 restart_s: float = 0.5, protocol: str = "5") -> None:
        """control/settings: keys of [control] and [control.settings] over the rig's defaults; feeder: (R, X)
        ohm per phase between the grid (grid_v_pu) and the inverter, so its voltage responds to its P and Q;
        flex: a [flex] section (TOML text) appended to the gateway's configuration; network: a started
        netns.WanPath: the agent and the inverter simulator run in its gateway namespace, the broker listens on
        its near end; acl: the broker confines every identity (hil/acl.py); security: more keys of [security]
        (allow_unsigned, max_lifetime_s...); roles: issuer id -> its roles (default: all operators); agent_env:
        more environment for the agent process (systemd's NOTIFY_SOCKET, WATCHDOG_USEC...); fleet: a [fleet] section
        (TOML text) appended to the configuration (without [fleet.metrics], the rig gives the agent a free port for
        its metrics endpoint: rig.metrics_port), "{est_url}" in it replaced by the EST server's; gateway_cert_s: the
        gateway's certificate valid from..until these seconds from now (a short-lived one, to see it renewed);
        operator_ca: the operator's CA answers certificate requests over MQTT (hil/operator_ca.py, as the DSO with its
        secadm role: give it the role in roles); est: and over EST (hil/est_server.py). Both are up before the agent
        starts; releases: an A/B root (docs/fleet.md) whose current release is this
        installation, the agent started as the unit starts it (boot.py, then current's gridedge); supervise: restart
        the agent when it exits, after restart_s, as systemd's Restart=always does; protocol: the gateway's
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
        self.flex, self.gateway_cert_s = flex, gateway_cert_s
        self.use_ca, self.use_est = operator_ca, est
        self.ca: OperatorCa | None = None
        self.ca_service: CaService | None = None
        self.est: EstServer | None = None
        self.use_proxy, self.proxy = proxy, None
        self.uplink = dict(keepalive_s=keepalive_s, backfill_rate=backfill_rate, backfill_jitter_s=backfill_jitter_s,
                           quota_mb=quota_mb, durability=durability, protocol=protocol)
        self.dso_session_expiry_s = dso_session_expiry_s
        self.gateway_id = gateway_id
        self.prefix = f"gridedge/v3/{gateway_id}/"
        self.use_acl, self.security, self.roles = acl, dict(security or {}), roles
        self.agent_env = dict(agent_env or {})
        self.fleet = fleet
        self.releases = Path(releases) if releases is not None else None
        self.supervise, self.restart_s = supervise, restart_s
        self.agent_exits: list[int] = []     # exit codes of agent processes the supervisor restarted
        self._supervisor: asyncio.Task | None = None
        self.metrics_port = free_port() if "[fleet.metrics]" not in fleet else None
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
        if self.gateway_cert_s is not None:
            now = datetime.datetime.now(datetime.timezone.utc)
            start, end = (now + datetime.timedelta(seconds=s) for s in self.gateway_cert_s)
            reissue_client(self.pki, self.gateway_id, not_before=start, not_after=end)
        self.dso_cert, self.dso_key = self.pki.client(HEADEND_CN)
        self.issuer_keys = {issuer: new_issuer_key(self.workdir / "issuers", issuer) for issuer in ISSUERS}
        self.broker = rig_broker(self.workdir / "broker", self.pki, self.broker_host, acl=self.use_acl)
        await asyncio.to_thread(self.broker.start)
        if self.use_proxy:
            self.proxy = FaultProxy("127.0.0.1", self.broker.port)
            await self.proxy.start()
        self.sim_port = await self._start_sim()
        if self.use_ca or self.use_est:
            self.ca = OperatorCa(self.pki.dir)
        if self.use_ca:
            self.ca_service = CaService(self.ca, self.broker.url, tls_context(self.pki.ca_cert, self.dso_cert,
                                                                              self.dso_key), self.issuers()["dso"])
            await self.ca_service.start()
        if self.use_est:
            self.est = EstServer(self.ca, self.pki)
            await self.est.start()
        if self.releases is not None and not (self.releases / "boot.py").exists():
            await self._release_init()
        self.write_config()
        await self.start_agent()
        self.dso = DsoSimulator(self.broker.url, tls_context(self.pki.ca_cert, self.dso_cert, self.dso_key), self.prefix,
                                session_expiry_s=self.dso_session_expiry_s, issuers=self.issuers(),
                                client_id=HEADEND_CN)
        await self.dso.start()
        await self.dso.wait_online(30)

    def issuers(self) -> dict[str, Issuer]:
        """How the DSO simulator sends as each issuer: its signing key and its broker identity."""
        return issuer_identities(self.pki, self.issuer_keys)

    def write_config(self, **overrides) -> Path:
        broker_url = f"mqtts://127.0.0.1:{self.proxy.port}" if self.proxy else self.broker.url
        values = dict(self.uplink, gateway_id=self.gateway_id, broker_url=broker_url, ca=self.pki.ca_cert,
                      cert=self.gw_cert, key=self.gw_key, telemetry_ms=self.telemetry_ms,
                      storage=self.workdir / "var", sim_port=self.sim_port, poll_ms=self.poll_ms,
                      writable=str(self.writable).lower(), control=control_toml(self.control, self.settings),
                      flex=("\n" + self.flex) if self.flex else "",
                      security=security_toml({i: pub for i, (_p, pub) in self.issuer_keys.items()}, self.roles,
                                             **self.security),
                      fleet=self.fleet.replace("{est_url}", self.est.url if self.est else "")
                      + (f"\n[fleet.metrics]\nport = {self.metrics_port}\n" if self.metrics_port else ""))
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

    async def _release_init(self) -> None:
        """The A/B root with this installation as its current release (`gridedge release init`)."""
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gridedge", "release", "init",
                                                    str(self.releases), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"gridedge release init failed: {out.decode(errors='replace')[-2000:]}")

    def agent_argv(self) -> list[str]:
        """How the agent is started: `python -m gridedge run`, or with an A/B root the unit's own sequence (the
        start guard, then the current release's gridedge) in one exec."""
        run = ["run", "-c", str(self.config_path)]
        if self.releases is None:
            return [sys.executable, "-m", "gridedge", *run]
        return [sys.executable, "-I", str(self.releases / "boot.py"), "--",
                str(self.releases / "current" / "venv" / "bin" / "gridedge"), *run]

    async def start_agent(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.agent_env)
        self.agent = await asyncio.create_subprocess_exec(
            *self.exec_prefix, *self.agent_argv(),
            stdout=asyncio.subprocess.DEVNULL, stderr=open(self.agent_log, "ab"), env=env,
        )
        if self.supervise and (self._supervisor is None or self._supervisor.done()):
            self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restart=always, RestartSec=restart_s: an agent that exits (crashed or not) is started again."""
        while self.agent is not None:
            proc = self.agent
            self.agent_exits.append(await proc.wait())
            await asyncio.sleep(self.restart_s)
            if self.agent is not proc:      # stopped on purpose meanwhile
                return
            await self.start_agent()

    async def stop_agent(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        proc, self.agent = self.agent, None
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        return await stop_process(proc, sig, timeout_s)

    async def stop(self) -> None:
        if self.dso:
            await self.dso.stop()
        await self.stop_agent()
        if self.ca_service:
            await self.ca_service.stop()
        if self.est:
            await self.est.stop()
        sim, self.sim = self.sim, None
        if sim is not None and sim.stdin is not None:
            sim.stdin.close()
        await stop_process(sim, signal.SIGTERM, 5)
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



async def stop_process(proc: asyncio.subprocess.Process | None, sig: int, timeout_s: float) -> int | None:
    """Signal a process and wait for it (SIGKILL after timeout_s); its exit status, None if there was none."""
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
