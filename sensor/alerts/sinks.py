"""Alert sinks: stdout, JSONL file with rotation, syslog (UDP/TCP/TLS) with an on-disk spool.

Every sink has the same interface: ``submit(alert)``, ``flush(timeout) -> bool``, ``close()``,
``stats() -> dict`` with the keys of :data:`STAT_KEYS`. ``submit`` never raises for delivery
problems (they are counted) and never waits on the network.

:class:`SyslogSink` delivery model
----------------------------------
``submit`` renders the message (payload + RFC 5424 header) in the caller's thread and appends it
to a bounded in-memory queue. A background sender thread moves the queue into the on-disk
:class:`~sensor.alerts.spool.Spool` (one transaction per batch) and delivers from the spool, oldest
first, in batches. If the in-memory queue is full (sender stuck in a connect/TLS handshake), the
caller moves the queue into the spool itself — a short local SQLite write, still never network.
Both moves hold one lock, so spool order is submit order.

A batch leaves the spool only after ``sendall`` returned and the transport confirmed it (TCP/TLS,
below) or every datagram was handed to the kernel (UDP). Failures → reconnect with exponential backoff and jitter; the batch is resent
from the spool, so order is kept across outages and restarts (the spool directory persists).

Exactly once vs. at least once. TCP acknowledges bytes to the receiver's kernel, not to the
receiving program, so "sendall returned" alone loses whatever a stopping receiver had not read.
The transport closes most of that gap with what Linux does tell us (see
:class:`~sensor.alerts.syslog.TcpTransport`): before a batch, ``peer_closed()`` reconnects if the
receiver has closed; after a batch, ``confirm(confirm_wait)`` waits until the peer's TCP has
ACKed every byte and then ``confirm_wait`` seconds for a RST (a socket closed with unread data
resets). RST → the batch is resent on a new connection; clean FIN or silence → the batch leaves
the spool. Batches are sent stop-and-wait (≤ ``batch_size`` alerts / ``batch_bytes``, one
confirmation each), so at most one batch is ever unconfirmed: throughput is bounded by
``batch_size / confirm_wait`` (1,000 alerts/s by default — far above any alert rate).

Residual risks, documented rather than hidden: (1) a receiver that stops reading but keeps the
connection open longer than ``confirm_wait`` before dropping it (hung, or a very slow shutdown)
loses the batches confirmed meanwhile (at-most-once for that window); (2) a receiver that had read
*part* of a batch before resetting gets that part twice (at-least-once; batches are capped at
32 KiB so one receiver read usually takes a whole batch); (3) a crash of this process between
``sendall`` and the spool update resends that batch after restart; (4) UDP has no feedback at
all. Duplicates are byte-identical messages (same ``id`` and ``count`` in the structured data), so
a SIEM can dedupe on (id, count); RELP (rsyslog's Reliable Event Logging Protocol, imrelp) would be
needed for true application-level acknowledgements.

Live merging (:class:`~sensor.alerts.schema.AlertMerger` with ``live=True``) emits an update with
the same ``id`` and a higher ``count``; sinks deliver such updates as ordinary alerts.
"""

from __future__ import annotations

import collections
import io
import os
import random
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from sensor.alerts.formats import get_formatter
from sensor.alerts.schema import Alert
from sensor.alerts.spool import Spool
from sensor.alerts.syslog import Facility, TcpTransport, TlsTransport, UdpTransport, build_message

# submitted/delivered: alerts; failed: failed delivery attempts (connect/send/confirm), retries:
# attempts made after a failure; spooled: alerts waiting on disk now; spool_dropped: alerts lost to
# spool overflow; queue_depth: alerts in memory not yet on disk. Syslog over UDP adds "truncated".
STAT_KEYS = ("submitted", "delivered", "failed", "retries", "spooled", "spool_dropped", "queue_depth")


