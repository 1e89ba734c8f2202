"""The configured telemetry form ([telemetry]): readings in, encoded blocks and the layout messages they need out.

Keeps the encoder's CPU property: a block is encoded when it arrives (bytes, not objects, until the next telemetry
message) and the message body is spliced around the blocks; compression runs once per stored message, on the
whole message, in the outbox (Encoded.compress). The forms (docs/mqtt-api.md, "Data thrift"):

    form     blocks (gridedge.telemetry/2, names and units in every block) | layouts (gridedge.telemetry/3)
    compression  none (application/json) | deflate (application/zlib, edge/compression.py)
    report   all (every value of every read) | exception (edge/reporting.py)
"""
from __future__ import annotations

from .compression import compress
from .config_telemetry import TelemetryConfig
from .core.model import Sample, SampleBlock
from .layouts import Layouts, encode_compact
from .reporting import Reporter
from .telemetry import (SCHEMA_TELEMETRY, SCHEMA_TELEMETRY_LAYOUTS, Encoded, _encode, encode_block, encode_samples,
                        encode_values)


class TelemetryWriter:
    def __init__(self, cfg: TelemetryConfig = TelemetryConfig(), full_resolution: frozenset[str] = frozenset()):
        """full_resolution: point ids sent at every change whatever the deadbands say (what flex settles)."""
        self.cfg = cfg
        self.layouts = Layouts() if cfg.form == "layouts" else None
        self.reporter = Reporter(cfg.policy_of(full_resolution)) if cfg.report == "exception" else None
        self.schema = SCHEMA_TELEMETRY_LAYOUTS if cfg.form == "layouts" else SCHEMA_TELEMETRY
        self.compress = compress if cfg.compression == "deflate" else None
        self.announce: list[tuple[str, dict]] = []  # (topic suffix, body) of layouts to store before the blocks
        self.read = self.sent = 0  # values given, values encoded: the thrift of report by exception

    def block(self, block: SampleBlock, *, backfill: bool = False) -> tuple[bytes | None, int]:
        """The encoded block (None: nothing to send) and how many values it carries. A device's record of the past
        (backfill) is sent whole, not by exception: it is history, not the present the deadbands compare with."""
        self.read += len(block)
        picked = self.reporter.select(block) if self.reporter is not None and not backfill else None
        if picked is not None and not picked:
            return None, 0
        self.sent += len(block) if picked is None else len(picked)
        lid = self.layouts.id_of(block.layout, self.announce) if self.layouts is not None else None
        if picked is None:
            if lid is None:
                return encode_block(block), len(block.values)
            return encode_compact(lid, block.ts_ns, None, *encode_values(block.values, block.quality)), len(block)
        values = [block.values[i] for i in picked]
        quality = [block.quality[i] for i in picked] if block.quality is not None else None
        if lid is not None:
            return encode_compact(lid, block.ts_ns, picked, *encode_values(values, quality)), len(picked)
        lay = block.layout
        v, tail = encode_values(values, quality)
        return (b'{"dev":' + _encode(lay.device).encode() + b',"n":' + _encode([lay.names[i] for i in picked]).encode()
                + b',"u":' + _encode([lay.units[i] for i in picked]).encode() + b',"t":' + str(block.ts_ns).encode()
                + b',"v":' + v + tail), len(picked)

    def samples(self, samples: list[Sample], *, backfill: bool = False) -> tuple[list[bytes], int]:
        """Loose samples as full-form blocks (they have no fixed layout), and how many values they carry."""
        self.read += len(samples)
        if self.reporter is not None and not backfill:
            samples = self.reporter.select_samples(samples)
        self.sent += len(samples)
        return (encode_samples(samples) if samples else []), len(samples)

    def reconnected(self) -> None:
        if self.layouts is not None:
            self.layouts.reconnected()

    def body(self, ts_iso: str, blocks: list[bytes], values: int) -> Encoded:
        return Encoded({"schema": self.schema, "ts": ts_iso}, b'"blocks":[' + b",".join(blocks) + b"]", values,
                       self.compress)

    def take_layouts(self) -> list[tuple[str, dict]]:
        out, self.announce = self.announce, []
        return out
