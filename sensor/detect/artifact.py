"""The model artifact: one zip file, nothing in it is unpickled.

Members:

* ``manifest.json`` – format and version, model kind and parameters, feature names (registry
  order), window settings, threshold, training metadata (capture *file names*, counts, time range),
  library versions, SHA-256 of every other member.
* ``inventory.json`` – the baseline inventory (plain JSON, readable by ``model info``).
* ``stats.npz``     – normalisation statistics (loaded with ``allow_pickle=False``).
* ``forest.npz``    – the isolation forest exported to plain arrays (:class:`NumpyForest`: node
  tables, thresholds, per-leaf path lengths; ``allow_pickle=False``). Training fits sklearn's
  ``IsolationForest``; detection scores these arrays with NumPy and never imports sklearn, scipy
  or skops (together ~200 MB RSS and ~1 s of start-up). The manifest still records the
  scikit-learn version that trained the forest, for provenance only.

Loading checks, with one clear message each: the format version (format 1 held a skops pickle of
the sklearn forest; such models must be retrained), the feature names against the running
registry (a model built with other features cannot be scored), and the forest arrays' shapes.

Example::

    >>> art.save("models/baseline.rsm")                     # doctest: +SKIP
    >>> ModelArtifact.load("models/baseline.rsm").threshold.value   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import sensor
from sensor.detect.inventory import Inventory
from sensor.detect.model import (
    SUMMARY_COLUMNS,
    DeviceNormalizer,
    IdentityNormalizer,
    IsolationForestAdapter,
    NumpyForest,
    Stats,
    WindowModel,
)
from sensor.detect.rates import RateModel
from sensor.detect.threshold import Threshold
from sensor.features.registry import FEATURE_NAMES, FLOW_FEATURE_NAMES
from sensor.features.windows import WindowConfig

FORMAT = "radsensor.model"
FORMAT_VERSION = 2  # 2: forest as NumPy arrays (forest.npz); 1 was a skops-pickled sklearn forest


class ModelError(Exception):
    """A model file that cannot be used here (one clear line, no traceback)."""


@dataclass(slots=True)
class ModelArtifact:
    model: WindowModel
    threshold: Threshold
    inventory: Inventory
    window: WindowConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    rates: RateModel | None = None  # absent in flow-only models and models trained before it existed

    @property
    def kind(self) -> str:
        return self.model.kind

    # -- save
    def save(self, path: str | os.PathLike) -> None:
        members: dict[str, bytes] = {}
        members["inventory.json"] = json.dumps(self.inventory.to_dict(), sort_keys=True).encode()
        stats_meta, arrays = _stats_to_arrays(self.model.normalizer_)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        members["stats.npz"] = buf.getvalue()
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.model.scorer_.trees_.to_arrays())
        members["forest.npz"] = buf.getvalue()
        if self.rates is not None:
            members["rates.json"] = json.dumps(self.rates.to_dict(), sort_keys=True).encode()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.model.kind,
            "feature_names": list(self.model.feature_names),
            "params": {"n_estimators": self.model.n_estimators, "max_samples": self.model.max_samples,
                       "min_windows": self.model.min_windows, "scale_floor": self.model.scale_floor,
                       "random_state": self.model.random_state, "deviation_ref": self.model.deviation_ref},
            "stats": stats_meta,
            "window": {"span": self.window.span, "lateness": self.window.lateness, "tz": self.window.tz,
                       "local_nets": list(self.window.local_nets)},
            "threshold": self.threshold.to_dict(),
            "inventory_summary": self.inventory.summary(),
            "training": self.metadata,
            "versions": versions(),
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
        }
        tmp = os.fspath(path) + ".tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in members.items():
                z.writestr(name, data)
        os.replace(tmp, path)  # never leave a half-written model under the final name

    # -- load
    @classmethod
    def load(cls, path: str | os.PathLike, *, check_features: bool = True) -> ModelArtifact:
        manifest, members = read_members(path)
        names = tuple(manifest["feature_names"])
        kind = manifest["kind"]
        if check_features:
            expected = FEATURE_NAMES if kind == "baseline" else FLOW_FEATURE_NAMES
            if names != expected:
                missing = [n for n in expected if n not in names]
                extra = [n for n in names if n not in expected]
                raise ModelError(
                    f"{os.fspath(path)}: model was built with different features "
                    f"(missing {len(missing)}: {', '.join(missing[:5]) or '-'}; "
                    f"unknown {len(extra)}: {', '.join(extra[:5]) or '-'}"
                    f"{'; order differs' if not missing and not extra else ''}); retrain with `radsensor train`")
        try:
            with np.load(io.BytesIO(members["forest.npz"]), allow_pickle=False) as npz:
                forest = {k: npz[k] for k in NumpyForest.ARRAYS}
            with np.load(io.BytesIO(members["stats.npz"]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            inventory = Inventory.from_dict(json.loads(members["inventory.json"]))
            rates = RateModel.from_dict(json.loads(members["rates.json"])) if "rates.json" in members else None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ModelError(f"{os.fspath(path)}: damaged model file ({type(exc).__name__})") from None
        p = manifest["params"]
        model = WindowModel(names, kind, p["n_estimators"], p["max_samples"], p["min_windows"],
                            p["scale_floor"], p["random_state"], p["deviation_ref"])
        model.normalizer_ = _stats_from_arrays(names, kind, p, manifest["stats"], arrays)
        try:
            adapter = IsolationForestAdapter(p["n_estimators"], p["max_samples"],
                                             random_state=p["random_state"]).set_trees(forest)
        except (ValueError, KeyError, IndexError):
            raise ModelError(f"{os.fspath(path)}: damaged model file (forest arrays)") from None
        if adapter.n_features_in_ != len(names) + (len(SUMMARY_COLUMNS) if kind == "baseline" else 0):
            raise ModelError(f"{os.fspath(path)}: damaged model file (forest expects "
                             f"{adapter.n_features_in_} inputs)")
        model.scorer_ = adapter
        w = manifest["window"]
        return cls(model, Threshold.from_dict(manifest["threshold"]), inventory,
                   WindowConfig(w["span"], w["lateness"], w["tz"], tuple(w["local_nets"])),
                   manifest.get("training", {}), rates)


def read_members(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Open, check format/version/integrity; return (manifest, other members)."""
    p = os.fspath(path)
    try:
        with zipfile.ZipFile(p) as z:
            manifest = json.loads(z.read("manifest.json"))
            members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}
    except FileNotFoundError:
        raise ModelError(f"{p}: no such model file") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, IsADirectoryError):
        raise ModelError(f"{p}: not a radsensor model file") from None
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{p}: not a radsensor model file")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{p}: model format version {manifest.get('format_version')} is not supported "
                         f"by radsensor {sensor.__version__} (expects {FORMAT_VERSION}); retrain the model")
    for name, digest in manifest.get("sha256", {}).items():
        if name not in members or hashlib.sha256(members[name]).hexdigest() != digest:
            raise ModelError(f"{p}: member {name} is missing or corrupt")
    return manifest, members


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    return read_members(path)[0]


