"""Counting subscriber for the performance harness: decodes both agents' telemetry and counts datapoints.

It runs as its own process, so its CPU is not charged to the agent under test, and it plays the one part of a
ThingsBoard server that the ThingsBoard IoT Gateway needs before it sends telemetry: it answers the gateway's
`getSessionLimits` RPC (request on v1/devices/me/rpc/request/<id>, answer on v1/devices/me/rpc/response/<id>)
the way a self-hosted ThingsBoard without rate limits would.

Payloads understood (points are named <device>/<register>, devices d000.., registers R0..):
  gridedge: gridedge/v2/<gw>/telemetry  {"blocks": [{"dev": "d007", "n": ["R0", ...], "t": ns, "v": [5, ...]}, ...]}
  ThingsBoard: v1/gateway/telemetry      {"d007": [{"ts": ms, "values": {"R12": 5, ...}}, ...]}

Per (device, register) it keeps how often each value arrived (a bytearray indexed by value); for register 0 it
also keeps when each value first arrived, for latency against the device farm's read times.

    python -m bench.perf.subscriber --broker mqtts://127.0.0.1:8883 --ca CA --cert C --key K --devices N --registers M
Prints `READY` once subscribed; then one command per stdin line, each answered with one line:
    stats                    -> JSON totals
    eval SNAP0 SNAP1 OUT     -> completeness and latency of the values the farm offered between two snapshots,
                                written to OUT as JSON; answers `OK OUT`
    quit
"""
from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

GRIDEDGE_TELEMETRY = "gridedge/v2/+/telemetry"
GRIDEDGE_ANY = "gridedge/v2/#"
TB_TELEMETRY = "v1/gateway/telemetry"
TB_ANY = "v1/#"
TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
TB_RPC_RESPONSE = "v1/devices/me/rpc/response/"

#: What a self-hosted ThingsBoard CE answers when the tenant profile sets no rate limits (empty limit strings).
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
    "gatewayRateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
}


def parse_point(device: str, name: str, n_dev: int, n_reg: int) -> tuple[int, int] | None:
    """("d007", "R12") -> (7, 12); None for anything that is not a farm point in range."""
    if len(device) < 2 or device[0] != "d" or len(name) < 2 or name[0] != "R":
        return None
    d, r = device[1:], name[1:]
    if not (d.isdigit() and r.isdigit() and d.isascii() and r.isascii()):
        return None
    di, ri = int(d), int(r)
    if di >= n_dev or ri >= n_reg:
        return None
    return di, ri


