"""The NumPy isolation forest scores exactly like sklearn's, and detection never imports sklearn.

These tests import sklearn on purpose: it is the oracle (training still fits sklearn's forest).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from sensor.detect.artifact import ModelArtifact, ModelError
from sensor.detect.inventory import Inventory
from sensor.detect.model import IsolationForestAdapter, NumpyForest, WindowModel
from sensor.detect.threshold import Threshold
from sensor.features.registry import FEATURE_NAMES
from sensor.features.windows import WindowConfig

RTOL = 1e-9


def close(a, b):
    return np.allclose(a, b, rtol=RTOL, atol=0.0)


def probe(rng, n, d, train):
    """Rows near, inside and far outside the training range, with ties on thresholds and NaN/inf."""
    T = np.vstack([train[rng.integers(0, len(train), n)],                     # training rows
                   rng.normal(scale=4.0, size=(n, d)),                         # wide
                   np.round(rng.normal(size=(n, d)), 1)])                      # coarse values
    T[::11, rng.integers(0, d)] = np.nan
    T[5, 0], T[6, 1] = np.inf, -np.inf
    return T


@pytest.mark.parametrize("max_features", [1.0, 0.6])
@pytest.mark.parametrize("n_train", [2000, 40])
def test_random_data_matches_sklearn(max_features, n_train):
    rng = np.random.default_rng(7)
    d = 12
    Z = rng.normal(size=(n_train, d))
    Z[:, 2] = rng.poisson(2.0, n_train)  # integer-valued column: thresholds between ties
    a = IsolationForestAdapter(n_estimators=60, max_samples=256, max_features=max_features, random_state=1).fit(Z)
    T = probe(rng, 700, d, Z)
    ours = a.anomaly_score(T)
    assert close(ours, -a.forest_.score_samples(T))
    # The decision_function path: score_samples = decision_function + offset_.
    assert close(ours, -(a.forest_.decision_function(T) + a.forest_.offset_))
    assert close(a.trees_.decision_function(T), a.forest_.decision_function(T))
    assert np.all((ours > 0) & (ours <= 1))


def test_feature_subsets_and_contamination_offset():
    rng = np.random.default_rng(3)
    X = rng.lognormal(size=(500, 9))
    f = IsolationForest(n_estimators=40, max_features=4, contamination=0.05, random_state=0).fit(X)
    assert f._max_features != X.shape[1]  # trees saw feature subsets (estimators_features_)
    nf = NumpyForest.from_arrays(NumpyForest.from_sklearn(f))
    T = probe(rng, 300, 9, X)
    assert nf.offset_ == f.offset_ != -0.5
    assert close(nf.anomaly_score(T), -f.score_samples(T))
    assert close(nf.decision_function(T), f.decision_function(T))
    assert np.array_equal(nf.decision_function(T) < 0, f.predict(T) == -1)


def test_nan_in_training_follows_missing_go_to_left():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 5))
    X[rng.random(X.shape) < 0.2] = np.nan
    f = IsolationForest(n_estimators=50, random_state=0).fit(X)
    arrays = NumpyForest.from_sklearn(f)
    assert arrays["missing_go_to_left"].any() and not arrays["missing_go_to_left"].all()
    T = probe(rng, 300, 5, X)
    T[rng.random(T.shape) < 0.3] = np.nan
    assert close(NumpyForest.from_arrays(arrays).anomaly_score(T), -f.score_samples(T))


@pytest.mark.parametrize("n_train", [1, 2, 3])
def test_tiny_training_sets(n_train):
    X = np.arange(n_train * 3, dtype=float).reshape(n_train, 3)
    a = IsolationForestAdapter(n_estimators=10, random_state=0).fit(X)
    T = np.random.default_rng(0).normal(scale=5, size=(20, 3))
    assert close(a.anomaly_score(T), -a.forest_.score_samples(T))


def test_one_row_and_chunk_boundaries():
    rng = np.random.default_rng(11)
    Z = rng.normal(size=(800, 6))
    a = IsolationForestAdapter(n_estimators=30, random_state=2).fit(Z)
    T = rng.normal(scale=2, size=(NumpyForest._CHUNK_ROWS * 2 + 3, 6))
    full = a.anomaly_score(T)
    assert close(full, -a.forest_.score_samples(T))
    assert all(a.anomaly_score(T[i:i + 1])[0] == full[i] for i in (0, 1, NumpyForest._CHUNK_ROWS, len(T) - 1))
    assert a.anomaly_score(T[:0]).shape == (0,)
    with pytest.raises(ValueError, match="expected 6 model inputs"):
        a.anomaly_score(T[:, :5])


def window_data(seed=0, n=900):
    """Real-ish windows: sparse Poisson counts per device, a few bursts (like the registry's features)."""
    rng = np.random.default_rng(seed)
    rate = rng.choice([0.0, 0.05, 0.5, 3.0, 40.0], size=len(FEATURE_NAMES))
    X = rng.poisson(rate, size=(n, len(FEATURE_NAMES))).astype(float)
    X[rng.integers(0, n, 20), rng.integers(0, len(FEATURE_NAMES), 20)] *= 50
    keys = [f"10.20.{i % 4}.{i % 7}" for i in range(n)]
    groups = ["pacs" if i % 4 == 0 else "workstation" for i in range(n)]
    return X, keys, groups


@pytest.mark.parametrize("kind", ["baseline", "flow_only"])
def test_window_model_forest_part_matches_sklearn_and_survives_save_load(tmp_path, kind):
    from sensor.features.registry import FLOW_FEATURE_NAMES

    X, k, g = window_data()
    names = FEATURE_NAMES if kind == "baseline" else FLOW_FEATURE_NAMES
    X = X[:, [FEATURE_NAMES.index(n) for n in names]]
    m = WindowModel(names, kind, n_estimators=100).fit(X[:600], k[:600], g[:600])
    Xn, kn, gn = X[600:], k[600:], g[600:]
    Z = m.normalizer_.transform(Xn, kn, gn)
    _, forest, _ = m.score_parts(Xn, kn, gn)
    assert close(forest, -m.scorer_.forest_.score_samples(Z))
    art = ModelArtifact(m, Threshold.calibrate(m.anomaly_score(X, k, g), 3.0), Inventory().finalize(),
                        WindowConfig(60, 120, "UTC"), {})
    art.save(tmp_path / "m.rsm")
    back = ModelArtifact.load(tmp_path / "m.rsm")
    assert not hasattr(back.model.scorer_, "forest_")  # loaded models carry no sklearn object
    assert np.array_equal(back.model.anomaly_score(Xn, kn, gn), m.anomaly_score(Xn, kn, gn))
    with zipfile.ZipFile(tmp_path / "m.rsm") as z:
        man = json.loads(z.read("manifest.json"))
        with np.load(io.BytesIO(z.read("forest.npz")), allow_pickle=False) as npz:
            assert sorted(npz.files) == sorted(NumpyForest.ARRAYS)
            assert all(npz[f].dtype != object for f in npz.files)
    assert man["format_version"] == 2 and man["versions"]["sklearn"]  # provenance is still recorded


def _rewrite(path, out, manifest_fn=None, member=None, data=None):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    man = json.loads(members.pop("manifest.json"))
    if member is not None:
        members[member] = data
        import hashlib
        man["sha256"][member] = hashlib.sha256(data).hexdigest()
    if manifest_fn is not None:
        manifest_fn(man)
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("manifest.json", json.dumps(man))
        for n, b in members.items():
            z.writestr(n, b)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, k, g = window_data(1, 300)
    m = WindowModel(FEATURE_NAMES, n_estimators=20).fit(X, k, g)
    path = tmp_path_factory.mktemp("model") / "m.rsm"
    ModelArtifact(m, Threshold.calibrate(m.anomaly_score(X, k, g), 3.0), Inventory().finalize(),
                  WindowConfig(60, 120, "UTC"), {}).save(path)
    return path, X, k, g


def test_old_format_is_the_one_line_error(saved, tmp_path):
    path, *_ = saved
    _rewrite(path, tmp_path / "v1.rsm", lambda m: m.update(format_version=1))
    with pytest.raises(ModelError, match=r"format version 1 is not supported .*expects 2.*retrain") as e:
        ModelArtifact.load(tmp_path / "v1.rsm")
    assert "\n" not in str(e.value)


def test_damaged_forest_arrays_are_a_clear_error(saved, tmp_path):
    path, *_ = saved
    with zipfile.ZipFile(path) as z, np.load(io.BytesIO(z.read("forest.npz"))) as npz:
        arrays = {k: npz[k] for k in npz.files}
    bad_sets = {
        "cycle": dict(arrays, children_left=np.where(arrays["children_left"] == 1, 0, arrays["children_left"])),
        "feature": dict(arrays, feature=arrays["feature"] + 500),
        "short": dict(arrays, threshold=arrays["threshold"][:-1]),
        "missing": {k: v for k, v in arrays.items() if k != "leaf"},
    }
    for name, bad in bad_sets.items():
        buf = io.BytesIO()
        np.savez(buf, **bad)
        _rewrite(path, tmp_path / f"{name}.rsm", member="forest.npz", data=buf.getvalue())
        with pytest.raises(ModelError, match="damaged model file"):
            ModelArtifact.load(tmp_path / f"{name}.rsm")


def test_detection_path_never_imports_sklearn_scipy_or_skops(saved):
    path, X, k, g = saved
    code = (
        "import sys, numpy as np\n"
        "import sensor.detect.detector, sensor.detect.scorer\n"
        "from sensor.detect.artifact import ModelArtifact\n"
        f"a = ModelArtifact.load({str(path)!r})\n"
        f"X = np.load({str(path)!r} + '.X.npy')\n"
        f"s = a.model.anomaly_score(X, {k[:50]!r}, {g[:50]!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy', 'skops'))\n"
        "print(len(s), bad)\n"
    )
    np.save(str(path) + ".X.npy", X[:50])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "50 []"