def versions() -> dict[str, str]:
    """Library versions recorded at save time (training: sklearn is already loaded there)."""
    import sklearn  # provenance only; never imported on the detection path

    return {"radsensor": sensor.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _stats_to_arrays(norm) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta: dict[str, Any] = {"devices": sorted(norm.device_stats_), "groups": sorted(norm.group_stats_)}
    arrays: dict[str, np.ndarray] = {}
    for level, table in (("device", norm.device_stats_), ("group", norm.group_stats_),
                         ("global", {"": norm.global_stats_})):
        keys = sorted(table)
        for attr in ("center", "scale", "p50", "p99"):
            arrays[f"{level}_{attr}"] = (np.stack([getattr(table[k], attr) for k in keys])
                                         if keys else np.zeros((0, len(norm.feature_names))))
        arrays[f"{level}_n"] = np.array([table[k].n for k in keys], dtype=np.int64)
    arrays["passthrough"] = np.asarray(norm.passthrough_, dtype=bool)
    return meta, arrays


def _stats_from_arrays(names, kind, params, meta, a):
    def table(level: str, keys: list[str]) -> dict[str, Stats]:
        return {k: Stats(a[f"{level}_center"][i], a[f"{level}_scale"][i], a[f"{level}_p50"][i],
                         a[f"{level}_p99"][i], int(a[f"{level}_n"][i])) for i, k in enumerate(keys)}

    norm = (IdentityNormalizer(names) if kind == "flow_only"
            else DeviceNormalizer(names, params["min_windows"], params["scale_floor"]))
    norm.device_stats_ = table("device", meta["devices"])
    norm.group_stats_ = table("group", meta["groups"])
    norm.global_stats_ = table("global", [""])[""]
    norm.passthrough_ = a["passthrough"]
    return norm
