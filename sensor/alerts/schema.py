"""Alert schema ``radsensor.alert/1``: one explained finding about one device.

An :class:`Alert` is what ``detect/`` hands to ``alerts/``: frozen, typed, PHI-free. Formatting to
JSON/CEF/LEEF/ECS lives in :mod:`sensor.alerts.formats`; delivery in :mod:`sensor.alerts.sinks`.

Example::

    >>> a = Alert(rule_id="novelty.new_move_destination", kind="novelty", severity="high",
    ...           title="C-MOVE to unknown AE EVIL", device=DeviceRef("10.20.2.11"),
    ...           window_start="2026-03-04T03:11:00Z", window_end="2026-03-04T03:12:00Z")
    >>> a.to_dict()["time"]        # defaults to the window end
    '2026-03-04T03:12:00Z'
    >>> Alert.from_dict(a.to_dict()) == a
    True
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

SCHEMA = "radsensor.alert/1"

_ATTACK_ID = re.compile(r"^T\d{4}(\.\d{3})?$")


class Severity(Enum):
    """Alert severity; the value is the JSON spelling.

    ``cef`` is the CEF 0–10 scale (ArcSight: 0–3 low, 4–6 medium, 7–8 high, 9–10 very high);
    ``syslog`` the RFC 5424 severity code (lower is worse); ``rank`` orders them.
    """

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEV_RANK[self]

    @property
    def cef(self) -> int:
        return _SEV_CEF[self]

    @property
    def leef(self) -> int:
        # LEEF ``sev`` is 1–10: same scale as CEF without the 0.
        return max(1, _SEV_CEF[self])

    @property
    def syslog(self) -> int:
        return _SEV_SYSLOG[self]

    @classmethod
    def parse(cls, value: Severity | str) -> Severity:
        return value if isinstance(value, Severity) else cls(str(value).lower())


_SEV_RANK = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}
_SEV_CEF = {Severity.INFO: 1, Severity.LOW: 3, Severity.MEDIUM: 5, Severity.HIGH: 8, Severity.CRITICAL: 10}
# RFC 5424 §6.2.1: 2 critical, 3 error, 4 warning, 5 notice, 6 informational.
_SEV_SYSLOG = {Severity.INFO: 6, Severity.LOW: 5, Severity.MEDIUM: 4, Severity.HIGH: 3, Severity.CRITICAL: 2}


class AlertKind(Enum):
    ANOMALY = "anomaly"  # baseline model score above the calibrated threshold
    NOVELTY = "novelty"  # something absent from the baseline inventory (new peer, AE, sender…)
    RULE = "rule"  # a fixed rule fired (e.g. cleartext password user identity)


# ---------------------------------------------------------------------------------------- times


def to_utc(value: datetime | float | str) -> datetime:
    """Normalise an epoch number, ISO 8601 string or datetime to an aware UTC datetime.

    Naive datetimes are taken as UTC (the pipeline works in capture timestamps, which are UTC).
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        return to_utc(datetime.fromisoformat(value.strip()))
    raise TypeError(f"not a time: {type(value).__name__}")


