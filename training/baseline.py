"""Fit a baseline model from captures (or event streams): windows → inventory → model → threshold.

Pipeline per capture (in parallel worker processes, joblib): decode events, build device windows
(the very :class:`~sensor.features.windows.WindowBuilder` detection uses), keep only the feature
matrix (float32, registry order) and a partial inventory. Events are never held: memory per
worker is the open windows, and the result is ~250 bytes per device-window (a 30-device site is
~10 MB per captured day). Per device at most ``max_windows_per_device`` rows are kept (uniform
random subsample, seeded) so many-GB baselines stay bounded.

Threshold calibration uses *out-of-fold* scores: windows are split by alternating hours into two
folds, each fold is scored by a model fitted on the other, and the threshold is set on those
scores for the target false-alert rate. In-sample scores would be optimistic (the forest has seen
those windows). The final model is then fitted on everything.

Captures are processed independently (each one's windows are flushed at its end); give captures
that do not overlap in time, or overlap only in disjoint devices.

Example::

    >>> art, report = train(["pcaps/normal-day1.pcap.gz"], TrainConfig())   # doctest: +SKIP
    >>> art.save("models/baseline.rsm")                                     # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from joblib import Parallel, delayed

from sensor.detect.artifact import ModelArtifact
from sensor.detect.inventory import Inventory
from sensor.detect.model import WindowModel
from sensor.detect.rates import SERIES, Capture, RateModel
from sensor.detect.threshold import Threshold
from sensor.events import Counters
from sensor.features.registry import FEATURE_NAMES, FLOW_FEATURE_NAMES, feature_vector
from sensor.features.windows import WindowBuilder, WindowConfig, event_end_time

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
MIN_FOLD_ROWS = 200


@dataclass(frozen=True, slots=True)
class TrainConfig:
    window: WindowConfig = field(default_factory=WindowConfig)
    per_device_day: float = 1.0  # target false alerts per device per day
    safety: float = 0.5
    kind: str = "baseline"  # or "flow_only" (the comparison model)
    n_estimators: int = 200
    max_samples: int = 256
    min_windows: int = 20
    random_state: int = 0
    n_jobs: int = 2
    max_windows_per_device: int = 50_000
    rate_share: float = 0.1  # share of the false-alert budget given to the rate-shift detector


@dataclass(slots=True)
class CaptureWindows:
    """What one capture contributes: a feature matrix and a partial inventory."""

    name: str
    keys: list[str]
    starts: np.ndarray  # float64 window starts
    X: np.ndarray  # float32 (rows × features), registry order
    inventory: Inventory
    counters: dict[str, int]
    t0: float | None = None
    t1: float | None = None


def expand_captures(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given; directories → their capture files (sorted, recursive)."""
    out: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(CAPTURE_SUFFIXES)]
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such capture file or directory")
    return out


def windows_from_events(events: Iterable[object], window: WindowConfig, name: str = "events") -> CaptureWindows:
    """Window one event stream (stream time = latest event end) into a :class:`CaptureWindows`."""
    counters = Counters()
    builder = WindowBuilder(window, counters)
    inv = Inventory()
    keys: list[str] = []
    starts: list[float] = []
    rows: list[np.ndarray] = []
    t0 = t1 = None

    def take(ws) -> None:
        for w in ws:
            inv.update(w)
            keys.append(w.ip)
            starts.append(w.start)
            rows.append(feature_vector(w.features).astype(np.float32))

    for ev in events:
        builder.add(ev)
        t = event_end_time(ev)
        t0 = t if t0 is None or t < t0 else t0
        t1 = t if t1 is None or t > t1 else t1
        take(builder.advance(t))
    take(builder.flush())
    X = np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return CaptureWindows(name, keys, np.asarray(starts, dtype=np.float64), X, inv, dict(counters.values), t0, t1)


def windows_from_capture(path: str, window: WindowConfig) -> CaptureWindows:
    """Worker: decode one capture file and window it. Only small results cross the process boundary."""
    from sensor.pipeline import iter_events  # imported in the worker; the lead's decoding pipeline

    counters = Counters()
    cw = windows_from_events(iter_events([path], counters=counters), window, os.path.basename(path))
    for k, v in counters.values.items():
        if not k.startswith("_"):
            cw.counters[k] = cw.counters.get(k, 0) + v
    return cw


