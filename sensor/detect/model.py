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
    >>> float(n.transform(np.array([[1.0, 0.0]]), ["a"], ["ws"])[0, 0])
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


class NumpyForest:
    """A fitted isolation forest as flat NumPy arrays, scored without scikit-learn.

    Why: importing sklearn (+scipy) costs ~200 MB RSS and ~1 s, more than the whole sensor; the
    scoring walk of an isolation forest is a few array lookups. All trees live in one node table
    (``left``/``right`` are global node indices, leaves point to themselves), so scoring walks every
    (tree, row) pair one level per step: ``max_depth`` vector steps instead of a Python loop per row.

    Mirrors ``IsolationForest.score_samples`` (sklearn ≥ 1.3) exactly: inputs are cast to float32
    (sklearn validates with ``dtype=np.float32``), a NaN follows ``missing_go_to_left``, otherwise
    ``x <= threshold`` goes left; per tree the leaf adds ``depth + c(n_node_samples) - 1`` (``leaf``),
    summed over trees in order, and the score is ``2 ** (-sum / (n_trees * c(max_samples)))``.
    Feature indices are already mapped through ``estimators_features_`` when trees saw a subset.

    >>> f = NumpyForest.from_arrays(NumpyForest.stump())      # one split on feature 0 at 0.5
    >>> f.anomaly_score(np.array([[0.0], [1.0], [np.nan]])).tolist()
    [0.5, 0.5, 0.5]
    """

    ARRAYS = ("children_left", "children_right", "feature", "threshold", "missing_go_to_left", "leaf",
              "tree_offsets", "meta")
    _CHUNK_ROWS = 512  # (trees × rows) index arrays of ~0.8 MB stay in cache; bounds memory too

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> NumpyForest:
        """Build from the stored arrays (tree-local child indices, sklearn's -1 for leaves); checks shapes."""
        self = cls()
        offsets = np.asarray(a["tree_offsets"], dtype=np.int64)
        left = np.asarray(a["children_left"], dtype=np.int64)
        right = np.asarray(a["children_right"], dtype=np.int64)
        feature = np.asarray(a["feature"], dtype=np.int64)
        n_nodes = offsets[-1] if offsets.size else 0
        meta = np.asarray(a["meta"], dtype=np.float64)
        if (offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0)
                or meta.shape != (4,)
                or any(np.asarray(a[k]).shape != (n_nodes,) for k in cls.ARRAYS[:6])):
            raise ValueError("inconsistent forest arrays")
        self.n_features_in_ = int(meta[0])
        self.max_samples_ = int(meta[1])
        self.c_max_samples_ = float(meta[2])  # sklearn's own c(max_samples), stored at export
        self.offset_ = float(meta[3])
        self.n_trees_ = offsets.size - 1
        tree_of = np.repeat(np.arange(self.n_trees_), np.diff(offsets))
        is_leaf = left == -1
        if np.any(is_leaf != (right == -1)) or np.any(feature[~is_leaf] < 0) or \
                np.any(feature[~is_leaf] >= self.n_features_in_):
            raise ValueError("inconsistent forest arrays")
        base = offsets[tree_of]
        nodes = np.arange(n_nodes)
        self.left_ = np.where(is_leaf, nodes, left + base)
        self.right_ = np.where(is_leaf, nodes, right + base)
        # A tree: children inside their own tree, after their parent (sklearn's node order), and
        # every node the child of at most one parent, so the walk below always ends.
        kids = np.concatenate([self.left_[~is_leaf], self.right_[~is_leaf]])
        if (np.any(self.left_ >= offsets[tree_of + 1]) or np.any(self.right_ >= offsets[tree_of + 1])
                or np.any(self.left_[~is_leaf] <= nodes[~is_leaf]) or np.any(self.right_[~is_leaf] <= nodes[~is_leaf])
                or np.any(np.bincount(kids, minlength=n_nodes) > 1)):
            raise ValueError("inconsistent forest arrays")
        self.feature_ = np.where(is_leaf, 0, feature).astype(np.intp)
        # child_[2 * node + go_right]: one gather per level instead of two and a select
        self.child_ = np.column_stack([self.left_, self.right_]).astype(np.intp).ravel()
        self.threshold_ = np.asarray(a["threshold"], dtype=np.float64)
        self.nan_left_ = np.asarray(a["missing_go_to_left"], dtype=bool)
        self.leaf_ = np.asarray(a["leaf"], dtype=np.float64)
        self.roots_ = offsets[:-1].astype(np.intp)
        # Longest root-to-leaf path, so the walk knows when every pair has reached a leaf.
        level, self.max_depth_ = self.roots_, 0
        while True:
            level = level[~is_leaf[level]]
            if level.size == 0:
                break
            self.max_depth_ += 1
            level = np.concatenate([self.left_[level], self.right_[level]])
        self.arrays_ = {k: np.asarray(a[k]) for k in cls.ARRAYS}
        return self

    @staticmethod
    def from_sklearn(forest) -> dict[str, np.ndarray]:
        """Export a fitted ``sklearn.ensemble.IsolationForest`` (training side only) to plain arrays."""
        from sklearn.ensemble._iforest import _average_path_length  # only ever called where sklearn is loaded

        subset = forest._max_features != forest.n_features_in_  # the condition score_samples uses
        parts: dict[str, list[np.ndarray]] = {k: [] for k in NumpyForest.ARRAYS[:6]}
        sizes = []
        for t, (est, feats) in enumerate(zip(forest.estimators_, forest.estimators_features_)):
            tree = est.tree_
            feat = tree.feature.astype(np.int64)
            if subset:
                feat = np.where(tree.children_left == -1, feat, np.asarray(feats)[np.maximum(feat, 0)])
            parts["children_left"].append(tree.children_left.astype(np.int64))
            parts["children_right"].append(tree.children_right.astype(np.int64))
            parts["feature"].append(feat)
            parts["threshold"].append(tree.threshold.astype(np.float64))
            parts["missing_go_to_left"].append(np.asarray(tree.missing_go_to_left, dtype=bool))
            # Same expression and order as sklearn's _parallel_compute_tree_depths.
            parts["leaf"].append(forest._decision_path_lengths[t] + forest._average_path_length_per_tree[t] - 1.0)
            sizes.append(tree.node_count)
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["tree_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        out["meta"] = np.array([forest.n_features_in_, forest._max_samples,
                                float(_average_path_length([forest._max_samples])[0]), forest.offset_],
                               dtype=np.float64)
        return out

    @staticmethod
    def stump() -> dict[str, np.ndarray]:
        """A one-split, one-tree forest (for docs and tests)."""
        return {"children_left": np.array([1, -1, -1]), "children_right": np.array([2, -1, -1]),
                "feature": np.array([0, -2, -2]), "threshold": np.array([0.5, -2.0, -2.0]),
                "missing_go_to_left": np.zeros(3, dtype=bool), "leaf": np.array([0.0, 1.0, 1.0]),
                "tree_offsets": np.array([0, 3]), "meta": np.array([1.0, 2.0, 1.0, -0.5])}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The stored form (what :meth:`from_arrays` was given), for the model file."""
        return self.arrays_

    def path_sums(self, X: np.ndarray) -> np.ndarray:
        """Sum over trees of each row's path length (sklearn's ``depths``)."""
        X32 = np.asarray(X, dtype=np.float32)  # sklearn scores float32 inputs
        n, d = X32.shape
        flat = X32.ravel()
        has_nan = bool(np.isnan(flat).any())  # the NaN rule costs a pass per level; skip it when moot
        total = np.zeros(n)
        for lo in range(0, n, self._CHUNK_ROWS):
            m = min(n, lo + self._CHUNK_ROWS) - lo
            row_base = np.tile(np.arange(lo, lo + m, dtype=np.intp) * d, self.n_trees_)
            node = np.repeat(self.roots_, m)  # tree-major: (tree t, row r) at t * m + r
            for _ in range(self.max_depth_):
                # the float32 value against the float64 threshold, as sklearn's Cython compares them
                x = np.take(flat, row_base + np.take(self.feature_, node))
                go_right = x > np.take(self.threshold_, node)
                if has_nan:
                    go_right = np.where(np.isnan(x), ~np.take(self.nan_left_, node), go_right)
                node = np.take(self.child_, 2 * node + go_right)
            vals = np.take(self.leaf_, node).reshape(self.n_trees_, m)
            acc = total[lo:lo + m]
            for t in range(self.n_trees_):  # tree by tree, the order sklearn accumulates in
                acc += vals[t]
        return total

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """The paper's s(x, n) = 2^(−E[h(x)]/c(n)): ``-IsolationForest.score_samples(X)``."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} model inputs, got {X.shape}")
        depths = self.path_sums(X)
        denominator = self.n_trees_ * self.c_max_samples_
        # For a single training sample, denominator and depth are 0: sklearn sets the score to 1.
        return 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``IsolationForest.decision_function``: ``score_samples - offset_`` (negative = outlier)."""
        return -self.anomaly_score(X) - self.offset_


class IsolationForestAdapter:
    """sklearn's IsolationForest with the sign made explicit: ``anomaly_score`` in (0, 1], higher worse.

    sklearn's ``score_samples`` returns the *opposite* of the paper's anomaly score s(x, n) =
    2^(−E[h(x)]/c(n)); this adapter flips it back, once, here. ~0.5 is unremarkable, → 1 isolated.

    ``fit`` trains sklearn's forest (``forest_``, only in the training process) and exports it at
    once to :class:`NumpyForest` (``trees_``); scoring always uses ``trees_``, so training
    calibration and detection compute the same numbers and detection never imports sklearn.
    """

    def __init__(self, n_estimators: int = 200, max_samples: int | str = 256, max_features: float = 1.0,
                 random_state: int = 0, n_jobs: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, Z: np.ndarray) -> IsolationForestAdapter:
        # Imported here, not at module level: detection loads this module and must not pay for sklearn.
        from sklearn.ensemble import IsolationForest

        Z = np.asarray(Z, dtype=np.float64)
        max_samples = min(self.max_samples, Z.shape[0]) if isinstance(self.max_samples, int) else self.max_samples
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       max_features=self.max_features, random_state=self.random_state,
                                       n_jobs=self.n_jobs).fit(Z)
        self.set_trees(NumpyForest.from_sklearn(self.forest_))
        return self

    def set_trees(self, arrays: dict[str, np.ndarray]) -> IsolationForestAdapter:
        """Install an exported forest (``fit`` and model loading both come through here)."""
        self.trees_ = NumpyForest.from_arrays(arrays)
        self.n_features_in_ = self.trees_.n_features_in_
        return self

    def anomaly_score(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} model inputs, got {Z.shape[1]}")
        return self.trees_.anomaly_score(Z)


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