class Sink(ABC):
    """Common sink interface."""

    name: str = "sink"

    @abstractmethod
    def submit(self, alert: Alert) -> None:
        """Hand over one alert. Never blocks on the destination; never raises for delivery errors."""

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` s for everything submitted to be delivered; True when it was."""
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded by ``timeout``) and release resources. Undelivered alerts stay spooled."""

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: ``submitted delivered failed retries spooled spool_dropped queue_depth``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _zero_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KEYS, 0)


# ---------------------------------------------------------------------------------------- local


class StdoutSink(Sink):
    """One line per alert to a text stream (default ``sys.stdout``); ``fmt``: text, json, cef, leef, ecs."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None, fmt: str = "text") -> None:
        self._stream = stream
        self._format = get_formatter(fmt)
        self._stats = _zero_stats()
        self._lock = threading.Lock()

    def submit(self, alert: Alert) -> None:
        line = self._format(alert) + "\n"
        with self._lock:
            self._stats["submitted"] += 1
            try:
                stream = self._stream or sys.stdout
                stream.write(line)
                stream.flush()
                self._stats["delivered"] += 1
            except (OSError, ValueError):
                self._stats["failed"] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)


class JsonlFileSink(Sink):
    """Alerts appended to a file, one per line, rotated by size.

    When a write would take the file past ``max_bytes``, ``path`` becomes ``path.1`` (``path.1`` →
    ``path.2`` …) and at most ``keep`` rotated files are kept. ``fmt`` defaults to the schema JSON;
    ``ecs`` writes ECS documents instead.
    """

    name = "jsonl"

    def __init__(
        self, path: str | Path, *, max_bytes: int = 100 * 1024 * 1024, keep: int = 5, fmt: str = "json"
    ):
        if keep < 0 or max_bytes < 1:
            raise ValueError("keep must be >= 0 and max_bytes >= 1")
        self.path = Path(path)
        self.max_bytes, self.keep = max_bytes, keep
        self._format = get_formatter(fmt)
        self._stats = _zero_stats()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: io.BufferedWriter | None = None
        self.rotations = 0

    def _open(self) -> io.BufferedWriter:
        if self._fh is None:
            self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across submits
        return self._fh

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1

    def submit(self, alert: Alert) -> None:
        data = (self._format(alert) + "\n").encode("utf-8")
        with self._lock:
            self._stats["submitted"] += 1
            try:
                fh = self._open()
                size = fh.tell()
                if size > 0 and size + len(data) > self.max_bytes:
                    self._rotate()
                    fh = self._open()
                fh.write(data)
                fh.flush()  # a line is whole on disk when submit returns (tail -f, crash)
                self._stats["delivered"] += 1
            except OSError:
                self._stats["failed"] += 1

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)


# ---------------------------------------------------------------------------------------- syslog

Transport = UdpTransport | TcpTransport | TlsTransport


class SyslogSink(Sink):
    """RFC 5424 syslog delivery (payload ``cef``, ``leef``, ``json`` or ``ecs``) through a spool.

    See the module docstring for the delivery model. ``spool_dir`` should be persistent
    (e.g. ``/var/spool/radsensor/<sink>``): pending alerts are delivered after a restart.
    """

    def __init__(
        self,
        transport: Transport,
        spool_dir: str | Path,
        *,
        fmt: str = "cef",
        facility: int = Facility.LOCAL4,
        hostname: str | None = None,
        app_name: str = "radsensor",
        queue_size: int = 1000,
        spool_max_records: int = 100_000,
        spool_max_bytes: int = 64 * 1024 * 1024,
        overflow: str = "drop_oldest",
        batch_size: int = 100,
        batch_bytes: int = 32 * 1024,
        confirm_wait: float = 0.1,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        name: str | None = None,
        render: Callable[[Alert], bytes] | None = None,
    ) -> None:
        self.transport = transport
        self.name = name or f"syslog-{transport.name}"
        self._payload = get_formatter(fmt)
        self._facility, self._hostname, self._app = facility, hostname, app_name
        self._render = render or self._render_default
        self.queue_size, self.batch_size, self.batch_bytes = queue_size, batch_size, batch_bytes
        self.confirm_wait = confirm_wait
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.spool = Spool(
            spool_dir, max_records=spool_max_records, max_bytes=spool_max_bytes, overflow=overflow
        )
        self._queue: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()  # guards _queue and queue→spool moves (keeps order)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._counts = {"submitted": 0, "delivered": 0, "failed": 0, "retries": 0}
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"radsensor-{self.name}", daemon=True)
        self._thread.start()

    def _render_default(self, alert: Alert) -> bytes:
        return build_message(
            alert, self._payload(alert), facility=self._facility, hostname=self._hostname, app_name=self._app
        )

    # -- caller side
    def submit(self, alert: Alert) -> None:
        msg = self._render(alert)
        with self._lock:
            self._counts["submitted"] += 1
            self._queue.append(msg)
            if len(self._queue) > self.queue_size:
                self._spill_locked()  # sender is busy: local disk write, never network
        self._idle.clear()
        self._wake.set()

    def _spill_locked(self) -> None:
        if self._queue:
            items = list(self._queue)
            self._queue.clear()
            self.spool.put_many(items)

    def _spill(self) -> None:
        with self._lock:
            self._spill_locked()

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and len(self.spool) == 0:
                    return True
            self._wake.set()
            self._idle.wait(min(0.02, max(0.0, deadline - time.monotonic())))
        with self._lock:
            return not self._queue and len(self.spool) == 0

    def close(self, timeout: float = 5.0) -> None:
        if self._stop.is_set():
            return
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, self.transport_timeout() + 1.0))
        self._spill()  # whatever is still in memory goes to disk for the next start
        self.transport.close()
        self.spool.close()

    def transport_timeout(self) -> float:
        return float(getattr(self.transport, "timeout", 1.0))

    def stats(self) -> dict[str, int]:
        with self._lock:
            d = dict(self._counts)
            d["queue_depth"] = len(self._queue)
        d["spooled"] = len(self.spool)
        d["spool_dropped"] = self.spool.dropped
        truncated = getattr(self.transport, "truncated", None)
        if truncated is not None:
            d["truncated"] = truncated
        return d

    # -- sender thread
    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * (2 ** min(failures - 1, 30)))
        return base * random.uniform(0.5, 1.0)  # "equal jitter": spread reconnect storms

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                failures = self._step(failures)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive surprises (disk full, …)
                failures += 1
                self._counts["failed"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._stop.wait(self._backoff(failures))

    def _step(self, failures: int) -> int:
        """One delivery attempt of the oldest batch; returns the new consecutive-failure count."""
        self._wake.clear()  # before looking: a submit from now on wakes the next wait
        self._spill()
        batch = self.spool.peek(self.batch_size)
        if not batch:
            self._idle.set()
            self._wake.wait(0.5)
            return failures
        batch = _cap_bytes(batch, self.batch_bytes)
        if failures:
            self._counts["retries"] += 1
        try:
            if not self.transport.connected or self.transport.peer_closed():
                self.transport.connect()
            self.transport.send([m for _, m in batch])
            still_open = self.transport.confirm(self.confirm_wait)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.spool.release()
            self.transport.close()
            self._counts["failed"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            self._stop.wait(self._backoff(failures + 1))
            return failures + 1
        self.spool.ack(batch[-1][0])
        self._counts["delivered"] += len(batch)
        if not still_open:
            self.transport.close()  # receiver closed cleanly after reading: reconnect next time
        return 0


def _cap_bytes(batch: list[tuple[int, bytes]], limit: int) -> list[tuple[int, bytes]]:
    # Keep a batch within one receiver read, so a RST leaves it wholly unread or wholly read.
    total = 0
    for i, (_, m) in enumerate(batch):
        total += len(m) + 8
        if total > limit and i > 0:
            return batch[:i]
    return batch


# ---------------------------------------------------------------------------------------- fan-out


class MultiSink(Sink):
    """Fans every alert out to several sinks; one failing sink never stops the others."""

    name = "multi"

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)
        self.errors = 0

    def submit(self, alert: Alert) -> None:
        for s in self.sinks:
            try:
                s.submit(alert)
            except Exception:  # noqa: BLE001 - a sink bug must not cost the other sinks their alert
                self.errors += 1

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        ok = True
        for s in self.sinks:
            ok = s.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        for s in self.sinks:
            s.close(0.0)

    def stats(self) -> dict[str, int]:
        total = _zero_stats()
        for s in self.sinks:
            for k, v in s.stats().items():
                if k in total:
                    total[k] += v
        return total

    def stats_by_sink(self) -> dict[str, dict[str, Any]]:
        return {f"{i}:{s.name}": s.stats() for i, s in enumerate(self.sinks)}
