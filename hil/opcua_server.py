"""Secondary-substation RTU / PMU concentrator on OPC UA, for hardware-in-the-loop tests of the OPC UA driver.

Per feeder k (1..N): active power P (W), reactive power Q (var), phase-A voltage V (V), phase-A current I (A) and
the circuit breaker position (IEC 61850 Dbpos: 1 = off/open, 2 = on/closed), plus the busbar frequency. Values
follow a compressed daily load profile plus noise and are written every ~100 ms with a source timestamp, so a
subscriber sees a steady stream of data changes. The breaker node is written only when it changes (an event,
not a measurement). Node ids are IEC 61850-flavoured strings in the sim's namespace, e.g. "F1.MMXU1.TotW";
`points()` maps gridedge point names ("F1.W", "F1.XCBR1.Pos", "Hz") to them.

CLI: python -m gridedge.hil.opcua_server --port 4840 [--feeders 4]   (prints "READY <endpoint>"; SIGTERM stops it)
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import math
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

log = logging.getLogger("gridedge.hil.opcua_server")

NAMESPACE = "urn:gridedge:hil:substation"
DBPOS_OFF, DBPOS_ON = 1, 2          # IEC 61850-7-3 Dbpos: 0 intermediate, 1 off (open), 2 on (closed), 3 bad

#: gridedge point suffix -> (node id suffix, unit, OPC UA type)
_FEEDER_SIGNALS = {
    "W": ("MMXU1.TotW", "W", ua.VariantType.Double),
    "VAr": ("MMXU1.TotVAr", "var", ua.VariantType.Double),
    "PhVphA": ("MMXU1.PhV.phsA", "V", ua.VariantType.Double),
    "A": ("MMXU1.A.phsA", "A", ua.VariantType.Double),
    "XCBR1.Pos": ("XCBR1.Pos", "", ua.VariantType.Int32),
}


@dataclass(frozen=True)
class ServerSecurity:
    """Certificate endpoint of the sim. trust_dir: directory of trusted CA / client certs (*.der, *.pem);
    None accepts any client certificate (bench only). allow_none also offers the unsecured endpoint."""

    cert: Path
    key: Path
    trust_dir: Path | None = None
    allow_none: bool = False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _der_cert(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


def _pem_key(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    data = Path(path).read_bytes()
    key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
           else serialization.load_der_private_key(data, None))
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class _Feeder:
    """One feeder's load: a compressed day (period `day_s`) around a nominal power, with noise."""

    def __init__(self, k: int, rng: random.Random):
        self.k = k
        self.p_nom = 150e3 + 50e3 * (k % 5)      # W
        self.pf = 0.92 + 0.01 * (k % 6)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.closed = True
        self.status = ua.StatusCodes.Good

    def values(self, t: float, day_s: float, rng: random.Random) -> dict[str, float | int]:
        if self.closed:
            shape = 0.6 + 0.3 * math.sin(2 * math.pi * t / day_s + self.phase)
            p = self.p_nom * shape * (1 + rng.gauss(0, 0.01))
            q = p * math.tan(math.acos(self.pf))
        else:
            p = q = 0.0
        v = 230.0 * (1 - 0.03 * p / self.p_nom) + rng.gauss(0, 0.2)
        i = math.hypot(p, q) / (3 * v)
        return {"W": p, "VAr": q, "PhVphA": v, "A": i, "XCBR1.Pos": DBPOS_ON if self.closed else DBPOS_OFF}


