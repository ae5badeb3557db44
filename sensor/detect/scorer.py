"""Finished windows → explained alerts (schema ``radsensor.alert/1``).

Two sources per window: the model (score above the calibrated threshold → one ``anomaly`` alert
whose evidence is the features that deviated most, observed against the device's own baseline
p50/p99) and the novelty rules (``novelty``/``rule`` alerts). Devices are described with the
inventory's role and the AE titles/MACs seen. No event field that could carry patient data reaches
an alert: windows hold counts and PHI-free keys only.

Example::

    >>> s = Scorer(ModelArtifact.load("models/baseline.rsm"))   # doctest: +SKIP
    >>> alerts = s.score(windows)                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from sensor.alerts.schema import Alert, DeviceRef, Evidence, Peer
from sensor.detect.artifact import ModelArtifact
from sensor.detect.rates import SERIES_BY_NAME, RateFinding, RateTracker, poisson_quantile
from sensor.detect.rules import Finding, RuleEngine
from sensor.features.registry import FEATURES_BY_NAME, feature_vector
from sensor.features.windows import DeviceWindow, LocalNets

TOP_EVIDENCE = 5
MIN_EVIDENCE_Z = 2.0  # deviations smaller than this are not shown (the top one always is)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:,.2f}"


class Scorer:
    """Score finished windows with a loaded model and its rules."""

    def __init__(self, artifact: ModelArtifact, sensor_id: str = "", rules: bool | None = None,
                 top_evidence: int = TOP_EVIDENCE) -> None:
        self.artifact = artifact
        self.sensor_id = sensor_id
        self.top_evidence = top_evidence
        use_rules = artifact.kind == "baseline" if rules is None else rules
        self.rules = (RuleEngine(artifact.inventory, LocalNets(artifact.window.local_nets))
                      if use_rules else None)
        # The rate detector rides with the rules: both judge a device against its own baseline history.
        self.rates = RateTracker(artifact.rates) if use_rules and artifact.rates is not None else None
        self._tz = ZoneInfo(artifact.window.tz)
        self.windows_scored = 0
        self.anomalies = 0

    def device_ref(self, w: DeviceWindow) -> DeviceRef:
        d = self.artifact.inventory.devices.get(w.ip)
        aes = tuple(dict.fromkeys([*w.ae_titles, *(sorted(d.ae_titles) if d else ())]))
        mac = w.macs[0] if w.macs else (sorted(d.macs)[0] if d and d.macs else None)
        return DeviceRef(w.ip, mac, aes, d.role if d else "unknown")

    def score(self, windows: Sequence[DeviceWindow]) -> list[Alert]:
        """Alerts for a batch of finished windows (model alerts first, then rule alerts, per window)."""
        if not windows:
            return []
        model = self.artifact.model
        names = model.feature_names
        X = np.stack([feature_vector(w.features, names) for w in windows])
        keys = [w.ip for w in windows]
        groups = [self.artifact.inventory.role(w.ip) for w in windows]
        scores = model.anomaly_score(X, keys, groups)
        self.windows_scored += len(windows)
        thr = self.artifact.threshold
        hot = [i for i, s in enumerate(scores) if thr.is_alert(float(s))]
        Z = model.deviations(X[hot], [keys[i] for i in hot], [groups[i] for i in hot]) if hot else None
        out: list[Alert] = []
        hot_row = {i: r for r, i in enumerate(hot)}
        for i, w in enumerate(windows):
            if i in hot_row:
                self.anomalies += 1
                out.append(self._anomaly(w, float(scores[i]), X[i], Z[hot_row[i]], groups[i]))
            if self.rules is not None:
                out += [self._from_finding(w, f) for f in self.rules.check(w)]
        if self.rates is not None:
            # per device, windows must reach the CUSUM in time order; batches are already ordered in
            # time, but not by device within one window span
            for w in sorted(windows, key=lambda w: w.start):
                if self.rates.tracked(w.ip):
                    out += [self._from_rate(w, f) for f in self.rates.update(w.ip, w.start, w.end, w.features)]
        return out

    def _anomaly(self, w: DeviceWindow, score: float, x: np.ndarray, z: np.ndarray, group: str | None) -> Alert:
        model = self.artifact.model
        names = model.feature_names
        stats, level = model.normalizer_.stats_for(w.ip, group)
        order = np.argsort(-np.abs(z), kind="stable")
        picked = [j for j in order[: self.top_evidence] if abs(z[j]) >= MIN_EVIDENCE_Z] or [int(order[0])]
        evidence = []
        for j in picked:
            f = FEATURES_BY_NAME[names[j]]
            note = f.description + ("" if level == "device" else f" (baseline of {level})")
            evidence.append(Evidence(f.name, round(float(x[j]), 3), round(float(stats.p50[j]), 3),
                                     round(float(stats.p99[j]), 3), note))
        top = evidence[0]
        direction = "" if z[picked[0]] >= 0 else "drop in "
        title = (f"Unusual {direction}{FEATURES_BY_NAME[top.feature].description} on {w.ip}: "
                 f"{_fmt(top.observed)} (baseline p50 {_fmt(top.baseline_p50)}, p99 {_fmt(top.baseline_p99)})")
        attack: list[str] = []
        for j in picked[:3]:
            if z[j] > 0:
                attack += [t for t in FEATURES_BY_NAME[names[j]].attack if t not in attack]
        thr = self.artifact.threshold
        return Alert(
            rule_id=f"anomaly.{top.feature}", kind="anomaly", severity=thr.severity(score), title=title,
            device=self.device_ref(w), window_start=_utc(w.start), window_end=_utc(w.end),
            peers=tuple(Peer(ip, ae) for ip, ae in w.peers[:8]), score=round(score, 4),
            threshold=round(thr.value, 4), evidence=tuple(evidence), attack=tuple(attack), sensor=self.sensor_id)

    def _from_rate(self, w: DeviceWindow, f: RateFinding) -> Alert:
        s = SERIES_BY_NAME[f.series]
        minutes = (f.end - f.start) / 60.0
        since = datetime.fromtimestamp(f.start, self._tz).strftime("%H:%M %Z")
        ratio = f.ratio
        title = (f"Sustained rise in {s.description} by {w.ip}: {_fmt(f.observed)} in the last {minutes:,.0f} min "
                 f"(since {since}), baseline expects {_fmt(f.expected)} at these hours ({ratio:.1f}x)")
        evidence = (Evidence(f"rate.{f.series}", round(f.observed, 3), round(f.expected, 3),
                             float(poisson_quantile(f.expected)),
                             f"{s.description} over the last {minutes:,.0f} min; baseline: expected count at "
                             f"these hours and its Poisson p99; CUSUM {f.statistic:.1f} >= {f.threshold:.1f} nats"),)
        # The alert sits in the window where the evidence became conclusive; the span it covers is
        # in the evidence, so time-to-detect is never back-dated to the start of the rise.
        return Alert(
            rule_id=f"rate.{f.series}", kind="anomaly", severity="high" if ratio >= 4 else "medium", title=title,
            device=self.device_ref(w), window_start=_utc(w.start), window_end=_utc(w.end),
            peers=tuple(Peer(ip, ae) for ip, ae in w.peers[:8]), evidence=evidence, attack=s.attack,
            sensor=self.sensor_id)

    def _from_finding(self, w: DeviceWindow, f: Finding) -> Alert:
        return Alert(
            rule_id=f.rule_id, kind=f.kind, severity=f.severity, title=f.title, device=self.device_ref(w),
            window_start=_utc(w.start), window_end=_utc(w.end), time=_utc(max(w.start, min(f.time, w.end))),
            peers=tuple(Peer(ip, ae) for ip, ae in f.peers),
            evidence=tuple(Evidence(n, float(o), p50, p99, d) for n, o, p50, p99, d in f.evidence),
            attack=f.attack, sensor=self.sensor_id)
