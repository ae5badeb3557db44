"""Capture workers: where packets become events. One in-process, or N processes on PACKET_FANOUT.

The run loop (:mod:`sensor.daemon.service`) does not touch packets. It asks its workers for
*events*, which are a thousand times fewer, and feeds them to the detector. A worker owns the
capture handles and a :class:`~sensor.pipeline.Pipeline` (decode → flows → analyzers), so flow
state lives with the handle that sees the flow.

- :class:`InlineWorker` runs in the daemon's own process (the default, ``workers = 1``).
- :class:`ProcessWorker` runs the same ``InlineWorker`` in a child process and ships its events
  and statistics back over a pipe (``--workers N``). The N handles join one PACKET_FANOUT group
  with hashing, which the kernel computes symmetrically, so both directions of a flow reach the same
  worker; windows are built per device in the parent from the merged event stream, so a device
  whose flows are spread over workers still gets one window.

Every worker has the same surface: ``fileno()`` (readable when it has work), ``pump(budget)``,
``tick(now)``, ``set_filter``, ``set_flows``, ``stats()``, ``finish()``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import select
import signal
import time
from dataclasses import dataclass, field

from sensor.capture.live import CaptureStats, LiveOptions, LiveSource
from sensor.events import Counters, Event
from sensor.flows.table import FlowConfig
from sensor.pipeline import Pipeline, PipelineConfig

log = logging.getLogger("radsensor.worker")


@dataclass(slots=True)
class WorkerStats:
    """A worker's numbers; plain data so it can cross a process pipe."""

    packets: dict[str, int] = field(default_factory=dict)  # per interface
    bytes: dict[str, int] = field(default_factory=dict)
    capture: dict[str, CaptureStats] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # pipeline counters (decode.*, flows.*…)
    active_flows: int = 0
    last_packet_ts: float = 0.0


class InlineWorker:
    """Capture + pipeline in this process. ``open()`` needs root (or CAP_NET_RAW)."""

    def __init__(self, interfaces: tuple[str, ...], options: LiveOptions, flows: FlowConfig,
                 batch_size: int = 4096) -> None:
        self.source = LiveSource(list(interfaces), options)
        self._events: list[Event] = []
        self.pipeline = Pipeline(self._events.append, PipelineConfig(flows=flows, batch_size=batch_size),
                                 Counters())
        self._packets = dict.fromkeys(interfaces, 0)
        self._bytes = dict.fromkeys(interfaces, 0)
        self.last_packet_ts = 0.0

    def open(self) -> InlineWorker:
        self.source.open()
        return self

    def fds(self) -> list[int]:
        return self.source.fds()

    def pump(self, budget: int, ready: set[int] | None = None) -> list[Event]:
        """Read what the rings hold (at most ``budget`` packets each), run it through the pipeline."""
        fds = set(self.source.fds()) if ready is None else ready
        for batch in self.source.read_ready(fds, budget):
            self.pipeline.feed(batch)
            self._packets[batch.source] += len(batch.frames)
            self._bytes[batch.source] += sum(batch.wirelen)
            self.last_packet_ts = batch.ts[-1]
        return self._take()

    def tick(self, now: float) -> list[Event]:
        """Let the flow table's clock move on a quiet link (idle timeouts)."""
        self.pipeline.advance(now)
        return self._take()

    def set_filter(self, bpf: str) -> None:
        self.source.set_filter(bpf)

    def set_flows(self, flows: FlowConfig) -> None:
        # The table reads its config on every sweep; swapping it keeps every open flow.
        self.pipeline.flows.config = flows

    def stats(self) -> WorkerStats:
        return WorkerStats(dict(self._packets), dict(self._bytes), self.source.stats(),
                           dict(self.pipeline.counters.values), len(self.pipeline.flows.flows),
                           self.last_packet_ts)

    def finish(self, drain: bool = True) -> list[Event]:
        """Stop capturing: read what is already in the rings, close them, end every open flow."""
        if drain:
            for _ in range(64):  # bounded: a flooded link must not keep us from stopping
                before = sum(self._packets.values())
                self.pump(1 << 16)
                if sum(self._packets.values()) == before:
                    break
        self.source.close()  # keeps the final counters readable through stats()
        self.pipeline.finish()
        return self._take()

    def _take(self) -> list[Event]:
        if not self._events:
            return []
        out = self._events[:]
        self._events.clear()
        return out


# ------------------------------------------------------------------------------ process workers