class OpcUaSubstationSim:
    """asyncua server with N feeders; start() -> endpoint url. Restartable on the same port (stop(), start())."""

    def __init__(self, port: int = 0, feeders: int = 4, security: ServerSecurity | None = None, *,
                 host: str = "127.0.0.1", period_s: float = 0.1, day_s: float = 60.0, seed: int | None = None):
        if not isinstance(feeders, int) or not 1 <= feeders <= 999:
            raise ValueError(f"feeders must be an integer 1..999, got {feeders!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if not period_s > 0 or not day_s > 0:
            raise ValueError("period_s and day_s must be positive")
        self.host = host
        self.port = port
        self.security = security
        self.period_s = period_s
        self.day_s = day_s
        self._rng = random.Random(seed)
        self.feeders = [_Feeder(k, self._rng) for k in range(1, feeders + 1)]
        self.hz = 50.0
        self.server: Server | None = None
        self.ns = 2
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._written_pos: dict[int, int] = {}
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ address space

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/gridedge/rtu"

    def _sid(self, feeder: int, suffix: str) -> str:
        return f"F{feeder}.{_FEEDER_SIGNALS[suffix][0]}"

    def points(self) -> dict[str, str]:
        """gridedge point name -> node id string, e.g. {"F1.W": "ns=2;s=F1.MMXU1.TotW", ..., "Hz": ...}."""
        out = {f"F{f.k}.{name}": f"ns={self.ns};s={self._sid(f.k, name)}" for f in self.feeders for name in
               _FEEDER_SIGNALS}
        out["Hz"] = f"ns={self.ns};s=Bus.MMXU1.Hz"
        return out

    async def _build(self) -> Server:
        srv = Server()
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name("gridedge substation RTU sim")
        srv.set_identity_tokens([ua.AnonymousIdentityToken])
        sec = self.security
        if sec is None:
            srv.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if sec.allow_none:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            srv.set_security_policy(policies)
            cert_der = _der_cert(sec.cert)
            from cryptography import x509
            uris = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
            if uris:
                await srv.set_application_uri(uris[0])   # must match the certificate's SAN URI
            await srv.load_certificate(cert_der)
            await srv.load_private_key(_pem_key(sec.key))
            if sec.trust_dir is not None:
                store = TrustStore([Path(sec.trust_dir)], [])
                await store.load()
                srv.set_certificate_validator(CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))
        self.ns = await srv.register_namespace(NAMESPACE)
        rtu = await srv.nodes.objects.add_object(ua.NodeId("RTU", self.ns), ua.QualifiedName("RTU", self.ns))
        bus = await rtu.add_object(ua.NodeId("Bus", self.ns), ua.QualifiedName("Bus", self.ns))
        await bus.add_variable(ua.NodeId("Bus.MMXU1.Hz", self.ns), ua.QualifiedName("Hz", self.ns),
                               ua.Variant(self.hz, ua.VariantType.Double))
        for f in self.feeders:
            obj = await rtu.add_object(ua.NodeId(f"F{f.k}", self.ns), ua.QualifiedName(f"F{f.k}", self.ns))
            for name, (_, _, vtype) in _FEEDER_SIGNALS.items():
                initial = DBPOS_ON if vtype is ua.VariantType.Int32 else 0.0
                await obj.add_variable(ua.NodeId(self._sid(f.k, name), self.ns), ua.QualifiedName(name, self.ns),
                                       ua.Variant(initial, vtype))
        return srv

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Build the address space, listen, start the update loop; returns the endpoint url."""
        if self.server is not None:
            return self.endpoint
        if self.port == 0:
            self.port = _free_port(self.host)   # fixed from now on, so a restart comes back on the same port
        srv = await self._build()
        await srv.start()
        self.server = srv
        self._written_pos = {}
        await self._update(force=True)
        self._task = asyncio.create_task(self._loop(), name="opcua-sim-update")
        log.info("OPC UA substation sim on %s (%d feeders)", self.endpoint, len(self.feeders))
        return self.endpoint

    async def stop(self) -> None:
        """Stop serving (clients see the connection drop); start() brings the same endpoint back."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.server is not None:
            srv, self.server = self.server, None
            await srv.stop()

    def subscription_count(self) -> int:
        """Live subscriptions on the server (all sessions), for tests that require exactly one."""
        if self.server is None:
            return 0
        return len(self.server.iserver.subscription_service.subscriptions)

    def monitored_item_count(self) -> int:
        if self.server is None:
            return 0
        subs = self.server.iserver.subscription_service.subscriptions.values()
        return sum(len(s.monitored_item_srv._monitored_items) for s in subs)

    # ------------------------------------------------------------------ controls

    def set_breaker(self, feeder: int, closed: bool) -> None:
        """Open / close a feeder breaker; the position node is written at once (not at the next tick)."""
        self._feeder(feeder).closed = bool(closed)
        self._wake.set()

    def set_status(self, feeder: int, status: int) -> None:
        """Report the feeder's measurements with an OPC UA status code (e.g. ua.StatusCodes.BadSensorFailure)."""
        self._feeder(feeder).status = int(status)
        self._wake.set()

    def _feeder(self, feeder: int) -> _Feeder:
        if not isinstance(feeder, int) or not 1 <= feeder <= len(self.feeders):
            raise ValueError(f"feeder must be 1..{len(self.feeders)}, got {feeder!r}")
        return self.feeders[feeder - 1]

    # ------------------------------------------------------------------ values

    async def _loop(self) -> None:
        while True:
            try:
                woken = True
                try:  # not wait_for: on 3.11 it can swallow a cancel racing the event, and stop() would hang
                    async with asyncio.timeout(self.period_s):
                        await self._wake.wait()
                except TimeoutError:
                    woken = False
                if woken:
                    self._wake.clear()
                    await self._update(force=False, breakers_only=True)
                else:
                    await self._update(force=False)
            except asyncio.CancelledError:
                raise
            except Exception:   # a failed tick must not end the simulation
                log.exception("update failed")

    async def _write(self, sid: str, value, vtype: ua.VariantType, status: int, ts: _dt.datetime) -> None:
        dv = ua.DataValue(ua.Variant(value, vtype), ua.StatusCode(status), SourceTimestamp=ts, ServerTimestamp=ts)
        await self.server.write_attribute_value(ua.NodeId(sid, self.ns), dv)

    async def _update(self, force: bool, breakers_only: bool = False) -> None:
        if self.server is None:
            return
        ts = _dt.datetime.now(_dt.timezone.utc)
        t = time.monotonic() - self._t0
        for f in self.feeders:
            vals = f.values(t, self.day_s, self._rng)
            pos = int(vals["XCBR1.Pos"])
            if force or self._written_pos.get(f.k) != pos:
                await self._write(self._sid(f.k, "XCBR1.Pos"), pos, ua.VariantType.Int32, ua.StatusCodes.Good, ts)
                self._written_pos[f.k] = pos
            if breakers_only and not force:
                continue
            for name in ("W", "VAr", "PhVphA", "A"):
                await self._write(self._sid(f.k, name), float(vals[name]), ua.VariantType.Double, f.status, ts)
        if not breakers_only or force:
            self.hz = 50.0 + 0.9 * (self.hz - 50.0) + self._rng.gauss(0, 0.005)
            await self._write("Bus.MMXU1.Hz", self.hz, ua.VariantType.Double, ua.StatusCodes.Good, ts)


# ---------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gridedge.hil.opcua_server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4840)
    p.add_argument("--feeders", type=int, default=4)
    p.add_argument("--cert", type=Path, help="server certificate (DER or PEM): enables Basic256Sha256 SignAndEncrypt")
    p.add_argument("--key", type=Path, help="server private key (PEM or DER)")
    p.add_argument("--trust-dir", type=Path, help="directory of trusted client / CA certificates")
    p.add_argument("--allow-none", action="store_true", help="with --cert, also offer the unsecured endpoint")
    p.add_argument("--print-points", action="store_true", help="print the point -> node id map as JSON")
    args = p.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        p.error("--cert and --key go together")
    return args


async def _serve(args: argparse.Namespace) -> None:
    sec = ServerSecurity(args.cert, args.key, args.trust_dir, args.allow_none) if args.cert else None
    sim = OpcUaSubstationSim(args.port, args.feeders, sec, host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoint = await sim.start()
    if args.print_points:
        print(json.dumps(sim.points(), indent=1), flush=True)
    print(f"READY {endpoint}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
