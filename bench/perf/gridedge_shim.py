"""Stand-in launcher for gridedge while its register-map Modbus driver is not registered in the tree.

`python -m bench.perf.gridedge_shim run -c FILE` is `python -m gridedge run -c FILE` plus one bench-only driver,
`bench_regmap`, built from gridedge's own parts (drivers/regmap.py plans and decodes, drivers/modbus_tcp.py reads);
the register map file comes from the environment (BENCH_REGMAP), because the config schema has no key for it.
The harness uses it only when `--gridedge-driver` names a driver the tree does not have; once the real
`modbus_tcp` register-map driver is registered, the harness runs `python -m gridedge` directly.
"""
from __future__ import annotations

import os
import sys
import time


class BenchRegmapDevice:
    """Minimal poll-only device: one read per planned block, decoded into Samples; faults become invalid samples."""

    def __init__(self, device_id: str, host: str, port: int, unit_id: int, timeout_s: float, map_path: str) -> None:
        from gridedge.drivers import regmap
        from gridedge.drivers.modbus_tcp import ModbusTcpClient

        self.id = device_id
        self.rmap = regmap.load_map(map_path)
        self.blocks = regmap.plan_reads(self.rmap)
        self.client = ModbusTcpClient(host, port, unit_id, timeout_s)
        self._regmap = regmap

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        await self.client.close()

    async def poll(self):
        from gridedge.drivers.modbus_tcp import DeviceError
        from gridedge.model import invalid

        out = []
        for block in self.blocks:
            ts = time.time_ns()
            try:
                regs = await self.client.read_holding(block.address, block.count)
            except DeviceError as exc:
                out += [invalid(f"{self.id}/{n}", ts, exc.detail) for n in block.points]
                continue
            out += self._regmap.decode(self.rmap, block, regs, self.id, ts)
        return out


def install() -> None:
    from gridedge import config, devices

    map_path = os.environ.get("BENCH_REGMAP")
    if not map_path:
        raise SystemExit("bench_regmap needs BENCH_REGMAP=<register map file>")
    config.register_driver("bench_regmap", transport="tcp", description="bench stand-in register-map driver")
    devices.DRIVERS["bench_regmap"] = lambda cfg: BenchRegmapDevice(cfg.id, cfg.host, cfg.port, cfg.unit_id,
                                                                    cfg.timeout_ms / 1000, map_path)


def main() -> int:
    install()
    from gridedge.cli import main as gridedge_main

    return gridedge_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