def _local_days(starts: np.ndarray, tz: str) -> np.ndarray:
    """Local date (ordinal) of each window start."""
    z = ZoneInfo(tz)
    cache: dict[int, int] = {}
    out = np.empty(len(starts), dtype=np.int64)
    for i, s in enumerate(starts):
        q = int(s // 900)
        d = cache.get(q)
        if d is None:  # local midnight falls on a quarter hour in every zone in use
            d = cache[q] = datetime.fromtimestamp(float(s), tz=UTC).astimezone(z).toordinal()
        out[i] = d
    return out



def _cap_rows(keys: list[str], X: np.ndarray, starts: np.ndarray, cap: int, seed: int):
    keys_a = np.asarray(keys)
    keep = np.ones(len(keys), dtype=bool)
    rng = np.random.default_rng(seed)
    for k in sorted(set(keys)):
        idx = np.flatnonzero(keys_a == k)
        if idx.size > cap:
            drop = rng.choice(idx, idx.size - cap, replace=False)
            keep[drop] = False
    return [k for k, m in zip(keys, keep) if m], X[keep], starts[keep], int((~keep).sum())


def _fit_rates(parts: Sequence[CaptureWindows], config: TrainConfig) -> RateModel:
    """The rate-shift detector sees every window (before the per-device subsample)."""
    cols = {s.name: [FEATURE_NAMES.index(f) for f in s.features] for s in SERIES}
    caps = [Capture(p.keys, p.starts, {n: p.X[:, c].sum(axis=1).astype(np.float64) for n, c in cols.items()},
                    p.t0, p.t1) for p in parts]
    return RateModel.fit(caps, config.window.span, config.window.tz, config.rate_share * config.per_device_day)


def fit(parts: Sequence[CaptureWindows], config: TrainConfig = TrainConfig(),
        sources: Sequence[str] = ()) -> tuple[ModelArtifact, dict[str, Any]]:
    """Fit model, threshold and inventory from windowed captures; return (artifact, report)."""
    t_start = time.monotonic()
    inventory = Inventory()
    for p in parts:
        inventory.merge(p.inventory)
    inventory.finalize()
    keys = [k for p in parts for k in p.keys]
    rates = _fit_rates(parts, config) if config.kind == "baseline" and keys else None
    if not keys:
        raise ValueError("the baseline produced no device windows (empty or undecodable captures?)")
    X = np.concatenate([p.X for p in parts]).astype(np.float64)
    starts = np.concatenate([p.starts for p in parts])
    keys, X, starts, dropped = _cap_rows(keys, X, starts, config.max_windows_per_device, config.random_state)
    names = FEATURE_NAMES if config.kind == "baseline" else FLOW_FEATURE_NAMES
    if config.kind != "baseline":
        cols = [FEATURE_NAMES.index(n) for n in names]
        X = X[:, cols]
    groups = [inventory.devices[k].role for k in keys]

    def new_model() -> WindowModel:
        return WindowModel(names, config.kind, config.n_estimators, config.max_samples, config.min_windows,
                           random_state=config.random_state)

    # Out-of-fold scores for calibration (alternating hours → both folds see day and night).
    fold = (np.floor(starts / 3600.0).astype(np.int64) % 2).astype(bool)
    method = "out_of_fold"
    if fold.sum() >= MIN_FOLD_ROWS and (~fold).sum() >= MIN_FOLD_ROWS:
        scores = np.empty(len(keys))
        for f in (True, False):
            tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            m = new_model().fit(X[tr], [keys[i] for i in tr], [groups[i] for i in tr])
            scores[te] = m.anomaly_score(X[te], [keys[i] for i in te], [groups[i] for i in te])
    else:
        method = "in_sample"
        scores = None
    model = new_model().fit(X, keys, groups)
    if scores is None:
        scores = model.anomaly_score(X, keys, groups)
    day = _local_days(starts, config.window.tz)
    device_day_pairs = set(zip(keys, day.tolist()))
    device_days = float(len(device_day_pairs))
    per_day: dict[int, int] = {}
    for _, d in device_day_pairs:
        per_day[d] = per_day.get(d, 0) + 1
    threshold = Threshold.calibrate(scores, device_days, config.per_device_day, config.safety, method=method,
                                    days=day, devices_per_day=per_day)
    t0 = min((p.t0 for p in parts if p.t0 is not None), default=None)
    t1 = max((p.t1 for p in parts if p.t1 is not None), default=None)
    counters: dict[str, int] = {}
    for p in parts:
        for k, v in p.counters.items():
            counters[k] = counters.get(k, 0) + v
    metadata = {
        "captures": [os.path.basename(os.fspath(s)) for s in sources] or [p.name for p in parts],
        "windows": len(keys), "windows_dropped_by_cap": dropped, "devices": len(set(keys)),
        "device_days": device_days,
        "time_start": datetime.fromtimestamp(t0, tz=UTC).isoformat() if t0 is not None else None,
        "time_end": datetime.fromtimestamp(t1, tz=UTC).isoformat() if t1 is not None else None,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": counters.get("windows.events", 0),
        "late_events": counters.get("windows.late_events", 0),
        "fpr_target_per_device_day": config.per_device_day,
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.99", "0.999")},
    }
    if rates is not None:
        metadata["rates"] = rates.meta
    artifact = ModelArtifact(model, threshold, inventory, config.window, metadata, rates)
    report = dict(metadata)
    report.update({
        "kind": config.kind, "threshold": threshold.value, "calibration": threshold.method,
        "expected_alerts_per_device_day": threshold.expected_per_device_day,
        "rates": rates.summary() if rates is not None else None,
        "inventory": inventory.summary(), "fit_seconds": round(time.monotonic() - t_start, 2),
        "devices_detail": [(d.ip, d.role, sorted(d.ae_titles), d.windows)
                           for _, d in sorted(inventory.devices.items())],
    })
    return artifact, report


def train(paths: Sequence[str | os.PathLike], config: TrainConfig = TrainConfig(),
          on_capture: Callable[[CaptureWindows, int], None] | None = None) -> tuple[ModelArtifact, dict[str, Any]]:
    """Decode and window captures in parallel, then :func:`fit`. ``on_capture(result, file_bytes)``
    is called as each capture finishes (progress)."""
    files = expand_captures(paths)
    if not files:
        raise FileNotFoundError("no capture files found")
    sizes = {f: os.path.getsize(f) for f in files}
    parts: list[CaptureWindows] = []
    jobs = (delayed(windows_from_capture)(f, config.window) for f in files)
    n_jobs = max(1, min(config.n_jobs, len(files)))
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs) if n_jobs > 1 else (
        windows_from_capture(f, config.window) for f in files)
    for f, cw in zip(files, results):
        parts.append(cw)
        if on_capture is not None:
            on_capture(cw, sizes[f])
    return fit(parts, config, files)
