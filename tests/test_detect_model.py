"""Estimator conformance, threshold calibration and the model artifact (save/load, clear errors)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from sensor.detect.artifact import ModelArtifact, ModelError
from sensor.detect.inventory import Inventory
from sensor.detect.model import DeviceNormalizer, IsolationForestAdapter, WindowModel
from sensor.detect.threshold import Threshold, parse_fpr
from sensor.features.registry import FEATURE_NAMES, FLOW_FEATURE_NAMES
from sensor.features.windows import WindowConfig


def data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(n, len(FEATURE_NAMES))).astype(float)
    keys = [f"10.0.0.{i % 3}" for i in range(n)]
    return X, keys, ["ws"] * n


def test_fit_returns_self_and_learned_state_has_underscore():
    X, k, g = data()
    m = WindowModel(FEATURE_NAMES, n_estimators=20)
    assert m.fit(X, k, g) is m
    assert hasattr(m, "normalizer_") and hasattr(m, "scorer_")
    assert not hasattr(WindowModel(FEATURE_NAMES), "scorer_")  # __init__ only stores parameters
    a = IsolationForestAdapter(n_estimators=5)
    assert a.fit(X[:, :4]) is a
    nrm = DeviceNormalizer(FEATURE_NAMES)
    assert nrm.fit(X, k, g) is nrm and set(nrm.device_stats_) == set(k)


def test_seeded_determinism_and_seed_matters():
    X, k, g = data()
    s1 = WindowModel(FEATURE_NAMES, n_estimators=30, random_state=3).fit(X, k, g).anomaly_score(X, k, g)
    s2 = WindowModel(FEATURE_NAMES, n_estimators=30, random_state=3).fit(X, k, g).anomaly_score(X, k, g)
    s3 = WindowModel(FEATURE_NAMES, n_estimators=30, random_state=4).fit(X, k, g).anomaly_score(X, k, g)
    assert np.array_equal(s1, s2) and not np.array_equal(s1, s3)


def test_higher_score_is_worse():
    X, k, g = data()
    m = WindowModel(FEATURE_NAMES, n_estimators=50).fit(X, k, g)
    odd = X[:1].copy()
    odd[0, FEATURE_NAMES.index("dimse.c_find_rq")] = 5000
    normal = m.anomaly_score(X[:50], k[:50], g[:50])
    assert m.anomaly_score(odd, k[:1], g[:1])[0] > normal.max()
    combined, forest, dev = m.score_parts(odd, k[:1], g[:1])
    assert combined[0] == max(forest[0], dev[0]) and 0 < combined[0] <= 1


def test_unknown_device_falls_back_to_group_then_global():
    X, k, g = data()
    n = DeviceNormalizer(FEATURE_NAMES).fit(X, k, g)
    assert n.stats_for("10.0.0.1", "ws")[1] == "device"
    assert n.stats_for("10.9.9.9", "ws")[1] == "group"
    assert n.stats_for("10.9.9.9", None)[1] == "global"


def test_wrong_width_is_a_clear_error():
    X, k, g = data()
    m = WindowModel(FEATURE_NAMES, n_estimators=10).fit(X, k, g)
    with pytest.raises(ValueError, match="features per window"):
        m.anomaly_score(X[:, :5], k, g)


def test_threshold_budget_holds_on_every_day():
    rng = np.random.default_rng(1)
    # ten devices, seven days; on day 3 the busy day's scores run higher than the rest
    days = np.repeat(np.arange(7), 1000)
    scores = rng.uniform(0.3, 0.7, days.size)
    scores[days == 3] += 0.15
    avg = Threshold.calibrate(scores, device_days=70, per_device_day=1.0, safety=0.5)
    every = Threshold.calibrate(scores, device_days=70, per_device_day=1.0, safety=0.5, days=days,
                                devices_per_day={d: 10 for d in range(7)})
    assert (scores[days == 3] > avg.value).sum() > 5  # the average budget is spent on the busy day
    assert (scores[days == 3] > every.value).sum() <= 5  # 1 x 0.5 x 10 devices
    for d in range(7):
        assert (scores[days == d] > every.value).sum() <= 5
    assert every.method == "out_of_fold, every day" and every.value > avg.value


def test_threshold_calibration_budget():
    scores = np.linspace(0.4, 0.9, 10_000)
    t = Threshold.calibrate(scores, device_days=40, per_device_day=1.0, safety=0.5)
    assert t.allowed == 20 and t.above <= 20 and t.expected_per_device_day <= 0.5
    assert Threshold.calibrate(np.full(100, 0.3), 10).value == pytest.approx(0.55)  # floor
    assert t.severity(0.99) in ("high", "critical") and t.severity(t.value + 1e-6) == "medium"
    assert Threshold.from_dict(t.to_dict()) == t
    assert parse_fpr("1/device/day") == 1.0 and parse_fpr("2/device/week") == pytest.approx(2 / 7)
    with pytest.raises(ValueError):
        parse_fpr("lots")


def artifact(kind="baseline"):
    X, k, g = data()
    names = FEATURE_NAMES if kind == "baseline" else FLOW_FEATURE_NAMES
    if kind != "baseline":
        X = X[:, [FEATURE_NAMES.index(n) for n in names]]
    m = WindowModel(names, kind, n_estimators=25).fit(X, k, g)
    inv = Inventory()
    return ModelArtifact(m, Threshold.calibrate(m.anomaly_score(X, k, g), 3.0), inv.finalize(),
                         WindowConfig(60, 120, "Europe/Berlin"), {"captures": ["a.pcap"]}), X, k, g


@pytest.mark.parametrize("kind", ["baseline", "flow_only"])
def test_save_load_round_trip_gives_identical_scores(tmp_path, kind):
    art, X, k, g = artifact(kind)
    path = tmp_path / "m.rsm"
    art.save(path)
    back = ModelArtifact.load(path)
    assert np.array_equal(back.model.anomaly_score(X, k, g), art.model.anomaly_score(X, k, g))
    assert back.threshold == art.threshold and back.window == art.window and back.kind == kind
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["forest.npz", "inventory.json", "manifest.json", "stats.npz"]


def _rewrite_manifest(path, out, fn):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    man = json.loads(members["manifest.json"])
    fn(man)
    members["manifest.json"] = json.dumps(man).encode()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def test_mismatched_feature_names_is_a_clear_error(tmp_path):
    art, *_ = artifact()
    art.save(tmp_path / "m.rsm")

    def rename(man):
        man["feature_names"][0] = "flow.bytes_sideways"
    _rewrite_manifest(tmp_path / "m.rsm", tmp_path / "bad.rsm", rename)
    with pytest.raises(ModelError, match=r"different features .*flow.bytes_out.*flow.bytes_sideways"):
        ModelArtifact.load(tmp_path / "bad.rsm")


def test_incompatible_versions_and_damage_are_clear_errors(tmp_path):
    art, *_ = artifact()
    art.save(tmp_path / "m.rsm")
    _rewrite_manifest(tmp_path / "m.rsm", tmp_path / "v9.rsm", lambda m: m.update(format_version=9))
    with pytest.raises(ModelError, match="format version 9"):
        ModelArtifact.load(tmp_path / "v9.rsm")
    # sklearn is not used to score any more: a model trained under another version loads.
    _rewrite_manifest(tmp_path / "m.rsm", tmp_path / "sk.rsm", lambda m: m["versions"].update(sklearn="0.1.0"))
    assert ModelArtifact.load(tmp_path / "sk.rsm").model.feature_names == art.model.feature_names
    (tmp_path / "junk.rsm").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a radsensor model"):
        ModelArtifact.load(tmp_path / "junk.rsm")
    with zipfile.ZipFile(tmp_path / "m.rsm") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["stats.npz"] = members["stats.npz"][:-10] + b"0123456789"
    with zipfile.ZipFile(tmp_path / "corrupt.rsm", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ModelError, match="stats.npz is missing or corrupt"):
        ModelArtifact.load(tmp_path / "corrupt.rsm")
