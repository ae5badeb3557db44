"""Detection metrics: labelled scenarios (``labels.json``) against an alert stream (``alerts.jsonl``).

An alert *matches* a scenario when its device is one of the scenario's IPs (attacker or victim)
and its window overlaps the scenario's interval extended by ``grace`` (default two windows: a
window finishes after its end, and late flows land in the next one). Per scenario: detected,
whether the attacker itself was named, time to detect (first matching alert's window start minus
the scenario start, floored at 0), and whether that is within two windows. Alerts matching no
scenario are false alerts; precision = matching alerts / all alerts; false alerts are also given
per device-day (device-days from the caller, e.g. the model inventory × capture days).

Example::

    >>> r = evaluate(load_labels("pcaps/labels.json"), load_alerts("out/alerts.jsonl"), device_days=30)  # doctest: +SKIP
    >>> r.summary["detected"], r.summary["precision"]                                                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _ts(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class EvalInputError(ValueError):
    """Labels or alerts that cannot be read (one clear line)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    type: str
    start: float
    end: float
    attackers: tuple[str, ...]
    victims: tuple[str, ...]
    description: str = ""

    @property
    def ips(self) -> frozenset[str]:
        return frozenset(self.attackers) | frozenset(self.victims)


@dataclass(frozen=True, slots=True)
class AlertRow:
    device: str
    window_start: float
    window_end: float
    time: float
    rule_id: str
    kind: str
    severity: str
    title: str


def load_labels(path: str | os.PathLike) -> list[Scenario]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalInputError(f"{os.fspath(path)}: cannot read labels ({exc.__class__.__name__})") from None
    items = data.get("scenarios", data.get("labels")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise EvalInputError(f"{os.fspath(path)}: expected a list of scenarios")
    out = []
    for i, d in enumerate(items):
        try:
            ips = d.get("ips") or []
            out.append(Scenario(
                str(d.get("id", i)), str(d.get("type", "")), _ts(d["start"]), _ts(d["end"]),
                tuple(x["ip"] for x in ips if x.get("role", "attacker") == "attacker"),
                tuple(x["ip"] for x in ips if x.get("role") == "victim"), str(d.get("description", ""))))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalInputError(f"{os.fspath(path)}: scenario {i}: missing or bad field ({exc})") from None
    return out


def load_alerts(path: str | os.PathLike) -> list[AlertRow]:
    out = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise EvalInputError(f"{os.fspath(path)}: cannot read alerts ({exc.__class__.__name__})") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(AlertRow(d["device"]["ip"], _ts(d["window_start"]), _ts(d["window_end"]),
                                    _ts(d.get("time") or d["window_end"]), d.get("rule_id", ""),
                                    d.get("kind", ""), d.get("severity", ""), d.get("title", "")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise EvalInputError(f"{os.fspath(path)}:{n}: not a radsensor alert line") from None
    return out


@dataclass(slots=True)
class EvalResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    false_alerts: list[AlertRow] = field(default_factory=list)


def _window_of(alerts: Sequence[AlertRow]) -> float:
    spans = sorted(a.window_end - a.window_start for a in alerts if a.window_end > a.window_start)
    return spans[0] if spans else 60.0  # merged alerts span more; the smallest is one window


def evaluate(scenarios: Sequence[Scenario], alerts: Sequence[AlertRow], *, device_days: float | None = None,
             window: float | None = None, grace_windows: float = 2.0) -> EvalResult:
    win = window if window is not None else _window_of(alerts)
    grace = grace_windows * win
    matched = [False] * len(alerts)
    rows = []
    for sc in scenarios:
        hits = []
        for i, a in enumerate(alerts):
            if a.device in sc.ips and a.window_start < sc.end + grace and a.window_end > sc.start:
                matched[i] = True
                hits.append(a)
        ttd = min((max(0.0, a.window_start - sc.start) for a in hits), default=None)
        rows.append({
            "id": sc.id, "type": sc.type, "detected": bool(hits),
            "attacker_named": any(a.device in sc.attackers for a in hits),
            "time_to_detect_s": ttd, "within_2_windows": ttd is not None and ttd <= 2 * win,
            "alerts": len(hits), "rules": sorted({a.rule_id for a in hits}),
        })
    false = [a for a, m in zip(alerts, matched) if not m]
    true_n = sum(matched)
    if device_days is None:
        devices = {a.device for a in alerts} | {ip for s in scenarios for ip in s.ips}
        times = [t for a in alerts for t in (a.window_start, a.window_end)] + \
                [t for s in scenarios for t in (s.start, s.end)]
        days = max(1.0, math.ceil((max(times) - min(times)) / 86400.0)) if times else 1.0
        device_days = max(1.0, len(devices) * days)
        dd_source = "estimated from alerts and labels (pass --device-days or --model)"
    else:
        dd_source = "given"
    n_det = sum(r["detected"] for r in rows)
    summary = {
        "scenarios": len(rows), "detected": n_det,
        "attacker_named": sum(r["attacker_named"] for r in rows),
        "within_2_windows": sum(r["within_2_windows"] for r in rows),
        "alerts": len(alerts), "true_alerts": true_n, "false_alerts": len(false),
        "precision": (true_n / len(alerts)) if alerts else None,
        "device_days": device_days, "device_days_source": dd_source,
        "false_alerts_per_device_day": len(false) / device_days if device_days else None,
        "window_s": win,
    }
    return EvalResult(rows, summary, false)