def iso_z(value: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` suffix; microseconds only when present (exact round trip)."""
    v = value.astimezone(UTC)
    spec = "microseconds" if v.microsecond else "seconds"
    return v.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# ---------------------------------------------------------------------------------------- parts


@dataclass(frozen=True, slots=True)
class Evidence:
    """One deviating feature: observed value against the baseline's typical range."""

    feature: str
    observed: float
    baseline_p50: float | None = None
    baseline_p99: float | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "feature": self.feature,
            "observed": self.observed,
            "baseline_p50": self.baseline_p50,
            "baseline_p99": self.baseline_p99,
        }
        if self.description is not None:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        return cls(
            d["feature"], d["observed"], d.get("baseline_p50"), d.get("baseline_p99"), d.get("description")
        )

    def summary(self) -> str:
        """``feature=observed (p50 x, p99 y)`` — the short form used in CEF/LEEF/text."""
        s = f"{self.feature}={_num(self.observed)}"
        if self.baseline_p50 is not None or self.baseline_p99 is not None:
            s += f" (p50 {_num(self.baseline_p50)}, p99 {_num(self.baseline_p99)})"
        return s


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True, slots=True)
class Peer:
    ip: str
    ae_title: str | None = None
    port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ip": self.ip}
        if self.ae_title is not None:
            d["ae_title"] = self.ae_title
        if self.port is not None:
            d["port"] = self.port
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Peer:
        return cls(d["ip"], d.get("ae_title"), d.get("port"))


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """The device an alert is about: IP is the key; MAC, AE titles and role are attached context."""

    ip: str
    mac: str | None = None
    ae_titles: tuple[str, ...] = ()
    role: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ae_titles, tuple):
            object.__setattr__(self, "ae_titles", tuple(self.ae_titles))

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "mac": self.mac, "ae_titles": list(self.ae_titles), "role": self.role}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceRef:
        return cls(d["ip"], d.get("mac"), tuple(d.get("ae_titles") or ()), d.get("role"))


# ---------------------------------------------------------------------------------------- alert


def alert_id(rule_id: str, device_ip: str, window_start: datetime) -> str:
    """Deterministic id: same rule, device and window → same id (re-running detect is idempotent)."""
    h = hashlib.sha256(f"{rule_id}|{device_ip}|{iso_z(window_start)}".encode()).hexdigest()
    return h[:24]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert (schema ``radsensor.alert/1``).

    Times accept datetimes, epoch seconds or ISO strings and are stored as aware UTC datetimes;
    ``severity``/``kind`` accept their string spellings; ``id`` defaults to :func:`alert_id` and
    ``time`` to ``window_end``.
    """

    rule_id: str
    kind: AlertKind
    severity: Severity
    title: str
    device: DeviceRef
    window_start: datetime
    window_end: datetime
    time: datetime | None = None
    peers: tuple[Peer, ...] = ()
    score: float | None = None
    threshold: float | None = None
    evidence: tuple[Evidence, ...] = ()
    attack: tuple[str, ...] = ()
    count: int = 1
    sensor: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ once, at construction.
        s = object.__setattr__
        s(self, "kind", self.kind if isinstance(self.kind, AlertKind) else AlertKind(str(self.kind)))
        s(self, "severity", Severity.parse(self.severity))
        s(self, "window_start", to_utc(self.window_start))
        s(self, "window_end", to_utc(self.window_end))
        s(self, "time", self.window_end if self.time is None else to_utc(self.time))
        for name in ("peers", "evidence", "attack"):
            v = getattr(self, name)
            if not isinstance(v, tuple):
                s(self, name, tuple(v))
        for t in self.attack:
            if not _ATTACK_ID.match(t):
                raise ValueError(f"attack: not an ATT&CK technique id: {t!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if not self.rule_id:
            raise ValueError("rule_id must not be empty")
        if not self.id:
            s(self, "id", alert_id(self.rule_id, self.device.ip, self.window_start))

    def merge_key(self) -> tuple[str, str]:
        """Repeats of the same cause on the same device share this key (see :class:`AlertMerger`)."""
        return (self.rule_id, self.device.ip)

    def to_dict(self) -> dict[str, Any]:
        assert self.time is not None
        return {
            "schema": SCHEMA,
            "id": self.id,
            "time": iso_z(self.time),
            "window_start": iso_z(self.window_start),
            "window_end": iso_z(self.window_end),
            "severity": self.severity.value,
            "kind": self.kind.value,
            "rule_id": self.rule_id,
            "title": self.title,
            "device": self.device.to_dict(),
            "peers": [p.to_dict() for p in self.peers],
            "score": self.score,
            "threshold": self.threshold,
            "evidence": [e.to_dict() for e in self.evidence],
            "attack": list(self.attack),
            "count": self.count,
            "sensor": self.sensor,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise ValueError(f"schema: expected {SCHEMA!r}, got {schema!r}")
        return cls(
            rule_id=d["rule_id"],
            kind=d["kind"],
            severity=d["severity"],
            title=d["title"],
            device=DeviceRef.from_dict(d["device"]),
            window_start=d["window_start"],
            window_end=d["window_end"],
            time=d.get("time"),
            peers=tuple(Peer.from_dict(p) for p in d.get("peers") or ()),
            score=d.get("score"),
            threshold=d.get("threshold"),
            evidence=tuple(Evidence.from_dict(e) for e in d.get("evidence") or ()),
            attack=tuple(d.get("attack") or ()),
            count=int(d.get("count", 1)),
            sensor=d.get("sensor") or "",
            id=d.get("id") or "",
        )


# ---------------------------------------------------------------------------------------- merging

_MAX_MERGED_PEERS = 16


def merge_alerts(first: Alert, others: list[Alert]) -> Alert:
    """One alert standing for ``first`` and its repeats.

    Keeps ``first``'s id and window start (the SIEM sees one alert whose ``count`` grows); takes
    title, evidence, score and threshold from the worst repeat (severity, then score); unions peers
    (capped), AE titles and ATT&CK ids; sums counts.
    """
    if not others:
        return first
    group = [first, *others]
    worst = max(group, key=lambda a: (a.severity.rank, a.score if a.score is not None else float("-inf")))
    peers: dict[tuple[str, str | None, int | None], Peer] = {}
    aes: dict[str, None] = {}
    attack: dict[str, None] = {}
    mac = None
    for a in group:
        for p in a.peers:
            if len(peers) < _MAX_MERGED_PEERS:
                peers.setdefault((p.ip, p.ae_title, p.port), p)
        aes.update(dict.fromkeys(a.device.ae_titles))
        attack.update(dict.fromkeys(a.attack))
        mac = mac or a.device.mac
    return replace(
        worst,
        id=first.id,
        window_start=min(a.window_start for a in group),
        window_end=max(a.window_end for a in group),
        time=max(a.time for a in group if a.time is not None),
        device=DeviceRef(first.device.ip, mac, tuple(aes), first.device.role or worst.device.role),
        peers=tuple(peers.values()),
        attack=tuple(attack),
        count=sum(a.count for a in group),
    )


@dataclass(slots=True)
class _Group:
    first: Alert
    repeats: list[Alert] = field(default_factory=list)
    emitted_count: int = 0  # count carried by the last alert emitted for this group (0: none yet)
    last_emit: datetime | None = None

    @property
    def count(self) -> int:
        return self.first.count + sum(a.count for a in self.repeats)

    def merged(self) -> Alert:
        return merge_alerts(self.first, self.repeats)


class AlertMerger:
    """Merge repeats of the same device + rule into one alert with a count.

    A group opens with the first alert for a :meth:`Alert.merge_key` and takes every repeat whose
    ``window_start`` lies within ``span`` seconds of the group's first ``window_start``; the next one
    after that opens a new group (a condition that persists for days re-alerts once per span).

    Two modes:

    - **offline** (``live=False``, for ``radsensor detect``): nothing is emitted until a group is
      closed; each group yields exactly one alert with the final count.
    - **live** (``live=True``, for the daemon): the first alert of a group is emitted at once (no
      detection latency); repeats are absorbed, and an *update* — same ``id``, higher ``count``,
      extended ``window_end`` — is emitted by :meth:`tick` at most every ``update_interval``
      seconds, and once more when the group closes if its count grew since the last emission.

    Groups close when an alert (or :meth:`tick`'s clock) passes their span, so memory stays
    bounded by the number of distinct causes active within one span. Input is assumed to arrive
    roughly in window order, as the windowing stage produces it.

    Example::

        m, out = AlertMerger(span=3600), []
        for a in alerts:
            out += m.push(a)
        out += m.flush()
    """

    def __init__(self, span: float = 3600.0, *, live: bool = False, update_interval: float = 300.0) -> None:
        if span <= 0:
            raise ValueError("span must be > 0")
        self.span = float(span)
        self.live = live
        self.update_interval = float(update_interval)
        self._groups: dict[tuple[str, str], _Group] = {}
        self.merged = 0  # repeats absorbed so far

    def push(self, alert: Alert) -> list[Alert]:
        """Add one alert; return the alerts to emit now (possibly none)."""
        out = self._expire(alert.window_start)
        key = alert.merge_key()
        g = self._groups.get(key)
        if g is not None and (alert.window_start - g.first.window_start).total_seconds() < self.span:
            g.repeats.append(alert)
            self.merged += 1
            return out
        if g is not None:
            out += self._close(key)
        g = self._groups[key] = _Group(alert)
        if self.live:
            g.emitted_count = alert.count
            g.last_emit = alert.time
            out.append(alert)
        return out

    def tick(self, now: datetime | float) -> list[Alert]:
        """Live mode: periodic updates and groups whose span has passed. Call on the window clock."""
        now_dt = to_utc(now)
        out = self._expire(now_dt)
        if not self.live:
            return out
        for g in self._groups.values():
            if g.count != g.emitted_count and (
                g.last_emit is None or (now_dt - g.last_emit).total_seconds() >= self.update_interval
            ):
                out.append(self._emit(g, now_dt))
        return out

    def flush(self) -> list[Alert]:
        """Close every group (end of input / shutdown); return what is still to emit."""
        out: list[Alert] = []
        for key in sorted(self._groups, key=lambda k: self._groups[k].first.window_start):
            out += self._close(key)
        return out

    def __len__(self) -> int:
        return len(self._groups)

    # -- internals
    def _emit(self, g: _Group, now: datetime | None) -> Alert:
        a = g.merged()
        g.emitted_count = a.count
        g.last_emit = now or a.time
        return a

    def _close(self, key: tuple[str, str]) -> list[Alert]:
        g = self._groups.pop(key)
        if g.count == g.emitted_count:
            return []
        return [self._emit(g, None)]

    def _expire(self, now: datetime) -> list[Alert]:
        out: list[Alert] = []
        stale = [
            k for k, g in self._groups.items() if (now - g.first.window_start).total_seconds() >= self.span
        ]
        for k in stale:
            out += self._close(k)
        return out
