"""source → decode → flows → analyzers → events, in one object the CLI and the daemon share.

Example::

    >>> from sensor.pipeline import iter_events
    >>> events = list(iter_events(["pcaps/attack-day.pcap.gz"]))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from sensor import _fast
from sensor.capture import open_captures
from sensor.capture.pcap import PcapBlock
from sensor.decode.l2l4 import SUPPORTED_LINKTYPES, linktype_name
from sensor.events import Counters, Event
from sensor.flows.table import FlowConfig, FlowTable


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    flows: FlowConfig = field(default_factory=FlowConfig)
    batch_size: int = 4096
    # The compiled per-packet loop (sensor._fast) when it is built; False (or RADSENSOR_FAST=0 in
    # the environment) runs the pure-Python reference. Events and counters are the same either way.
    fast: bool = True


class Pipeline:
    """Feed it ``PacketBatch``es (from a file or a live source); events go to ``emit``."""

    def __init__(self, emit: Callable[[Event], None], config: PipelineConfig = PipelineConfig(),
                 counters: Counters | None = None) -> None:
        _tune_gc()
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self.flows = FlowTable(emit, self.counters, config.flows)
        self.driver = _fast.new_table(self.flows, config.fast)
        self.compiled = config.fast and _fast.COMPILED
        if self.compiled:
            self.flows.attach_fast(self.driver)
        self.packets = 0
        self.bytes = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def feed(self, batch) -> None:
        """Decode a batch and run its packets through the flow table (one driver call per batch)."""
        n = len(batch)
        if not n:
            return
        self.packets += n
        if batch.linktype not in SUPPORTED_LINKTYPES:  # a live or merged source changed link type
            self.counters.add("decode.unsupported_linktype", n)
            raise PipelineError(f"{linktype_name(batch.linktype)} not supported")
        bad: dict[str, int] = {}
        if type(batch) is PcapBlock:
            ip, wire, first, last, last_ip = self.driver.process_pcap(
                batch.block, batch.start, n, batch.swapped, float(batch.units), batch.linktype, bad)
        else:
            ts = batch.ts
            wire, first, last = sum(batch.wirelen), ts[0], ts[-1]
            ip, last_ip = self.driver.process_frames(batch.linktype, ts, batch.frames, bad)
        self.bytes += wire
        if self.first_ts is None:
            self.first_ts = first
        self.last_ts = last
        for reason, k in bad.items():
            self.counters.add("decode." + reason, k)
        self.counters.add("decode.ip_packets", ip)
        if ip:
            flows = self.flows
            flows.now = max(flows.now, last_ip)

    def advance(self, now: float) -> None:
        self.flows.advance(now)

    def finish(self) -> None:
        self.flows.finish()


def _tune_gc() -> None:
    """Make the cyclic GC fit a long-lived table of many small objects.

    With default thresholds, young-generation collections every 700 allocations walk the flow
    table over and over; measured on 20k new TCP flows: 63 us/flow with defaults, 11 us with the
    collector off. Objects alive at start-up (imports, the model) are frozen out of collection and
    the young threshold is raised; full collections still run, so cycles are still reclaimed.
    """
    if gc.get_threshold()[0] < 50_000:
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)


class PipelineError(Exception):
    """Input the pipeline cannot process at all (one clear line)."""


def iter_events(paths: Sequence[str | os.PathLike], config: PipelineConfig = PipelineConfig(),
                counters: Counters | None = None, on_batch: Callable | None = None,
                warnings: list[str] | None = None) -> Iterator[Event]:
    """Decode capture files (or directories of them) and yield events as they complete.

    Damaged input (a truncated or corrupt file) is not an error: its events are yielded and one
    line per problem is appended to ``warnings`` (and counted as ``capture.warnings``).
    """
    out: list[Event] = []
    pipeline = Pipeline(out.append, config, counters)
    source = open_captures([os.fspath(p) for p in paths], batch_size=config.batch_size)
    for batch in source:
        pipeline.feed(batch)
        if on_batch is not None:
            on_batch(batch)
        if out:
            yield from out
            out.clear()
    pipeline.finish()
    yield from out
    for warning in source.warnings:
        pipeline.counters.add("capture.warnings")
        if warnings is not None:
            warnings.append(warning)
