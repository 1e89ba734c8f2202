"""The local status endpoint: Prometheus text on http://127.0.0.1:<fleet.metrics.port>/metrics (docs/fleet.md).

Per device: deliveries, failures, poll rate, breaker state and last good read; the outbox's depth, age and drops;
the uplink's state and reconnects; the control cycle's time; certificate expiry; the running version and
configuration. `gridedge status` reads the same page and prints it for a person.

The figures are read from the agent when a scrape asks (a prometheus_client collector), in the agent's event loop:
nothing is counted twice, nothing runs between scrapes (idle cost: none measurable, bench/bench_metrics.py), and
no thread reads the agent's state while the loop changes it. That is why the HTTP side is a few lines of asyncio here rather than
prometheus_client's threaded server.
"""
from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, \
    StateSetMetricFamily
from prometheus_client.registry import CollectorRegistry

from .. import __version__

log = logging.getLogger("gridedge.fleet.metrics")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 8
BREAKER_STATES = ("closed", "open", "half_open")
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"   # what generate_latest writes


class AgentCollector:
    """Every figure, read from the agent at scrape time."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.started = time.time()
        self.connects = 0

    async def on_connect(self) -> None:
        self.connects += 1

    def collect(self):
        a = self.agent
        cfg = a.fleet_config.state() if getattr(a, "fleet_config", None) else {"sha256": a.config.sha256}
        info = InfoMetricFamily("gridedge", "the running gateway: version, gateway id and configuration")
        info.add_metric([], {"version": __version__, "gateway": a.gateway_id, "config_sha256": cfg["sha256"] or "",
                             "config_version": cfg.get("version") or ""})
        yield info
        yield GaugeMetricFamily("gridedge_start_time_seconds", "when this agent process started (UTC)",
                                value=self.started)
        if "local_edit" in cfg:
            yield GaugeMetricFamily("gridedge_config_local_edit", "1: the configuration was edited on the gateway "
                                    "since the head-end last set it", value=float(cfg["local_edit"]))
        yield from self._devices()
        yield from self._outbox()
        up = a.mqtt is not None and a.mqtt.connected.is_set()
        yield GaugeMetricFamily("gridedge_uplink_connected", "1 while connected to the broker", value=float(up))
        yield CounterMetricFamily("gridedge_uplink_reconnects", "connections to the broker after the first",
                                  value=max(self.connects - 1, 0))
        yield CounterMetricFamily("gridedge_control_cycles", "control cycles run", value=a.control.cycles)
        yield GaugeMetricFamily("gridedge_control_cycle_seconds", "how long the last control cycle took",
                                value=a.control.last_cycle_s)
        commands = CounterMetricFamily("gridedge_commands", "command messages by what became of them",
                                       labels=["outcome"])
        for outcome, n in a.gate.counts.items():
            commands.add_metric([outcome], n)
        yield commands
        expiry = GaugeMetricFamily("gridedge_certificate_expiry_timestamp_seconds", "notAfter of every certificate "
                                   "the configuration names (UTC)", labels=["role", "subject"])
        for c in a.certs:
            expiry.add_metric([c.role, c.subject], c.not_after.timestamp())
        yield expiry

    def _devices(self):
        h = self.agent.device_health
        reads = CounterMetricFamily("gridedge_device_reads", "deliveries of readings (polls, data changes)",
                                    labels=["device"])
        errors = CounterMetricFamily("gridedge_device_read_errors", "deliveries without one good value",
                                     labels=["device"])
        rate = GaugeMetricFamily("gridedge_device_poll_rate_hertz", "deliveries per second, smoothed",
                                 labels=["device"])
        up = GaugeMetricFamily("gridedge_device_up", "1: its last delivery had a good value", labels=["device"])
        last = GaugeMetricFamily("gridedge_device_last_good_read_timestamp_seconds", "when it last gave a good value "
                                 "(UTC; absent: never)", labels=["device"])
        breaker = StateSetMetricFamily("gridedge_device_breaker", "its circuit breaker (Modbus, DLMS devices)",
                                       labels=["device"])
        for dev, st in h.stats.items():
            reads.add_metric([dev], st.reads)
            errors.add_metric([dev], st.errors)
            rate.add_metric([dev], h.poll_rate_hz(dev))
            up.add_metric([dev], float(h.status(dev) == "ok"))
            if st.last_good_ns:
                last.add_metric([dev], st.last_good_ns / 1e9)
            state = h.breaker(dev)
            if state is not None:
                breaker.add_metric([dev], {s: s == state for s in BREAKER_STATES})
        yield from (reads, errors, rate, up, last, breaker)

    def _outbox(self):
        stats = self.agent.outbox.stats()
        yield GaugeMetricFamily("gridedge_outbox_messages", "messages stored, not yet acknowledged by the broker",
                                value=stats["count"])
        yield GaugeMetricFamily("gridedge_outbox_bytes", "their payload bytes", value=stats["bytes"])
        yield GaugeMetricFamily("gridedge_outbox_oldest_age_seconds", "age of the oldest stored message (0: none)",
                                value=stats["oldest_age_s"] or 0.0)
        dropped = CounterMetricFamily("gridedge_outbox_dropped", "messages dropped (quota or age), by data class",
                                      labels=["data_class"])
        for data_class, n in sorted(stats["dropped"].items()):
            dropped.add_metric([data_class], n)
        yield dropped


class MetricsEndpoint:
    """GET /metrics on loopback; anything else is 404 or 405. Bounded: request size, time, connections."""

    def __init__(self, agent, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.collector = AgentCollector(agent)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.server: asyncio.Server | None = None
        self.open = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_BYTES,
                                                 reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def page(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            if self.open > MAX_CONNECTIONS:
                return
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, send_page, with_body = route(await reader.readuntil(b"\r\n\r\n"))
                body, ctype = (self.page(), CONTENT_TYPE) if send_page else (b"GET /metrics\n", b"text/plain")
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                             + (body if with_body else b""))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass   # a client that is slow, gone or sends too much gets nothing more
        except Exception:  # a collector bug must not end the endpoint, nor the agent
            log.exception("metrics: scrape failed")
        finally:
            self.open -= 1
            writer.transport.abort()


def route(head: bytes) -> tuple[bytes, bool, bool]:
    """A request's head (hostile bytes, bounded by the reader) -> (status line, the page?, a body?)."""
    method, _, rest = head.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method not in (b"GET", b"HEAD"):
        return b"405 Method Not Allowed", False, True
    if path != b"/metrics":
        return b"404 Not Found", False, method == b"GET"
    return b"200 OK", True, method == b"GET"


def install(agent) -> None:
    """The endpoint as one of the agent's fleet starters (none with fleet.metrics.port = 0)."""
    m = agent.config.fleet.metrics
    if not m.port:
        agent.metrics = None
        return
    agent.metrics = endpoint = MetricsEndpoint(agent, m.host, m.port)

    async def serve() -> None:
        agent.mqtt.on_connect_hooks.append(endpoint.collector.on_connect)
        if agent.mqtt.connected.is_set():
            endpoint.collector.connects += 1
        try:
            await endpoint.start()
        except OSError as exc:  # the port is taken: the gateway runs on without its local status
            log.error("metrics: cannot listen on %s:%d (%s); no local status endpoint", m.host, m.port, exc)
            return
        try:
            await asyncio.Event().wait()
        finally:
            await endpoint.close()

    agent.fleet.on_start("metrics", serve)