class Counter:
    """Datapoint bookkeeping; thread-safe (paho's network thread adds, the command thread reads)."""

    def __init__(self, n_dev: int, n_reg: int) -> None:
        self.n_dev, self.n_reg = n_dev, n_reg
        self.lock = threading.Lock()
        self.seen = [[bytearray(64) for _ in range(n_reg)] for _ in range(n_dev)]
        self.recv0: list[dict[int, int]] = [dict() for _ in range(n_dev)]
        self._names: dict[tuple[str, str], tuple[int, int] | None] = {}
        self.datapoints = {"gridedge": 0, "tb": 0}
        self.messages = {"gridedge": 0, "tb": 0}
        self.bytes = {"gridedge": 0, "tb": 0}
        self.first_msg_ns = {"gridedge": 0, "tb": 0}
        self.first_dp_ns = {"gridedge": 0, "tb": 0}
        self.last_dp_ns = 0
        self.invalid = 0      # samples with quality other than good / no value
        self.foreign = 0      # points that are not farm points
        self.malformed = 0    # payloads that do not parse
        self.rpc_answered = 0

    def _key(self, device: str, name: str) -> tuple[int, int] | None:
        k = (device, name)
        try:
            return self._names[k]
        except KeyError:
            v = self._names[k] = parse_point(device, name, self.n_dev, self.n_reg)
            return v

    def _add(self, di: int, ri: int, value, now: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0x10000:
            self.invalid += 1  # also NaN and infinities (every comparison with NaN is false)
            return
        v = int(value)
        if v != value:
            self.invalid += 1
            return
        arr = self.seen[di][ri]
        if v >= len(arr):
            arr.extend(bytes(max(v + 1 - len(arr), len(arr))))
        if arr[v] < 255:
            arr[v] += 1
        if ri == 0 and v not in self.recv0[di]:
            self.recv0[di][v] = now

    def on_gridedge(self, payload: bytes, now: int) -> None:
        try:
            doc = json.loads(payload)
            blocks = doc["blocks"]
            if not isinstance(blocks, list):
                raise TypeError("blocks is not a list")
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return
        n = 0
        with self.lock:
            for b in blocks:
                try:
                    dev, names, values, quality = b["dev"], b["n"], b["v"], b.get("q")
                    if len(names) != len(values) or (quality is not None and len(quality) != len(values)):
                        raise ValueError
                except (KeyError, TypeError, ValueError):
                    self.malformed += 1
                    continue
                for i, name in enumerate(names):
                    key = self._key(dev, name)
                    if key is None:
                        self.foreign += 1
                        continue
                    v = values[i]
                    if v is None or (quality is not None and quality[i] is not None):
                        self.invalid += 1
                        continue
                    self._add(key[0], key[1], v, now)
                    n += 1
            self._count("gridedge", n, now)

    def on_tb(self, payload: bytes, now: int) -> None:
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            self.malformed += 1
            return
        n = 0
        with self.lock:
            for dev, entries in doc.items():
                if not isinstance(entries, list):
                    entries = [entries]
                for e in entries:
                    values = e.get("values", e) if isinstance(e, dict) else None
                    if not isinstance(values, dict):
                        self.malformed += 1
                        continue
                    for name, value in values.items():
                        key = self._key(dev, name)
                        if key is None:
                            self.foreign += 1
                            continue
                        self._add(key[0], key[1], value, now)
                        n += 1
            self._count("tb", n, now)

    def _count(self, kind: str, n: int, now: int) -> None:
        self.datapoints[kind] += n
        if n:
            self.last_dp_ns = now
            if not self.first_dp_ns[kind]:
                self.first_dp_ns[kind] = now

    def note_message(self, kind: str, size: int, now: int) -> None:
        with self.lock:
            self.messages[kind] += 1
            self.bytes[kind] += size
            if not self.first_msg_ns[kind]:
                self.first_msg_ns[kind] = now

    def stats(self) -> dict:
        with self.lock:
            return {"t_ns": time.time_ns(), "datapoints": dict(self.datapoints), "messages": dict(self.messages),
                    "bytes": dict(self.bytes), "first_msg_ns": dict(self.first_msg_ns),
                    "first_dp_ns": dict(self.first_dp_ns), "last_dp_ns": self.last_dp_ns,
                    "invalid": self.invalid, "foreign": self.foreign, "malformed": self.malformed,
                    "rpc_answered": self.rpc_answered}

    def evaluate(self, snap0: dict, snap1: dict) -> dict:
        """Values offered between two farm snapshots: (c0, c1] per register. Which arrived, which twice, how late."""
        c0s, c1s = snap0["counts"], snap1["counts"]
        offered = delivered = dups = 0
        missing_keys = 0
        lat: list[int] = []
        late_at_t1 = 0  # register-0 values offered in the window but not yet received when the window closed
        t1 = snap1["t_ns"]
        times = snap1["read_times0"]
        with self.lock:
            for di in range(min(self.n_dev, len(c1s))):
                for ri in range(min(self.n_reg, len(c1s[di]))):
                    c0, c1 = c0s[di][ri], c1s[di][ri]
                    if c1 >= 0x10000:
                        raise ValueError("a register was read more than 65535 times: values wrapped; use a "
                                         "shorter window or a longer poll period")
                    if c1 <= c0:
                        continue
                    arr = self.seen[di][ri]
                    seg = arr[c0 + 1:c1 + 1]
                    seg = seg + bytes(c1 - c0 - len(seg))
                    got = len(seg) - seg.count(0)
                    offered += c1 - c0
                    delivered += got
                    dups += sum(seg) - got
                    if got < c1 - c0:
                        missing_keys += 1
                r0 = self.recv0[di]
                c0, c1 = c0s[di][0], c1s[di][0]
                tt = times[di]
                for k in range(c0 + 1, min(c1, len(tt)) + 1):
                    rx = r0.get(k)
                    if rx is None:
                        continue
                    lat.append(rx - tt[k - 1])
                    if rx > t1:
                        late_at_t1 += 1
        lat.sort()

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] / 1e9

        return {"offered": offered, "delivered": delivered, "missing": offered - delivered, "duplicates": dups,
                "registers_with_loss": missing_keys, "latency_samples": len(lat),
                "latency_p50_s": pct(50), "latency_p99_s": pct(99), "latency_max_s": (lat[-1] / 1e9) if lat else None,
                "reg0_after_window_end": late_at_t1}


