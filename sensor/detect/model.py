"""Window scoring: per-device robust normalisation + one isolation forest. Higher score = worse.

Why per-device normalisation rather than a forest per device group: a PACS and a CT differ by
orders of magnitude, and groups inferred from behaviour are small (often one PACS, one RIS), so a
per-group forest would be fitted on a few hundred windows while the same attack pattern (a C-FIND
sweep) looks different in every group. Normalising each device against its *own* baseline
(median and a robust scale on the registry-transformed values) turns every device into "how far
from its usual self", so one forest learns the joint shape of normal deviations from all devices'
windows, and the evidence is directly readable ("observed 2,140, typical 1, p99 12"). Devices with
too few baseline windows fall back to their role's statistics, then to global ones.

Isolation forests only split on features that vary in training; a feature that never moved in the
baseline (no device ever issued C-GET, say) would be invisible. Two summary columns — the largest
positive deviation and the sum of the three largest — carry such deviations into the forest.

Even with those columns, a forest's path length saturates and is diluted by dozens of unrelated
features: on a synthetic site a 300-queries-per-minute C-FIND sweep (11 robust sigmas above the
workstation's own p99) scored *lower* than an ordinary large retrieval. So the baseline model's
``anomaly_score`` is the larger of two higher-is-worse parts on the same normalised vector:

* the isolation forest score (unusual *combinations*), and
* a deviation score ``z / (z + deviation_ref)`` of the largest positive robust deviation (one
  feature far outside the device's range); ``deviation_ref`` = 4 robust sigmas maps to 0.5, the
  forest's "unremarkable" level.

Both go through the same calibrated threshold. The flow-only comparison model is the plain forest.

Estimator contract (STYLE 7): ``__init__`` stores parameters, ``fit`` returns ``self``, learned
state ends in ``_``, ``anomaly_score`` is higher-is-worse; the sklearn sign flip lives only in
:class:`IsolationForestAdapter`. The decision is a separate :class:`~sensor.detect.threshold.Threshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest

from sensor.features.registry import FEATURES_BY_NAME, apply_transform

SUMMARY_COLUMNS = ("z.max", "z.top3")
_MAD_TO_SIGMA = 1.4826
_Q_TO_SIGMA = 2.563  # (q90 - q10) of a normal distribution in sigmas
_Q99_TO_SIGMA = 2.326  # q99 - median of a normal distribution in sigmas


@dataclass(frozen=True, slots=True)
class Stats:
    """Per-key statistics. ``center``/``scale`` in transformed space; ``p50``/``p99`` raw."""

    center: np.ndarray
    scale: np.ndarray
    p50: np.ndarray
    p99: np.ndarray
    n: int


class DeviceNormalizer:
    """Robust per-device z-scores with role and global fallbacks.

    >>> import numpy as np
    >>> X = np.tile([[1.0, 0.0]], (40, 1)); keys = ["a"] * 40
    >>> n = DeviceNormalizer(("dimse.c_find_rq", "time.hour_sin")).fit(X, keys, ["ws"] * 40)
    >>> n.transform(np.array([[1.0, 0.0]]), ["a"], ["ws"])[0, 0]
    0.0
    """

    def __init__(self, feature_names: Sequence[str], min_windows: int = 20, scale_floor: float = 0.5,
                 clip: float = 50.0) -> None:
        self.feature_names = tuple(feature_names)
        self.min_windows = min_windows
        self.scale_floor = scale_floor
        self.clip = clip

    def _stats(self, raw: np.ndarray, t: np.ndarray) -> Stats:
        center = np.median(t, axis=0)
        mad = np.median(np.abs(t - center), axis=0) * _MAD_TO_SIGMA
        q10, q90, q99 = np.quantile(t, [0.10, 0.90, 0.99], axis=0)
        # Sparse features (zero in most windows) have MAD = IQR = 0; their p99 still says how large
        # they get when they occur, so a value at the device's own p99 is ~2.3 sigmas, not 30.
        scale = np.maximum.reduce([mad, (q90 - q10) / _Q_TO_SIGMA, (q99 - center) / _Q99_TO_SIGMA,
                                   np.full_like(mad, self.scale_floor)])
        p50, p99 = np.quantile(raw, [0.50, 0.99], axis=0)
        return Stats(center, scale, p50, p99, int(raw.shape[0]))

    def fit(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str]) -> DeviceNormalizer:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names) or not (X.shape[0] == len(keys) == len(groups)):
            raise ValueError("X must be (n_windows × n_features) with one key and group per row")
        if X.shape[0] == 0:
            raise ValueError("no baseline windows to fit")
        T = apply_transform(X, self.feature_names)
        keys_a, groups_a = np.asarray(keys), np.asarray(groups)
        self.device_stats_: dict[str, Stats] = {}
        for k in sorted(set(keys)):
            m = keys_a == k
            if m.sum() >= self.min_windows:
                self.device_stats_[k] = self._stats(X[m], T[m])
        self.group_stats_: dict[str, Stats] = {}
        for g in sorted(set(groups)):
            m = groups_a == g
            if m.sum() >= self.min_windows:
                self.group_stats_[g] = self._stats(X[m], T[m])
        self.global_stats_ = self._stats(X, T)
        # Cyclic time encodings are context, not deviations: they pass through unnormalised.
        self.passthrough_ = np.array([FEATURES_BY_NAME[n].group == "time" for n in self.feature_names])
        return self

    def stats_for(self, key: str, group: str | None) -> tuple[Stats, str]:
        """The statistics used for a device, and their level: ``device``, ``group`` or ``global``."""
        s = self.device_stats_.get(key)
        if s is not None:
            return s, "device"
        if group is not None and group in self.group_stats_:
            return self.group_stats_[group], "group"
        return self.global_stats_, "global"

    def deviations(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        """Signed robust z per feature (time features 0), clipped to ±clip."""
        T = apply_transform(np.asarray(X, dtype=np.float64), self.feature_names)
        Z = np.empty_like(T)
        for i, (k, g) in enumerate(zip(keys, groups)):
            s, _ = self.stats_for(k, g)
            Z[i] = (T[i] - s.center) / s.scale
        Z[:, self.passthrough_] = 0.0
        return np.clip(Z, -self.clip, self.clip)

    def transform(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        """Model input: deviations, raw time features, and the two summary columns."""
        Z = self.deviations(X, keys, groups)
        Z[:, self.passthrough_] = np.asarray(X, dtype=np.float64)[:, self.passthrough_]
        pos = np.where(self.passthrough_, 0.0, np.maximum(Z, 0.0))
        top = -np.sort(-pos, axis=1)[:, :3]
        return np.column_stack([Z, top[:, 0], top.sum(axis=1)])


class IdentityNormalizer:
    """The plain-forest comparison: registry transform only, no per-device view, no summaries."""

    def __init__(self, feature_names: Sequence[str]) -> None:
        self.feature_names = tuple(feature_names)

    def fit(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str]) -> IdentityNormalizer:
        X = np.asarray(X, dtype=np.float64)
        self.global_stats_ = DeviceNormalizer(self.feature_names, min_windows=1)._stats(
            X, apply_transform(X, self.feature_names))
        self.device_stats_: dict[str, Stats] = {}
        self.group_stats_: dict[str, Stats] = {}
        self.passthrough_ = np.array([FEATURES_BY_NAME[n].group == "time" for n in self.feature_names])
        return self

    def stats_for(self, key: str, group: str | None) -> tuple[Stats, str]:
        return self.global_stats_, "global"

    def deviations(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        T = apply_transform(np.asarray(X, dtype=np.float64), self.feature_names)
        s = self.global_stats_
        Z = (T - s.center) / np.maximum(s.scale, 1e-9)
        Z[:, self.passthrough_] = 0.0
        return Z

    def transform(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        return apply_transform(np.asarray(X, dtype=np.float64), self.feature_names)


class IsolationForestAdapter:
    """sklearn's IsolationForest with the sign made explicit: ``anomaly_score`` in (0, 1], higher worse.

    sklearn's ``score_samples`` returns the *opposite* of the paper's anomaly score s(x, n) =
    2^(−E[h(x)]/c(n)); this adapter flips it back, once, here. ~0.5 is unremarkable, → 1 isolated.
    """

    def __init__(self, n_estimators: int = 200, max_samples: int | str = 256, max_features: float = 1.0,
                 random_state: int = 0, n_jobs: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, Z: np.ndarray) -> IsolationForestAdapter:
        Z = np.asarray(Z, dtype=np.float64)
        max_samples = min(self.max_samples, Z.shape[0]) if isinstance(self.max_samples, int) else self.max_samples
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       max_features=self.max_features, random_state=self.random_state,
                                       n_jobs=self.n_jobs).fit(Z)
        self.n_features_in_ = Z.shape[1]
        return self

    def anomaly_score(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} model inputs, got {Z.shape[1]}")
        return -self.forest_.score_samples(Z)


class WindowModel:
    """Normaliser + forest over registry-named features; the thing ``train`` fits and ``detect`` uses.

    ``kind="baseline"``: per-device normalisation over every feature. ``kind="flow_only"``: the
    comparison — a plain isolation forest over L3/L4 + time features, no per-device view.

    >>> m = WindowModel(names, random_state=0).fit(X, keys, roles)     # doctest: +SKIP
    >>> m.anomaly_score(X_new, keys_new, roles_new)                    # doctest: +SKIP
    """

    def __init__(self, feature_names: Sequence[str], kind: str = "baseline", n_estimators: int = 200,
                 max_samples: int = 256, min_windows: int = 20, scale_floor: float = 0.5,
                 random_state: int = 0, deviation_ref: float = 4.0) -> None:
        if kind not in ("baseline", "flow_only"):
            raise ValueError(f"unknown model kind {kind!r}")
        self.feature_names = tuple(feature_names)
        self.kind = kind
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.min_windows = min_windows
        self.scale_floor = scale_floor
        self.random_state = random_state
        self.deviation_ref = deviation_ref

    def _normalizer(self):
        if self.kind == "flow_only":
            return IdentityNormalizer(self.feature_names)
        return DeviceNormalizer(self.feature_names, self.min_windows, self.scale_floor)

    def fit(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str]) -> WindowModel:
        self.normalizer_ = self._normalizer().fit(X, keys, groups)
        Z = self.normalizer_.transform(X, keys, groups)
        self.scorer_ = IsolationForestAdapter(self.n_estimators, self.max_samples,
                                              random_state=self.random_state).fit(Z)
        return self

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} features per window, got {X.shape}")
        return X

    def anomaly_score(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        """Higher = more anomalous, in (0, 1]."""
        return self.score_parts(X, keys, groups)[0]

    def score_parts(self, X: np.ndarray, keys: Sequence[str],
                    groups: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(combined, forest, deviation) scores; deviation is 0 for the flow-only model."""
        X = self._check(X)
        Z = self.normalizer_.transform(X, keys, groups)
        forest = self.scorer_.anomaly_score(Z)
        if self.kind == "flow_only":
            return forest, forest, np.zeros_like(forest)
        zmax = np.maximum(Z[:, -2], 0.0)  # SUMMARY_COLUMNS[0]: largest positive deviation
        dev = zmax / (zmax + self.deviation_ref)
        return np.maximum(forest, dev), forest, dev

    def deviations(self, X: np.ndarray, keys: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
        return self.normalizer_.deviations(self._check(X), keys, groups)
