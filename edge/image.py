"""The process image: the latest sample of every point, which control reads at the start of each cycle.

Blocks are stored whole (one dict write per read, however many points it holds) and a Sample is only built when
someone asks for a point, because control reads a handful of points per cycle while meters deliver thousands.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .model import BlockLayout, Sample, SampleBlock


class ProcessImage(Mapping[str, Sample]):
    def __init__(self) -> None:
        self._samples: dict[str, Sample] = {}
        self._blocks: dict[BlockLayout, SampleBlock] = {}
        self._where: dict[str, tuple[BlockLayout, int]] = {}

    def put(self, readings: Iterable[Sample | SampleBlock]) -> int:
        """Take samples and blocks in arrival order; returns the number of values taken."""
        n = 0
        for r in readings:
            if isinstance(r, SampleBlock):
                lay = r.layout
                if lay not in self._blocks:
                    for i, point in enumerate(lay.points):
                        self._where[point] = (lay, i)
                self._blocks[lay] = r
                n += len(r.values)
            else:
                self._samples[r.point] = r
                n += 1
        return n

    def __getitem__(self, point: str) -> Sample:
        where = self._where.get(point)
        single = self._samples.get(point)
        if where is None:
            if single is None:
                raise KeyError(point)
            return single
        s = self._blocks[where[0]].sample(where[1])
        return single if single is not None and single.ts_ns > s.ts_ns else s  # a point with two sources: newest

    def __contains__(self, point: object) -> bool:
        return point in self._where or point in self._samples

    def __iter__(self) -> Iterator[str]:
        yield from self._where
        yield from (p for p in self._samples if p not in self._where)

    def __len__(self) -> int:
        return len(self._where) + sum(1 for p in self._samples if p not in self._where)