_STATS_EVERY = 0.5  # seconds between a child's statistics messages


def _child_main(worker: InlineWorker, conn, budget: int, timeout: float) -> None:
    """The child's loop: capture → pipeline → events up the pipe; commands down it."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides when we stop
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    next_stats = 0.0
    cfd = conn.fileno()
    running = True
    try:
        while running:
            ready, _, _ = select.select([*worker.fds(), cfd], [], [], timeout)
            now = time.time()
            events = worker.pump(budget, set(ready) - {cfd})
            if cfd in ready:
                while conn.poll():
                    cmd, arg = conn.recv()
                    if cmd == "filter":
                        worker.set_filter(arg)
                    elif cmd == "flows":
                        worker.set_flows(arg)
                    elif cmd == "stop":
                        running = False
                        break
            if now >= next_stats:
                events += worker.tick(now)
                conn.send(("stats", worker.stats()))
                next_stats = now + _STATS_EVERY
            if events:
                conn.send(("events", events))
        conn.send(("events", worker.finish()))
        conn.send(("stats", worker.stats()))
        conn.send(("done", None))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone: nothing to report to
    finally:
        conn.close()


class ProcessWorker:
    """One fanout member in a child process; looks like an :class:`InlineWorker` to the loop.

    The capture handle is opened in the parent (root, before the privilege drop) and inherited by
    the forked child, which never needs privileges.
    """

    def __init__(self, worker: InlineWorker, budget: int, timeout: float) -> None:
        self._inline = worker
        ctx = multiprocessing.get_context("fork")  # the open pcap handle must be inherited
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, args=(worker, child, budget, timeout), daemon=True,
                                 name="radsensor-capture")
        self._child_conn = child
        self._stats = WorkerStats()
        self._done = False

    def open(self) -> ProcessWorker:
        self._inline.open()
        return self

    def start(self) -> None:
        self._proc.start()
        self._child_conn.close()
        # The parent keeps its copy of the handle open but never reads it: closing it here would
        # unmap a ring the child still uses (same socket, separate mappings — harmless, but the
        # libpcap close also undoes promiscuous mode on some kernels).

    def fds(self) -> list[int]:
        return [] if self._done else [self._conn.fileno()]

    def pump(self, budget: int, ready: set[int] | None = None) -> list[Event]:
        events: list[Event] = []
        try:
            while not self._done and self._conn.poll():
                kind, payload = self._conn.recv()
                if kind == "events":
                    events.extend(payload)
                elif kind == "stats":
                    self._stats = payload
                elif kind == "done":
                    self._done = True
        except (EOFError, OSError):
            if not self._done:
                log.error("capture worker %s ended unexpectedly (exit code %s)", self._proc.pid,
                          self._proc.exitcode)
            self._done = True
        return events

    def tick(self, now: float) -> list[Event]:
        return []  # the child advances its own clock

    def set_filter(self, bpf: str) -> None:
        self._send(("filter", bpf))

    def set_flows(self, flows: FlowConfig) -> None:
        self._send(("flows", flows))

    def stats(self) -> WorkerStats:
        return self._stats

    @property
    def alive(self) -> bool:
        return not self._done

    def finish(self, drain: bool = True, timeout: float = 10.0) -> list[Event]:
        self._send(("stop", None))
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while not self._done and time.monotonic() < deadline:
            if self._conn.poll(0.1):
                events += self.pump(0)
        self._proc.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        if self._proc.is_alive():
            log.error("capture worker %s did not stop; killing it", self._proc.pid)
            self._proc.kill()
            self._proc.join(1.0)
        self._inline.source.close()
        self._conn.close()
        return events

    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except (OSError, EOFError):
            pass


def make_workers(interfaces: tuple[str, ...], options: LiveOptions, flows: FlowConfig, batch_size: int,
                 workers: int) -> list:
    """One inline worker, or ``workers`` fanout children on a single interface (not yet started)."""
    if workers <= 1:
        return [InlineWorker(interfaces, options, flows, batch_size)]
    # A group id unique to this daemon: two sensors on one host must not share a fanout group.
    group = os.getpid() & 0xFFFF
    fan = dataclasses.replace(options, fanout_group=group)
    timeout = max(0.05, options.timeout_ms / 1000.0)
    return [ProcessWorker(InlineWorker(interfaces, fan, flows, batch_size), batch_size * 4, timeout)
            for _ in range(workers)]
