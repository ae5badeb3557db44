"""The detection loop shared by ``radsensor detect`` and the live daemon.

``process(event)`` feeds windows; ``advance(now)`` moves the watermark (stream time: capture
time, not wall-clock) and returns alerts for windows it finished; ``flush()`` finishes everything
(end of file, shutdown). Repeats of the same cause on the same device are merged
(:class:`~sensor.alerts.schema.AlertMerger`): offline, one alert per group with its final count;
live (``live=True``), the first alert at once and count updates later.

Example::

    >>> det = Detector(ModelArtifact.load("models/baseline.rsm"))     # doctest: +SKIP
    >>> for ev in iter_events(paths):                                  # doctest: +SKIP
    ...     det.process(ev); alerts += det.advance()
    >>> alerts += det.flush()                                          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from sensor.alerts.schema import Alert, AlertMerger
from sensor.detect.artifact import ModelArtifact
from sensor.detect.scorer import Scorer
from sensor.events import Counters
from sensor.features.windows import WindowBuilder, WindowConfig, event_end_time


class Detector:
    def __init__(self, artifact: ModelArtifact, *, sensor_id: str = "", live: bool = False,
                 merge_span: float = 3600.0, lateness: float | None = None, rules: bool | None = None,
                 counters: Counters | None = None, score_batch: int | None = None) -> None:
        self.artifact = artifact
        self.counters = counters if counters is not None else Counters()
        w = artifact.window
        cfg = WindowConfig(w.span, w.lateness if lateness is None else lateness, w.tz, w.local_nets)
        seed = artifact.inventory.known_peers() if artifact.kind == "baseline" else None
        self.windows = WindowBuilder(cfg, self.counters, known_peers=seed)
        self.scorer = Scorer(artifact, sensor_id, rules)
        self.merger = AlertMerger(merge_span, live=live) if merge_span > 0 else None
        self.stream_time = -math.inf
        self.raw_alerts = 0
        # Scoring has a fixed cost per call (200 trees); offline, finished windows are scored in
        # batches. Live, every advance scores at once (one call per window span).
        self.score_batch = (1 if live else 4096) if score_batch is None else max(1, score_batch)
        self._pending: list = []

    def process(self, event: object) -> None:
        """Add one event (any order within the lateness allowance)."""
        self.windows.add(event)
        t = event_end_time(event)
        self.stream_time = max(self.stream_time, t)

    def advance(self, now: float | None = None) -> list[Alert]:
        """Finish windows older than ``now - lateness`` (default: latest event time) and score them."""
        if now is not None and now > self.stream_time:
            self.stream_time = now
        if self.stream_time == -math.inf:
            return []
        self._pending += self.windows.advance(self.stream_time)
        alerts: list[Alert] = []
        if len(self._pending) >= self.score_batch:
            alerts = self._merge(self.scorer.score(self._pending))
            self._pending = []
        if self.merger is not None and self.merger.live:
            alerts += self.merger.tick(self.stream_time)
        return alerts

    def flush(self) -> list[Alert]:
        """Finish every window and close every merge group."""
        self._pending += self.windows.flush()
        alerts = self._merge(self.scorer.score(self._pending))
        self._pending = []
        if self.merger is not None:
            alerts += self.merger.flush()
        return alerts

    def _merge(self, alerts: list[Alert]) -> list[Alert]:
        self.raw_alerts += len(alerts)
        for a in alerts:
            self.counters.add(f"alerts.{a.kind.value}")
        if self.merger is None:
            return alerts
        out: list[Alert] = []
        for a in alerts:
            out += self.merger.push(a)
        return out


def detect_events(events: Iterable[object], artifact: ModelArtifact, **kwargs) -> Iterator[Alert]:
    """Batch helper: every alert for an event stream, via the same :class:`Detector`."""
    det = Detector(artifact, **kwargs)
    for ev in events:
        det.process(ev)
        yield from det.advance()
    yield from det.flush()


__all__ = ["Detector", "WindowConfig", "detect_events"]
