"""The process image: the latest sample of every point, which control reads at the start of each cycle.

Blocks are stored whole (one dict write per read, however many points it holds) and a Sample is only built when
someone asks for a point, because control reads a handful of points per cycle while meters deliver thousands.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .core.model import BlockLayout, Sample, SampleBlock


class ProcessImage(Mapping[str, Sample]):
    def __init__(self) -> None:
        self._samples: dict[str, Sample] = {}
        self._blocks: dict[BlockLayout, SampleBlock] = {}
        self._layouts: dict[str, list[BlockLayout]] = {}   # device -> its layouts: a point is found by its device

    def put(self, readings: Iterable[Sample | SampleBlock]) -> int:
        """Take samples and blocks in arrival order; returns the number of values taken."""
        n = 0
        for r in readings:
            if isinstance(r, SampleBlock):
                lay = r.layout
                if lay not in self._blocks:
                    self._layouts.setdefault(lay.device, []).append(lay)
                self._blocks[lay] = r
                n += len(r.values)
            else:
                self._samples[r.point] = r
                n += 1
        return n

    def _from_blocks(self, point: str) -> Sample | None:
        """The newest value of `point` in any block of its device, or None."""
        device, _, name = point.partition("/")
        best: Sample | None = None
        for lay in self._layouts.get(device, ()):
            i = lay.index.get(name)
            if i is not None:
                block = self._blocks[lay]
                if best is None or block.ts_ns > best.ts_ns:
                    best = block.sample(i)
        return best

    def __getitem__(self, point: str) -> Sample:
        s = self._from_blocks(point)
        single = self._samples.get(point)
        if s is None:
            if single is None:
                raise KeyError(point)
            return single
        return single if single is not None and single.ts_ns > s.ts_ns else s  # a point with two sources: newest

    def _block_points(self) -> dict[str, None]:
        return dict.fromkeys(p for lays in self._layouts.values() for lay in lays for p in lay.points)

    def __contains__(self, point: object) -> bool:
        if point in self._samples:
            return True
        if not isinstance(point, str):
            return False
        device, _, name = point.partition("/")
        return any(name in lay.index for lay in self._layouts.get(device, ()))

    def __iter__(self) -> Iterator[str]:
        in_blocks = self._block_points()
        yield from in_blocks
        yield from (p for p in self._samples if p not in in_blocks)

    def __len__(self) -> int:
        in_blocks = self._block_points()
        return len(in_blocks) + sum(1 for p in self._samples if p not in in_blocks)