class Subscriber:
    def __init__(self, args: argparse.Namespace) -> None:
        self.counter = Counter(args.devices, args.registers)
        self.ready = threading.Event()
        u = urlsplit(args.broker)
        self.host, self.port = u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                                  protocol=mqtt.MQTTv5)
        if u.scheme == "mqtts":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
            ctx.load_cert_chain(args.cert, args.key)
            self.client.tls_set_context(ctx)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            print(f"ERR connect refused: {reason}", flush=True)
            return
        client.subscribe([(GRIDEDGE_ANY, 1), (TB_ANY, 1)])

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        self.ready.set()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time_ns()
        t = msg.topic
        c = self.counter
        if msg.retain:
            return  # a retained message is history (e.g. an earlier run's state), not a publish of the agent under test
        try:
            if t.startswith("gridedge/"):
                c.note_message("gridedge", len(msg.payload), now)
                if t.endswith("/telemetry"):
                    c.on_gridedge(msg.payload, now)
            elif t.startswith("v1/"):
                if t.startswith(TB_RPC_RESPONSE):
                    return  # our own answers
                c.note_message("tb", len(msg.payload), now)
                if t == TB_TELEMETRY:
                    c.on_tb(msg.payload, now)
                elif t.startswith(TB_RPC_REQUEST):
                    self._answer_rpc(t[len(TB_RPC_REQUEST):], msg.payload)
        except Exception as exc:  # never let paho's thread die on a payload
            with c.lock:
                c.malformed += 1
            print(f"# subscriber: {t}: {exc!r}", file=sys.stderr, flush=True)

    def _answer_rpc(self, req_id: str, payload: bytes) -> None:
        try:
            req = json.loads(payload)
        except ValueError:
            return
        if isinstance(req, dict) and req.get("method") == "getSessionLimits":
            self.client.publish(TB_RPC_RESPONSE + req_id, json.dumps(SESSION_LIMITS), qos=1)
            with self.counter.lock:
                self.counter.rpc_answered += 1

    def run(self) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.ready.wait(20):
            print("ERR not subscribed within 20 s", flush=True)
            return
        print("READY", flush=True)
        for line in sys.stdin:
            cmd, *args = line.split()
            try:
                if cmd == "stats":
                    print(json.dumps(self.counter.stats()), flush=True)
                elif cmd == "eval" and len(args) == 3:
                    with open(args[0]) as f:
                        s0 = json.load(f)
                    with open(args[1]) as f:
                        s1 = json.load(f)
                    res = self.counter.evaluate(s0, s1)
                    res["stats"] = self.counter.stats()
                    tmp = args[2] + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(res, f)
                    os.replace(tmp, args[2])
                    print(f"OK {args[2]}", flush=True)
                elif cmd == "quit":
                    break
                else:
                    print(f"ERR unknown command {line.strip()!r}", flush=True)
            except Exception as exc:  # a failed command is reported, the subscriber keeps counting
                print(f"ERR {exc!r}", flush=True)
        self.client.loop_stop()
        self.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf.subscriber", description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--client-id", default="bench-subscriber")
    ap.add_argument("--devices", type=int, default=0)
    ap.add_argument("--registers", type=int, default=1)
    Subscriber(ap.parse_args(argv)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
