"""The decision: a threshold on ``anomaly_score`` calibrated for a false-alert budget.

The budget is expressed the way a SOC thinks about it — alerts per device per day — and converted
to a score on the baseline's own (out-of-fold, see ``training/baseline.py``) score distribution:
with D device-days of baseline and a target of r alerts per device-day, at most
``floor(r × safety × D)`` baseline windows may score above the threshold. ``safety`` (default ½)
keeps half the budget for what the baseline could not show (novelty noise, a new week).

Isolation-forest scores near 0.5 mean "nothing special", so the threshold never goes below
``floor`` even if the budget would allow it.

Example::

    >>> import numpy as np
    >>> t = Threshold.calibrate(np.linspace(0.3, 0.7, 1000), device_days=10, per_device_day=1.0)
    >>> t.allowed, t.is_alert(0.71), t.is_alert(0.5)
    (5, True, False)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_FLOOR = 0.55


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float  # alert when anomaly_score > value
    per_device_day: float  # the target
    safety: float
    device_days: float
    n_scores: int
    allowed: int  # baseline windows allowed above the threshold
    above: int  # baseline windows actually above it
    method: str = "out_of_fold"

    @property
    def expected_per_device_day(self) -> float:
        return self.above / self.device_days if self.device_days else 0.0

    def is_alert(self, score: float) -> bool:
        return score > self.value

    def severity(self, score: float) -> str:
        """medium just above the threshold; high halfway to 1; critical near 1."""
        margin = (score - self.value) / max(1e-9, 1.0 - self.value)
        return "critical" if margin >= 0.8 else "high" if margin >= 0.4 else "medium"

    @classmethod
    def calibrate(cls, scores: np.ndarray, device_days: float, per_device_day: float = 1.0,
                  safety: float = 0.5, floor: float = DEFAULT_FLOOR, method: str = "out_of_fold",
                  days: np.ndarray | None = None, devices_per_day: dict | None = None) -> Threshold:
        """``days`` (one label per score, e.g. the local date) with ``devices_per_day`` makes the
        budget hold on every baseline day, not just on average: a busy weekday then cannot spend
        what a quiet Sunday saved."""
        if per_device_day < 0 or not 0 < safety <= 1:
            raise ValueError("per_device_day must be >= 0 and 0 < safety <= 1")
        scores = np.asarray(scores, dtype=np.float64)
        s = np.sort(scores)[::-1]
        allowed = math.floor(per_device_day * safety * device_days)
        if s.size == 0 or allowed >= s.size:
            value = floor
        else:
            # Strictly above the (allowed+1)-th highest score: at most `allowed` windows exceed it.
            value = max(floor, float(s[allowed]))
        if days is not None and devices_per_day:
            days = np.asarray(days)
            for day, n_dev in devices_per_day.items():
                sd = np.sort(scores[days == day])[::-1]
                k = math.floor(per_device_day * safety * n_dev)
                if k < sd.size:
                    value = max(value, float(sd[k]))
            method += ", every day"
        above = int((s > value).sum())
        return cls(float(value), float(per_device_day), float(safety), float(device_days), int(s.size),
                   allowed, above, method)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expected_per_device_day"] = self.expected_per_device_day
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Threshold:
        return cls(d["value"], d["per_device_day"], d["safety"], d["device_days"], d["n_scores"], d["allowed"],
                   d["above"], d.get("method", "out_of_fold"))


def parse_fpr(text: str | float) -> float:
    """``"1/device/day"``, ``"0.5"``, ``"2/device/week"`` → alerts per device per day.

    >>> parse_fpr("1/device/day"), parse_fpr("7/device/week"), parse_fpr(0.25)
    (1.0, 1.0, 0.25)
    """
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        parts = [p.strip().lower() for p in str(text).split("/")]
        try:
            v = float(parts[0])
        except ValueError:
            raise ValueError(f"not a false-alert rate: {text!r} (use e.g. 1/device/day)") from None
        if len(parts) > 1:
            unit = parts[-1]
            per = {"day": 1.0, "d": 1.0, "week": 7.0, "w": 7.0, "hour": 1 / 24, "h": 1 / 24}.get(unit)
            if per is None or (len(parts) == 3 and parts[1] not in ("device", "dev")) or len(parts) > 3:
                raise ValueError(f"not a false-alert rate: {text!r} (use e.g. 1/device/day)")
            v /= per
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"false-alert rate must be >= 0: {text!r}")
    return v
